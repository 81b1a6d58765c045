"""shoal.state on the local backend (and on Ray), shoal.timeline, worker log files,
and `shoal status` / `shoal logs` reaching a running session from another process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import shoal
from shoal.core import sessions


@pytest.fixture(scope="module")
def cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2, log_to_driver=False)
    try:
        yield
    finally:
        shoal.shutdown()


@shoal.remote
def square(x):
    print(f"squaring {x}")
    return x * x


@shoal.remote
def explode():
    raise ValueError("the task exploded on purpose")


@shoal.remote
class Counter:
    def __init__(self, fail: bool = False):
        if fail:
            raise KeyError("the constructor failed on purpose")
        self.n = 0

    def incr(self):
        print("counting")
        self.n += 1
        return self.n


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_finished_and_failed_tasks_are_listed_with_timings_and_traceback(cluster):
    assert shoal.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
    with pytest.raises(ValueError):
        shoal.get(explode.remote())
    rows = shoal.state.list_tasks(filters=[("name", "=", "square")])
    assert len(rows) >= 3 and all(r["state"] == "FINISHED" for r in rows)
    r = rows[-1]
    assert r["type"] == "NORMAL_TASK" and r["worker_id"] is not None
    assert r["creation_time_ms"] <= r["start_time_ms"] <= r["end_time_ms"]
    assert r["required_resources"] == {"CPU": 1.0}
    failed = shoal.state.list_tasks(filters=[("state", "=", "FAILED"), ("name", "=", "explode")])
    assert len(failed) == 1
    assert failed[0]["error_type"] == "ValueError"
    assert "the task exploded on purpose" in failed[0]["traceback"]
    assert "in explode" in failed[0]["traceback"]


def test_running_and_pending_tasks_are_listed_live(cluster):
    @shoal.remote
    def sleeper(s):
        time.sleep(s)

    refs = [sleeper.remote(1.0) for _ in range(4)]   # 2 CPUs: 2 run, 2 wait
    rows = _wait_for(lambda: [r for r in shoal.state.list_tasks(
        filters=[("name", "=", "sleeper")]) if r["state"] == "RUNNING"])
    assert rows[0]["worker_id"] is not None and rows[0]["end_time_ms"] is None
    states = {r["state"] for r in shoal.state.list_tasks(filters=[("name", "=", "sleeper")])}
    assert "PENDING_NODE_ASSIGNMENT" in states or len(rows) == 4
    shoal.get(refs)
    assert {r["state"] for r in shoal.state.list_tasks(filters=[("name", "=", "sleeper")])} \
        == {"FINISHED"}


def test_summary_counts_running_and_pending_as_the_listing_does(cluster):
    """The summary counts without building rows: it must agree with the rows, for tasks
    of two returns and for calls queued on a busy actor."""
    @shoal.remote(num_returns=2)
    def pair(s):
        time.sleep(s)
        return 1, 2

    @shoal.remote
    class Slow:
        def nap(self, s):
            time.sleep(s)

    actor = Slow.remote()
    shoal.get(actor.nap.remote(0))
    refs = [r for _ in range(3) for r in pair.remote(3.0)]     # at most 2 run, the rest wait
    calls = [actor.nap.remote(3.0) for _ in range(3)]          # 1 runs, 2 queued on the actor

    def counts():
        live = [r for r in shoal.state.list_tasks(limit=None) if r["end_time_ms"] is None]
        running = sum(r["state"] == "RUNNING" for r in live)
        t = shoal.state.summary()["tasks"]
        return (running, len(live) - running), (t["RUNNING"], t["PENDING"])
    listed, summed = _wait_for(lambda: (lambda c: c if c[0][0] >= 2 else None)(counts()))
    assert summed == listed and sum(listed) == 6, (listed, summed)
    shoal.get(refs + calls)
    assert counts() == ((0, 0), (0, 0))
    shoal.kill(actor)


def test_actors_alive_and_dead_with_the_constructors_traceback(cluster):
    c = Counter.options(name="state-counter").remote()
    assert shoal.get(c.incr.remote()) == 1
    bad = Counter.remote(fail=True)
    with pytest.raises(shoal.exceptions.ActorDiedError):
        shoal.get(bad.incr.remote(), timeout=30)
    actors = {a["name"] or a["actor_id"]: a for a in shoal.state.list_actors()}
    alive = actors["state-counter"]
    assert alive["state"] == "ALIVE" and alive["class_name"] == "Counter" and alive["pid"]
    dead = [a for a in actors.values() if a["state"] == "DEAD" and a["traceback"]]
    assert dead and "the constructor failed on purpose" in dead[-1]["traceback"]
    assert "constructor raised" in dead[-1]["death_cause"]
    calls = shoal.state.list_tasks(filters=[("name", "=", "Counter.incr")])
    assert any(t["type"] == "ACTOR_TASK" and t["state"] == "FINISHED" and
               t["actor_id"] == alive["actor_id"] for t in calls)
    shoal.kill(c)


def test_objects_nodes_workers_and_summary(cluster):
    import numpy as np
    ref = shoal.put(np.zeros(1 << 18))          # 2 MiB: in shared memory
    objs = {o["object_id"]: o for o in shoal.state.list_objects(limit=None)}
    assert objs[f"{ref.id:016x}"]["state"] == "IN_SHARED_MEMORY"
    assert objs[f"{ref.id:016x}"]["size_bytes"] >= 1 << 21
    node = shoal.state.list_nodes()[0]
    assert node["resources_total"]["CPU"] == 2.0 and node["object_store"]["used_bytes"] >= 1 << 21
    workers = shoal.state.list_workers()
    assert workers and all(os.path.exists(w["stdout_file"]) for w in workers
                           if w["state"] != "DEAD")
    s = shoal.state.summary()
    assert s["backend"] == "local" and s["tasks"]["FINISHED"] >= 3 and s["tasks"]["FAILED"] >= 1
    assert s["actors"].get("ALIVE", 0) + s["actors"].get("DEAD", 0) >= 1
    del ref


def test_filters_and_limit_are_checked(cluster):
    assert len(shoal.state.list_tasks(limit=2)) == 2
    assert shoal.state.list_tasks(limit=0) == []
    with pytest.raises(ValueError, match="op '=' or '!='"):
        shoal.state.list_tasks(filters=[("state", "~", "x")])


def test_timeline_writes_a_chrome_trace_of_the_tasks(cluster, tmp_path):
    t0 = time.time()
    shoal.get([square.remote(i) for i in range(5)])
    path = tmp_path / "trace.json"
    events = shoal.timeline(str(path), since=t0)
    data = json.loads(path.read_text())
    assert data["traceEvents"] == events
    runs = [e for e in events if e["name"] == "square" and e.get("cat") == "normal_task"]
    assert len(runs) == 5
    assert all(e["dur"] > 0 and isinstance(e["tid"], int) for e in runs)
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert all(names[e["tid"]].startswith("worker ") for e in runs)


def test_timeline_merges_a_collective_timeline(cluster, tmp_path):
    import numpy as np

    from shoal import collective
    prefix = str(tmp_path / "coll")

    @shoal.remote
    def rank_main(rank, world, group):
        comm = collective.init_group(rank, world, shoal.get_kv_store(), backend="native",
                                     name=group, timeout=60,
                                     config=collective.NativeConfig(timeline=prefix))
        comm.allreduce(np.ones(1024, np.float32))
        comm.destroy()
        return rank

    assert sorted(shoal.get([rank_main.remote(r, 2, "tl-merge") for r in range(2)])) == [0, 1]
    events = shoal.timeline(None, collective=prefix)
    ranks = {e["pid"] for e in events if e.get("name") == "allreduce"}
    assert ranks == {0, 1}
    assert any(e.get("cat") == "normal_task" and e["name"] == "rank_main" for e in events)


def test_worker_output_is_kept_in_the_session_directory(cluster):
    c = Counter.options(name="log-counter").remote()
    shoal.get(c.incr.remote())
    shoal.get(square.remote(7))
    d = shoal.state.summary()["session_dir"]
    rows = sessions.select_logs(d, actor="log-counter")
    assert len(rows) == 1
    _wait_for(lambda: "counting" in open(rows[0]["stdout_file"]).read())
    assert any("squaring 7" in open(r["stdout_file"]).read()
               for r in sessions.worker_logs(d) if not r["actor_class"])
    with pytest.raises(LookupError, match="log-counter"):
        sessions.select_logs(d, actor="no-such-actor")
    shoal.kill(c)


def _cli(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_cli_logs_reads_a_running_sessions_actor_and_follows_new_output(cluster):
    sess = sessions.find_session(shoal.state.summary()["session"])
    assert sess["pid"] == os.getpid()
    c = Counter.options(name="cli-counter").remote()
    shoal.get(c.incr.remote())
    _wait_for(lambda: "counting" in open(sessions.select_logs(
        sess["dir"], actor="cli-counter")[0]["stdout_file"]).read())
    p = _cli("logs", "--session", sess["session"], "--actor", "cli-counter")
    assert p.returncode == 0, p.stderr
    assert "counting" in p.stdout and "Counter.incr" in p.stdout
    # --follow prints what comes after it started
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "logs", "--session",
                             sess["session"], "--actor", "cli-counter", "--follow",
                             "--follow-seconds", "6", "--tail", "0"],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        time.sleep(2.0)
        assert shoal.get(c.incr.remote()) == 2
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert out.count("counting") == 1
    p = _cli("logs", "--session", sess["session"], "--actor", "nobody")
    assert p.returncode == 1 and "no worker hosting actor 'nobody'" in p.stderr
    shoal.kill(c)


def test_cli_status_without_a_dashboard_reads_the_drivers_snapshot(cluster):
    sess = sessions.find_session(shoal.state.summary()["session"])
    path = os.path.join(sess["dir"], sessions.STATE_FILE)
    assert os.stat(path).st_mode & 0o077 == 0          # the user's only, like session.json
    assert shoal.get(square.remote(12)) == 144
    with pytest.raises(ValueError):
        shoal.get(explode.remote())
    shoal.state.report_run("train", "snapshot-run", {"loss": 0.25})
    deadline = time.monotonic() + 30
    while True:   # the driver rewrites it every 2 s
        snap = sessions.read_state_snapshot(sess["dir"])
        if snap and any(r["name"] == "snapshot-run" for r in snap["summary"]["runs"]) \
                and snap["failed_tasks"]:
            break
        assert time.monotonic() < deadline, snap
        time.sleep(0.2)
    p = _cli("status", "--session", sess["session"])
    assert p.returncode == 0, p.stderr
    assert "resources (used / total):" in p.stdout and "CPU" in p.stdout
    assert "failed task explode" in p.stdout and "ValueError" in p.stdout
    assert "train run snapshot-run" in p.stdout and "loss=0.25" in p.stdout
    assert "snapshot of" in p.stdout
    p = _cli("status", "--session", sess["session"], "--json")
    assert json.loads(p.stdout)["summary"]["session"] == sess["session"]


def test_snapshots_off_and_logs_kept_after_shutdown(monkeypatch, capfd):
    if shoal.is_initialized():
        shoal.shutdown()
    monkeypatch.setenv("SHOAL_STATE_SNAPSHOT_S", "0")
    monkeypatch.setenv("SHOAL_KEEP_LOGS", "1")
    shoal.init(num_cpus=1, log_to_driver=False)
    d = shoal.state.summary()["session_dir"]
    try:
        assert shoal.get(square.remote(3)) == 9
        assert not os.path.exists(os.path.join(d, sessions.STATE_FILE))
        p = _cli("status", "--session", shoal.state.summary()["session"])
        assert p.returncode == 0 and "writes no state snapshot" in p.stdout
    finally:
        shoal.shutdown()
    try:
        assert os.listdir(d) == ["logs"]
        outs = [open(os.path.join(d, "logs", f)).read()
                for f in os.listdir(os.path.join(d, "logs")) if f.endswith(".out")]
        assert any("squaring 3" in o for o in outs)
        assert f"{d}/logs" in capfd.readouterr().err
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_a_bad_snapshot_period_is_refused(monkeypatch):
    if shoal.is_initialized():
        shoal.shutdown()
    monkeypatch.setenv("SHOAL_STATE_SNAPSHOT_S", "often")
    with pytest.raises(ValueError, match="SHOAL_STATE_SNAPSHOT_S"):
        shoal.init(num_cpus=1, log_to_driver=False)
    assert not shoal.is_initialized()


def test_cli_finds_no_session_with_a_clear_error():
    p = _cli("status", "--session", "no-such-session")
    assert p.returncode == 1 and "no running shoal session with id 'no-such-session'" in p.stderr


def test_task_recording_can_be_turned_off(monkeypatch):
    if shoal.is_initialized():
        shoal.shutdown()
    monkeypatch.setenv("SHOAL_TASK_EVENTS", "0")
    shoal.init(num_cpus=1, log_to_driver=False)
    try:
        shoal.get(square.remote(2))
        assert shoal.state.list_tasks() == []
    finally:
        shoal.shutdown()
    monkeypatch.setenv("SHOAL_TASK_EVENTS", "lots")
    with pytest.raises(ValueError, match="SHOAL_TASK_EVENTS"):
        shoal.init(num_cpus=1)
    assert not shoal.is_initialized()


@pytest.mark.ray
@pytest.mark.slow
def test_state_on_ray_maps_to_rays_state_api():
    pytest.importorskip("ray")
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2, backend="ray", include_dashboard=True, log_to_driver=False)
    try:
        with pytest.raises(ValueError):
            shoal.get(explode.remote())
        c = Counter.options(name="ray-state-counter").remote()
        shoal.get(c.incr.remote())
        failed = _wait_for(lambda: shoal.state.list_tasks(
            filters=[("state", "=", "FAILED")]), timeout=30)
        assert any(t["name"].endswith("explode") for t in failed)
        actors = shoal.state.list_actors(filters=[("state", "=", "ALIVE")])
        assert any(a["class_name"].endswith("Counter") for a in actors)
        assert shoal.state.list_nodes()[0]["state"] == "ALIVE"
        assert shoal.state.summary()["backend"] == "ray"
    finally:
        shoal.shutdown()


def test_report_run_keeps_numbers_json_safe_and_the_number_of_runs_bounded(monkeypatch):
    from shoal.core import state
    state._clear_runs()
    try:
        state.report_run("train", "r", {"loss": float("nan"), "acc": 0.5, "note": "text"},
                         config={"lr": 0.1, "fn": len})
        run = state.list_runs("train")[0]
        assert run["history"][0]["loss"] is None and run["history"][0]["acc"] == 0.5
        assert "note" not in run["history"][0]
        assert run["info"]["config"] == {"lr": 0.1, "fn": repr(len)}
        json.dumps(run)
        monkeypatch.setattr(state, "_MAX_RUNS", 3)
        state.report_run("tune", "a", status="TERMINATED")
        state.report_run("tune", "b")
        state.report_run("tune", "c")
        # the ended run went first, though "r" is older
        assert [r["name"] for r in state.list_runs()] == ["r", "b", "c"]
        with pytest.raises(TypeError, match="two strings"):
            state.report_run("train", 3)
    finally:
        state._clear_runs()


def test_a_limit_keeps_the_live_tasks_before_older_finished_ones(cluster):
    @shoal.remote
    def napper():
        time.sleep(1.0)

    shoal.get([square.remote(i) for i in range(5)])
    ref = napper.remote()
    _wait_for(lambda: any(r["name"] == "napper" for r in shoal.state.list_tasks(limit=1)))
    rows = shoal.state.list_tasks(limit=3)
    assert len(rows) == 3 and rows[-1]["name"] == "napper"
    assert rows[-1]["state"] in ("RUNNING", "PENDING_NODE_ASSIGNMENT")
    assert all(r["state"] == "FINISHED" for r in rows[:-1])
    shoal.get(ref)
