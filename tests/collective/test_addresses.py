"""Which address a rank listens on and advertises to its peers."""
import pytest

from shoal.collective._rendezvous import listen_host_for
from shoal.core.kv import TCPStore
from shoal.exceptions import CollectiveError


class _Store:
    def __init__(self, host):
        self.host = host

    def reachable_host(self):
        return self.host


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("SHOAL_COLLECTIVE_HOST", raising=False)


def test_group_on_one_host_listens_on_loopback():
    assert listen_host_for(_Store("10.0.0.5"), None, spans_hosts=False) == "127.0.0.1"


def test_group_across_hosts_advertises_the_address_the_store_reports():
    assert listen_host_for(_Store("10.0.0.5"), None, spans_hosts=True) == "10.0.0.5"


def test_configured_host_wins_then_the_environment(monkeypatch):
    monkeypatch.setenv("SHOAL_COLLECTIVE_HOST", "10.9.9.9")
    assert listen_host_for(_Store("10.0.0.5"), "10.1.1.1", spans_hosts=True) == "10.1.1.1"
    assert listen_host_for(_Store("10.0.0.5"), None, spans_hosts=True) == "10.9.9.9"
    assert listen_host_for(_Store("10.0.0.5"), None, spans_hosts=False) == "10.9.9.9"


def test_store_that_cannot_tell_fails_across_hosts_saying_what_to_set():
    with pytest.raises(CollectiveError, match="SHOAL_COLLECTIVE_HOST"):
        listen_host_for(object(), None, spans_hosts=True)
    assert listen_host_for(object(), None, spans_hosts=None) == "127.0.0.1"


def test_tcp_store_reports_the_interface_facing_its_server():
    server = TCPStore(is_server=True, secret=b"s" * 16)
    client = TCPStore("127.0.0.1", server.port, secret=b"s" * 16)
    try:
        assert client.reachable_host() == "127.0.0.1"
    finally:
        client.close()
        server.close()
