"""shoal launch's elastic form across real hosts: three network namespaces (each its own
network stack, joined by veth pairs to a bridge) with a launcher each, sharing one
--host-discovery-script whose output adds a host and then removes one, and a process
SIGKILLed on one host. Needs root and iproute2, else the tests skip saying why.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_launch_elastic import SCRIPT, _check_state_and_samples, _wait_for

from tests._elastic_logs import rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def _ns_pids(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    return {int(p) for p in out.stdout.split()} if out.returncode == 0 else set()


class Hosts:
    """``n`` namespaces ``shoal-elastic<tag>-h<i>`` at 10.78.<net>.<i+1>, their veths on a bridge
    in ``shoal-elastic<tag>-br``. ``close`` kills every process left in them and deletes them."""

    def __init__(self, n: int = 3):
        tag = os.getpid() % 100000
        net = 1 + tag % 250
        self.names = [f"shoal-elastic{tag}-h{i}" for i in range(n)]
        self.bridge = f"shoal-elastic{tag}-br"
        self.veths = [(f"elastic{tag}h{i}a", f"elastic{tag}h{i}b") for i in range(n)]
        self.ips = [f"10.78.{net}.{i + 1}" for i in range(n)]

    def make(self) -> None:
        self.close()
        _sh("ip", "netns", "add", self.bridge)
        _sh("ip", "netns", "exec", self.bridge, "ip", "link", "add", "br0", "type", "bridge")
        _sh("ip", "netns", "exec", self.bridge, "ip", "link", "set", "br0", "up")
        for ns, (a, b), ip in zip(self.names, self.veths, self.ips):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            _sh("ip", "link", "set", a, "netns", ns)
            _sh("ip", "link", "set", b, "netns", self.bridge)
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", a)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", a, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", self.bridge, "ip", "link", "set", b, "master", "br0")
            _sh("ip", "netns", "exec", self.bridge, "ip", "link", "set", b, "up")

    def close(self) -> None:
        for ns in self.names + [self.bridge]:
            for _ in range(50):             # the namespaces are ours: so is every process there
                pids = _ns_pids(ns)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.skip("separate hosts are network namespaces here, which need root")
    if shutil.which("ip") is None:
        pytest.skip("separate hosts are network namespaces here, which need iproute2 (ip)")
    h = Hosts(3)
    try:
        try:
            h.make()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"could not create network namespaces: {e.stderr.strip()}")
        yield h
    finally:
        h.close()


def _write_hosts(path, lines):
    """Replace the discovery script's output at once (a launcher never reads half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def _worker_pids(out, ns) -> set[int]:
    """The training processes (those that logged a step) running in namespace ``ns``."""
    logged = {pid for pid, _ in rows(out, "steps")}
    return logged & _ns_pids(ns)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _world_trained(out, world, steps=3):
    """True once the live processes are ``world`` ranks of one generation and each logged
    ``steps`` steps in it."""
    by_pid: dict = {}
    for pid, row in rows(out, "steps"):
        by_pid.setdefault(pid, []).append(row)
    by_pid = {p: r for p, r in by_pid.items() if _alive(p)}
    live = {p: r for p, r in by_pid.items() if r[-1][2] == world}
    gens = {r[-1][5] for r in live.values()}
    if len(live) != world or len(gens) != 1:
        return False
    return all(sum(1 for row in r if row[2] == world and row[5] in gens) >= steps
               for r in live.values())


@pytest.mark.timeout(300)
def test_discovery_across_hosts_shrinks_and_grows_with_hosts_and_a_killed_process(hosts,
                                                                                    tmp_path):
    out, run = str(tmp_path / "log"), str(tmp_path / "run")
    os.makedirs(out)
    hosts_file = str(tmp_path / "hosts")
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {hosts_file}\n")
    script.chmod(0o755)
    h0, h1, h2 = hosts.ips
    _write_hosts(hosts_file, [f"{h0}:1", f"{h1}:1"])      # host 2 runs a launcher, no slots yet
    port = 20000 + secrets.randbelow(20000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "RAY_"))}
    env.update(PYTHONPATH=ROOT, SHOAL_SECRET=secrets.token_hex(32), PYTHONUNBUFFERED="1")
    launchers = []
    try:
        for k, ns in enumerate(hosts.names):
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "shoal.launch",
                   "-np", "1", "--min-np", "1", "--max-np", "3",
                   "--host-discovery-script", str(script), "--node-rank", str(k),
                   "--rdzv", f"{h0}:{port}", "--collective-timeout", "30",
                   "--elastic-timeout", "60", "--run-dir", run,
                   sys.executable, "-u", SCRIPT, out, "2,1,2,3,2"]
            launchers.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
            if k == 0:
                time.sleep(1)               # node 0 serves the store the others connect to
        _wait_for(lambda: _world_trained(out, 2), 120, "hosts 0 and 1 training together")
        victim, = _wait_for(lambda: _worker_pids(out, hosts.names[1]), 10, "host 1's process")
        os.kill(victim, signal.SIGKILL)     # a process dies; host 1's launcher starts another
        _wait_for(lambda: any(pid != victim for pid in _worker_pids(out, hosts.names[1]))
                  and _world_trained(out, 2), 120, "host 1's new process joining")
        _write_hosts(hosts_file, [f"{h0}:1", f"{h1}:1", f"{h2}:1"])        # a host appears
        _wait_for(lambda: _world_trained(out, 3), 120, "three hosts training")
        _write_hosts(hosts_file, [f"{h0}:1", f"{h2}:1"])                    # host 1 goes away
        outs = []
        deadline = time.monotonic() + 120
        for p in launchers:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
                p.communicate()
    logs = "\n".join(f"--- launcher {k}:\n{o[1][-2500:]}" for k, o in enumerate(outs))
    assert [p.returncode for p in launchers] == [0, 0, 0], logs
    owner = outs[0][1]
    assert re.search(r"left: rank \d \(worker \d+, killed by SIGKILL\); world size 2 -> 1",
                     owner), logs
    assert re.search(r"joined: worker \d+; world size 1 -> 2", owner), logs
    assert re.search(r"joined: worker \d+; world size 2 -> 3", owner), logs
    assert re.search(r"left: rank \d \(worker \d+, its slot was removed\); world size 3 -> 2",
                     owner), logs
    # the processes on hosts 0 and 2 trained to the end, each having seen every change
    done = re.findall(r"done worlds=\[(?:1, )?2, 1, 2, 3, 2\]", outs[0][0] + outs[2][0])
    assert len(done) == 2, (outs[0][0][-2000:], outs[2][0][-2000:])
    assert "not in generation" in outs[1][1], logs      # host 1's process left at a commit
    # after every sync the members held identical parameters and momentum; every finished
    # epoch used each sample once
    syncs = _check_state_and_samples(out)
    assert any(w == 3 and c > 0 for c, w in syncs)
    # and the groups spanned the hosts their members were on (TCP between namespaces)
    spans = {(world, n) for _, (_, world, _, _, n) in rows(out, "sync")}
    assert (3, 3) in spans and (2, 2) in spans and (1, 1) in spans, spans
    assert all(world == n for world, n in spans), spans
