"""shoal launch's elastic form with real processes: -n MIN:MAX, --nnodes MIN:MAX, and
--host-discovery-script growing and shrinking a running job."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests._elastic_logs import assert_each_epoch_used_every_sample_once, rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "scripts", "elastic_launched.py")
HVD_SCRIPT = os.path.join(ROOT, "tests", "horovod", "scripts", "hvd_elastic_launched.py")
N = 96


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra)
    if "SHOAL_SECRET" not in extra:
        env.pop("SHOAL_SECRET", None)
    return env


def _start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "shoal.launch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or _env(), cwd=ROOT,
                            start_new_session=True)


def _finish(procs, timeout):
    """Wait for the launchers (bounded); kill what is left, even when the test fails."""
    outs = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    return outs


def _check_state_and_samples(out):
    """Every generation's members hold the same parameters and momentum after the sync (a
    new process got exactly the survivors'), and each finished epoch used every sample once
    (plus at most world-1 of the end-of-epoch padding)."""
    syncs: dict = {}
    for _, (commits, world, rank, digest, *_) in rows(out, "sync"):
        syncs.setdefault((commits, world), set()).add(digest)
    assert all(len(v) == 1 for v in syncs.values()), syncs
    assert_each_epoch_used_every_sample_once(out, N, max_world=3)
    return syncs


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _a_worker_of_world(out, world, rank, min_steps=4):
    """The pid of the process that last logged rank ``rank`` in a world of ``world``, once
    every process of that world logged ``min_steps`` steps."""
    by_pid: dict = {}
    for pid, row in rows(out, "steps"):
        by_pid.setdefault(pid, []).append(row)
    live = {p: r for p, r in by_pid.items() if r[-1][2] == world}
    if len(live) == world and all(len(r) >= min_steps for r in live.values()):
        return next((p for p, r in live.items() if r[-1][1] == rank), None)
    return None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_n_min_max_shrinks_on_a_killed_process_and_grows_back(tmp_path):
    out, run = str(tmp_path / "log"), str(tmp_path / "run")
    os.makedirs(out)
    p = _start("-n", "2:3", "--run-dir", run, "--collective-timeout", "30", SCRIPT, out, "3,2,3")
    try:
        victim = _wait_for(lambda: _a_worker_of_world(out, 3, 1), 90, "3 ranks training")
        os.kill(victim, signal.SIGKILL)
    finally:
        (stdout, stderr), = _finish([p], 150)
    assert p.returncode == 0, stderr[-3000:]
    assert re.search(r"membership change \d+: left: rank 1 \(worker \d+, killed by SIGKILL\); "
                     r"world size 3 -> 2; resumed from step \d+", stderr), stderr[-3000:]
    assert re.search(r"joined: worker \d+; world size 2 -> 3", stderr), stderr[-3000:]
    # (a process slow to start may join after the first step: worlds then begin with 2)
    assert len(re.findall(r"done worlds=\[(?:2, )?3, 2, 3\]", stdout)) == 3, stdout[-2000:]
    changes = json.load(open(os.path.join(run, "membership.json")))
    assert [c["world_size"] for c in changes][-3:] == [3, 2, 3]
    assert all(c["resumed_step"] is not None for c in changes)
    syncs = _check_state_and_samples(out)
    assert any(w == 3 and c > 0 for c, w in syncs)      # the regrown world synced mid-run


def _discovery(tmp_path, hosts: str):
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {hosts_file}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), hosts_file


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_host_discovery_grows_and_shrinks_a_running_horovod_job(tmp_path):
    # horovodrun's elastic form, running Elastic Horovod's usual script
    out = str(tmp_path / "log")
    os.makedirs(out)
    script, hosts = _discovery(tmp_path, "localhost:2\n")
    p = _start("-np", "2", "--min-np", "1", "--max-np", "3", "--host-discovery-script", script,
               "--collective-timeout", "30", sys.executable, "-u", HVD_SCRIPT, out, "2,3,2")
    try:
        _wait_for(lambda: _a_worker_of_world(out, 2, 0), 90, "2 ranks training")
        hosts.write_text("localhost:3\n")             # a slot appears: a third process
        _wait_for(lambda: _a_worker_of_world(out, 3, 0, min_steps=2), 90, "3 ranks training")
        hosts.write_text("localhost:2\n")             # it goes away: the newest one leaves
    finally:
        (stdout, stderr), = _finish([p], 150)
    assert p.returncode == 0, stderr[-3000:]
    assert re.search(r"left: rank 2 \(worker 2, its slot was removed\); world size 3 -> 2", stderr), \
        stderr[-3000:]
    # the reset callback rescaled the learning rate to the final world of 2
    assert len(re.findall(r"done worlds=\[(?:1, )?2, 3, 2\] lr=0.02", stdout)) == 2, stdout[-2000:]
    assert "[w2] [shoal.train] worker 2 is not in generation" in stderr
    _check_state_and_samples(out)
    # left at a commit, not by a broken group: no step was lost (no restore)
    assert not re.search(r"left: .*killed", stderr)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_nnodes_min_max_a_second_node_joins_and_leaves(tmp_path):
    out = str(tmp_path / "log")
    os.makedirs(out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(SHOAL_SECRET=secrets.token_hex(32))
    common = ["-n", "1", "--nnodes", "1:2", "--rdzv", f"127.0.0.1:{port}",
              "--collective-timeout", "30"]
    node0 = _start(*common, "--node-rank", "0", SCRIPT, out, "1,2,1", env=env)
    procs = [node0]
    try:
        _wait_for(lambda: _a_worker_of_world(out, 1, 0), 90, "node 0 training alone")
        node1 = _start(*common, "--node-rank", "1", SCRIPT, out, "1,2,1", env=env)
        procs.append(node1)
        _wait_for(lambda: _a_worker_of_world(out, 2, 1), 90, "both nodes training")
        os.killpg(node1.pid, signal.SIGKILL)        # the node is lost: launcher and process
    finally:
        outs = _finish(procs, 150)
    assert node0.returncode == 0, outs[0][1][-3000:]
    assert re.search(r"world size 1 -> 2", outs[0][1]) and re.search(
        r"world size 2 -> 1", outs[0][1]), outs[0][1][-3000:]
    assert "done worlds=[1, 2, 1]" in outs[0][0]
    _check_state_and_samples(out)


def _launch(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "shoal.launch", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=ROOT, check=False)


def test_bad_ranges_are_rejected():
    r = _launch("-n", "3:2", SCRIPT)
    assert r.returncode != 0 and "need 1 <= MIN <= MAX" in r.stderr
    r = _launch("-n", "a:b", SCRIPT)
    assert r.returncode != 0 and "takes N or MIN:MAX" in r.stderr
    r = _launch("-n", "1:2", "--max-restarts", "2", SCRIPT)
    assert r.returncode != 0 and "replaces lost processes" in r.stderr
    r = _launch("-n", "1:2", "--nnodes", "1:2", SCRIPT)
    assert r.returncode != 0 and "not both" in r.stderr


def test_a_failing_discovery_script_is_an_error_at_start(tmp_path):
    script = tmp_path / "discover.sh"
    script.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    script.chmod(0o755)
    r = _launch("-np", "1", "--host-discovery-script", str(script), SCRIPT)
    assert r.returncode != 0 and "--host-discovery-script" in r.stderr and "broken" in r.stderr


def test_a_script_failing_the_same_way_three_times_stops_the_job(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint('bad input 7', file=sys.stderr)\nsys.exit(5)\n")
    t0 = time.monotonic()
    r = _launch("-n", "1:2", str(bad), timeout=90)
    assert r.returncode == 5, r.stderr[-2000:]
    assert "exited with code 5" in r.stderr and "--max-repeated-failures 3" in r.stderr
    assert "bad input 7" in r.stderr
    assert time.monotonic() - t0 < 60


def test_too_few_workers_fails_naming_what_is_missing(tmp_path):
    script, _ = _discovery(tmp_path, "localhost:1\n")
    r = _launch("-np", "3", "--host-discovery-script", script, "--elastic-timeout", "2",
                SCRIPT, str(tmp_path), "3", timeout=60)
    assert r.returncode == 1, r.stderr[-2000:]
    assert re.search(r"only [01] of the minimum 3 workers", r.stderr) and "gives this host 1 slots" in r.stderr



@pytest.mark.slow
@pytest.mark.timeout(150)
def test_too_few_workers_during_a_job_fails_naming_what_is_missing(tmp_path):
    # a slot of the minimum 2 goes away mid-job and does not come back within --elastic-timeout
    out = str(tmp_path / "log")
    os.makedirs(out)
    script, hosts = _discovery(tmp_path, "localhost:2\n")
    p = _start("-np", "2", "--min-np", "2", "--host-discovery-script", script,
               "--elastic-timeout", "20", "--collective-timeout", "30", SCRIPT, out, "9")
    try:
        _wait_for(lambda: _a_worker_of_world(out, 2, 0), 90, "2 ranks training")
        t0 = time.monotonic()
        hosts.write_text("localhost:1\n")
    finally:
        (stdout, stderr), = _finish([p], 120)
    assert p.returncode == 1, stderr[-3000:]
    assert re.search(r"only 1 of the minimum 2 workers were running for more than 20s "
                     r"\(--elastic-timeout\); the discovery script .* gives this host 1 slots",
                     stderr), stderr[-3000:]
    assert time.monotonic() - t0 > 20          # not before the timeout


def test_is_this_machine_knows_its_names_and_addresses():
    from shoal.launch import is_this_machine
    assert is_this_machine("localhost") and is_this_machine("127.0.0.1")
    assert is_this_machine("127.0.0.2", names=set())     # an address this machine holds
    assert not is_this_machine("192.0.2.1", names=set())  # TEST-NET-1: nobody's address
    assert not is_this_machine("", names=set())


# ------------------------------------------------------------------ the owner's decisions
class _FakeLauncher:
    """What node 0's membership owner reads of its launcher."""

    def __init__(self, store, lo, hi):
        import types
        self.store, self.min, self.max, self.timeout = store, lo, hi, 30.0
        self.discovery, self.run_dir = None, None
        self.args = types.SimpleNamespace(elastic_timeout=60, max_repeated_failures=3,
                                          reset_limit=None, host_discovery_script=None)

    def slots(self):
        return self.max


@pytest.fixture
def owner():
    import pickle

    from shoal._elastic_launch import _PREFIX, _Owner
    from shoal.core.kv import TCPStore
    store = TCPStore("127.0.0.1", 0, secret=secrets.token_bytes(32), is_server=True)

    def add(wid):
        store.set(f"{_PREFIX}/where/{wid}", pickle.dumps(("node:0", 1000 + wid)))
        store.set(f"{_PREFIX}/m/ready/{wid}", b"1")

    def end():
        key = f"{_PREFIX}/end"
        return store.get(key).decode() if store.check([key]) else None
    o = _Owner(_FakeLauncher(store, 1, 2))
    o.add, o.end, o.key = add, end, lambda k: f"{_PREFIX}/{k}"
    yield o
    store.close()


def test_losing_every_holder_of_the_state_ends_the_job_instead_of_restarting(owner):
    owner.add(0)
    owner.add(1)
    owner.tick()
    assert owner.gens.members == [0, 1]
    for w in (0, 1):                                # both die at once; a new process is ready
        owner.store.set(owner.key(f"exit/{w}"), b"137")
    owner.add(2)
    owner.tick()
    assert owner.gens.members == [0, 1]            # no generation of newcomers only
    assert owner.end().startswith("1\n") and "lost at once" in owner.end()


def test_a_member_added_as_the_others_finish_does_not_hold_the_job(owner):
    owner.add(0)
    owner.tick()
    owner.reached_min -= 5                          # past the settling wait: start with one
    owner.tick()
    assert owner.gens.members == [0]
    owner.add(1)
    owner.store.set(owner.key("m/resumed/0"), __import__("pickle").dumps({"step": 5}))
    owner.tick()                                    # worker 1 joins: generation 1, not synced
    assert owner.gens.members == [0, 1] and owner.end() is None
    owner.store.set(owner.key("exit/0"), b"0")      # worker 0's loop ended before it synced
    owner.tick()
    assert owner.end() == "0\nthe job finished; stopping 1 worker(s) that had not"
