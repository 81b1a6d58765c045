"""Connections between ranks are authenticated with the group's secret."""
import socket

import numpy as np
import pytest

from shoal.collective._tcp import TcpMesh
from shoal.exceptions import CollectiveError


@pytest.fixture
def meshes():
    made = []

    def make(rank, secret):
        m = TcpMesh(rank, 2, secret, "127.0.0.1", timeout=3)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()


def test_ranks_with_the_secret_exchange_data(meshes):
    a, b = meshes(0, b"group-secret"), meshes(1, b"group-secret")
    a.set_peers({1: b.address})
    b.set_peers({0: a.address})
    a.send(1, np.arange(5, dtype=np.int64))
    got = np.empty(5, np.int64)
    b.recv_into(0, got)
    assert got.tolist() == [0, 1, 2, 3, 4]


def test_peer_without_the_secret_cannot_connect(meshes):
    a, b = meshes(0, b"intruder"), meshes(1, b"group-secret")
    a.set_peers({1: b.address})
    with pytest.raises(CollectiveError, match="authentication"):
        a.send(1, np.arange(5))


def test_unauthenticated_bytes_never_reach_a_rank(meshes):
    b = meshes(1, b"group-secret")
    raw = socket.create_connection(b.address)
    try:
        raw.recv(64)  # the challenge
        raw.sendall(b"\0" * 64 + np.arange(4, dtype=np.int64).tobytes())
        with pytest.raises(CollectiveError, match="did not connect"):
            b.recv_into(0, np.empty(4, np.int64))
    finally:
        raw.close()
