"""Groups across hosts: ranks in separate network namespaces joined by veth pairs (TCP).

Namespaces model hosts: each has its own network stack, so the native backend
treats them as different hosts (TCP between them; shared memory only among the
ranks inside one). Needs root and iproute2, else the tests skip saying why.
"""
import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HOSTS = ("shoalct0", "shoalct1", "shoalct2")
BRIDGE_NS = "shoalctbr"

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _cleanup():
    for ns in HOSTS + (BRIDGE_NS,):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    _cleanup()
    try:
        _sh("ip", "netns", "add", BRIDGE_NS)
        _sh("ip", "netns", "exec", BRIDGE_NS, "ip", "link", "add", "br0", "type", "bridge")
        _sh("ip", "netns", "exec", BRIDGE_NS, "ip", "link", "set", "br0", "up")
        for i, ns in enumerate(HOSTS):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", f"shoalct{i}a", "type", "veth", "peer", "name", f"shoalct{i}b")
            _sh("ip", "link", "set", f"shoalct{i}a", "netns", ns)
            _sh("ip", "link", "set", f"shoalct{i}b", "netns", BRIDGE_NS)
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.77.1.{i + 1}/24", "dev", f"shoalct{i}a")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", f"shoalct{i}a", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", BRIDGE_NS, "ip", "link", "set", f"shoalct{i}b", "master", "br0")
            _sh("ip", "netns", "exec", BRIDGE_NS, "ip", "link", "set", f"shoalct{i}b", "up")
    except subprocess.CalledProcessError as e:
        _cleanup()
        pytest.skip(f"could not create network namespaces: {e.stderr.strip()}")
    try:
        yield HOSTS
    finally:
        _cleanup()


def _run(placement, tmp_path):
    """Run one rank per entry of ``placement`` (the host index of each rank)."""
    secret = secrets.token_hex(16)
    port = 20000 + secrets.randbelow(20000)
    procs, outs = [], []
    try:
        for r, h in enumerate(placement):
            out = tmp_path / f"rank{r}.json"
            outs.append(out)
            cmd = ["ip", "netns", "exec", HOSTS[h], sys.executable, os.path.join(HERE, "_netns_rank.py"),
                   "--rank", str(r), "--world", str(len(placement)), "--store", f"10.77.1.1:{port}",
                   "--secret", secret, "--out", str(out)]
            procs.append(subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=ROOT),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=100)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for r, out in enumerate(outs):
        assert out.exists(), f"rank {r} wrote no result:\n{logs[r][-3000:]}"
        results.append(json.loads(out.read_text()))
    return results


def _failures(results):
    return {r: {k: v for k, v in res.items() if k not in ("hosts", "shm") and v} for r, res in enumerate(results)}


def test_two_hosts_one_rank_each_over_tcp(hosts, tmp_path):
    results = _run([0, 1], tmp_path)
    assert all(res["hosts"] == 2 and not res["shm"] for res in results)
    assert _failures(results) == {0: {}, 1: {}}


def test_three_hosts_hierarchical_with_shared_memory_inside_one(hosts, tmp_path):
    results = _run([0, 0, 1, 2], tmp_path)
    assert all(res["hosts"] == 3 for res in results)
    assert [res["shm"] for res in results] == [True, True, False, False]
    assert _failures(results) == {0: {}, 1: {}, 2: {}, 3: {}}
