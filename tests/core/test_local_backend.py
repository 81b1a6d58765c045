"""Behaviour specific to the local backend: processes, shared memory, failures, cleanup."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import gc
import time

import numpy as np
import psutil
import pytest

import shoal
from shoal.exceptions import (ActorDiedError, AuthenticationError, GetTimeoutError,
                              InfeasibleResourceError, SerializationError, TaskCancelledError,
                              TaskError, WorkerCrashedError)


def _session_files(b):
    d, base = os.path.split(b.shm_prefix)
    return [n for n in os.listdir(d) if n.startswith(base)]


@pytest.fixture
def cluster():
    shoal.shutdown()
    b = shoal.init(num_cpus=2)
    yield b
    shoal.shutdown()
    assert _session_files(b) == []
    for child in psutil.Process().children(recursive=True):
        if "shoal.core._worker" in " ".join(child.cmdline()):
            child.wait(timeout=5)


def test_put_get_numpy_is_zero_copy_and_read_only(cluster):
    a = np.arange(1_000_000, dtype=np.float64)
    ref = shoal.put(a)
    b = shoal.get(ref)
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable  # a view of shared memory, as in Ray
    assert any(n for n in _session_files(cluster))


def test_task_reads_big_argument_from_shared_memory(cluster):
    @shoal.remote
    def total(x):
        return float(x.sum()), x.flags.writeable

    a = np.ones(2_000_000)
    assert shoal.get(total.remote(a)) == (2_000_000.0, False)
    assert shoal.get(total.remote(shoal.put(a))) == (2_000_000.0, False)


def test_objects_are_freed_when_no_ref_is_left(cluster):
    ref = shoal.put(np.ones(1_000_000))
    oid = ref.id
    assert oid in cluster.objects.objs
    del ref
    with cluster.lock:
        cluster._drain_refs()
    assert oid not in cluster.objects.objs


def test_ref_inside_a_container_keeps_its_object_alive(cluster):
    inner = shoal.put(np.arange(10))
    outer = shoal.put({"inner": inner})
    inner_id = inner.id
    del inner
    with cluster.lock:
        cluster._drain_refs()
    assert inner_id in cluster.objects.objs  # pinned by the container
    got = shoal.get(outer)["inner"]
    np.testing.assert_array_equal(shoal.get(got), np.arange(10))


def test_filling_the_store_spills_to_disk_and_values_come_back():
    shoal.shutdown()
    b = shoal.init(num_cpus=1, object_store_memory=40 * 1024 * 1024)
    try:
        refs = [shoal.put(np.full(2_000_000, i, dtype=np.float64)) for i in range(8)]  # 128 MB
        stats = b.store_stats()
        assert stats["spill_count"] > 0
        assert stats["shm_bytes"] <= 40 * 1024 * 1024
        for i, r in enumerate(refs):
            assert shoal.get(r)[123] == i

        @shoal.remote
        def first(x):
            return float(x[0])
        assert shoal.get([first.remote(r) for r in refs]) == [float(i) for i in range(8)]
    finally:
        shoal.shutdown()
    assert _session_files(b) == []


def test_worker_killed_mid_task_is_retried_then_reported(cluster, tmp_path):
    marker = tmp_path / "attempts"

    @shoal.remote(max_retries=2)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x")
        if len(open(path).read()) < 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return "ok"

    assert shoal.get(flaky.remote(str(marker)), timeout=60) == "ok"
    assert marker.read_text() == "xxx"

    @shoal.remote(max_retries=1)
    def always_dies():
        os._exit(3)

    with pytest.raises(WorkerCrashedError):
        shoal.get(always_dies.remote(), timeout=60)
    # the cluster is still usable
    assert shoal.get(shoal.remote(lambda: 7).remote(), timeout=30) == 7


def test_segfault_in_task_is_a_worker_crash(cluster):
    @shoal.remote(max_retries=0)
    def segfault():
        import ctypes
        ctypes.string_at(0)

    with pytest.raises(WorkerCrashedError, match="died"):
        shoal.get(segfault.remote(), timeout=60)


def test_task_error_is_instance_of_original_and_has_traceback(cluster):
    @shoal.remote
    def bad(x):
        raise KeyError(f"missing {x}")

    with pytest.raises(KeyError) as info:
        shoal.get(bad.remote("k"))
    assert isinstance(info.value, TaskError)
    assert "missing k" in str(info.value)
    assert "in bad" in info.value.remote_traceback


def test_actor_restarts_and_retries_pending_call(cluster):
    @shoal.remote(max_restarts=1, max_task_retries=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def pid(self):
            return os.getpid()

        def inc(self):
            self.n += 1
            return self.n

    c = Counter.remote()
    pid = shoal.get(c.pid.remote())
    assert shoal.get(c.inc.remote()) == 1
    os.kill(pid, signal.SIGKILL)
    # constructor re-ran: state starts again
    assert shoal.get(c.inc.remote(), timeout=60) == 1
    assert shoal.get(c.pid.remote()) != pid
    os.kill(shoal.get(c.pid.remote()), signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        shoal.get(c.inc.remote(), timeout=60)


def test_killed_actor_raises_actor_died(cluster):
    @shoal.remote
    class A:
        def ping(self):
            return "pong"

    a = A.remote()
    assert shoal.get(a.ping.remote()) == "pong"
    shoal.kill(a)
    with pytest.raises(ActorDiedError):
        shoal.get(a.ping.remote(), timeout=30)


def test_actor_constructor_error_fails_its_calls(cluster):
    @shoal.remote
    class Broken:
        def __init__(self):
            raise ValueError("bad config")

        def m(self):
            return 1

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="bad config"):
        shoal.get(b.m.remote(), timeout=30)


def test_get_timeout(cluster):
    @shoal.remote
    def slow():
        time.sleep(5)

    with pytest.raises(GetTimeoutError):
        shoal.get(slow.remote(), timeout=0.2)


def test_cancel_running_task(cluster):
    @shoal.remote
    def spin():
        while True:
            time.sleep(0.01)

    ref = spin.remote()
    time.sleep(0.5)
    shoal.cancel(ref)
    with pytest.raises(TaskCancelledError):
        shoal.get(ref, timeout=30)


def test_unpicklable_argument_names_the_function(cluster):
    @shoal.remote
    def use(x):
        return 1

    import threading
    with pytest.raises(SerializationError, match="use"):
        use.remote(threading.Lock())


def test_infeasible_request_raises_at_once(cluster):
    @shoal.remote(num_gpus=1)
    def needs_gpu():
        return 1

    with pytest.raises(InfeasibleResourceError, match="GPU"):
        needs_gpu.remote()
    with pytest.raises(InfeasibleResourceError):
        shoal.placement_group([{"CPU": 2}, {"CPU": 2}], strategy="PACK")


def test_nested_gets_do_not_deadlock_with_all_cpus_busy(cluster):
    @shoal.remote
    def leaf(i):
        return i

    @shoal.remote
    def parent(i):
        return sum(shoal.get([leaf.remote(i * 10 + j) for j in range(3)]))

    # four parents on two CPUs: each blocks in get and lends its CPU back
    assert shoal.get([parent.remote(i) for i in range(4)], timeout=60) == \
        [sum(i * 10 + j for j in range(3)) for i in range(4)]


def test_worker_output_reaches_the_driver_with_a_prefix(cluster, capfd):
    @shoal.remote
    def talk():
        print("hello from a task")
        return os.getpid()

    pid = shoal.get(talk.remote())
    deadline = time.time() + 5
    out = ""
    while time.time() < deadline and "hello from a task" not in out:
        time.sleep(0.05)
        out += capfd.readouterr().out
    assert f"(talk pid={pid}) hello from a task" in out


def test_unauthenticated_peer_is_dropped(cluster):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(cluster.sock_path)
    s.recv(64)                       # the challenge
    s.sendall(b"\0" * 64)            # a wrong answer
    s.settimeout(5)
    assert s.recv(64) == b""         # dropped before anything is unpickled
    s.close()
    from shoal.core.kv import TCPStore
    with pytest.raises(AuthenticationError):
        TCPStore("127.0.0.1", cluster.kv.port, secret=b"wrong", timeout=2)


def test_sockets_are_private(cluster):
    assert oct(os.stat(cluster.dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(cluster.sock_path).st_mode & 0o777) == "0o600"
    assert cluster.kv.host == "127.0.0.1"


def test_kv_store_from_driver_and_task(cluster):
    store = shoal.get_kv_store()
    store.set("greeting", b"hi")

    @shoal.remote
    def read_and_add():
        s = shoal.get_kv_store()
        return s.get("greeting", timeout=5), s.add("count", 2)

    assert shoal.get(read_and_add.remote()) == (b"hi", 2)
    assert store.add("count", 1) == 3


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "sigint", "sigkill"])
def test_driver_exit_leaves_no_processes_or_shared_memory(tmp_path, how):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time, numpy as np, shoal
        b = shoal.init(num_cpus=2)
        r = shoal.put(np.ones(1_000_000))
        @shoal.remote
        def f(): return os.getpid()
        pids = set(shoal.get([f.remote() for _ in range(8)]))
        print(b.shm_prefix, *pids, flush=True)
        if {how!r} != "exit":
            time.sleep(60)
    """))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    prefix, pids = line[0], [int(x) for x in line[1:]]
    if how == "sigint":
        p.send_signal(signal.SIGINT)
    elif how == "sigkill":
        p.kill()
    p.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        d, base = os.path.split(prefix)
        left = [n for n in os.listdir(d) if n.startswith(base)]
        if not alive and not left:
            break
        time.sleep(0.1)
    assert alive == [] and left == []


def test_unpicklable_result_names_the_function_and_type(cluster):
    @shoal.remote
    def make_lock():
        import threading
        return threading.Lock()

    with pytest.raises(SerializationError) as info:
        shoal.get(make_lock.remote())
    assert "return value of make_lock" in str(info.value) and "lock" in str(info.value)


def test_placement_group_waits_until_the_whole_gang_fits(cluster):
    @shoal.remote
    def hold(seconds):
        shoal.get_kv_store().set("holding", b"1")
        time.sleep(seconds)
        return True

    busy = hold.remote(1.5)          # takes one of the two CPUs
    shoal.get_kv_store().get("holding", timeout=30)
    pg = shoal.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    ready, _ = shoal.wait([pg.ready()], timeout=0.2)
    assert ready == []               # never half-placed
    assert shoal.get(busy)
    assert shoal.get(pg.ready(), timeout=30) is True

    @shoal.remote(num_cpus=1)
    def where():
        return shoal.get_runtime_context().worker_id

    refs = [where.options(placement_group=pg, placement_group_bundle_index=i).remote() for i in range(2)]
    assert len(shoal.get(refs)) == 2
    shoal.remove_placement_group(pg)
    assert shoal.available_resources()["CPU"] == 2.0


def test_ref_returned_inside_an_actor_result_stays_alive(cluster):
    @shoal.remote
    class Maker:
        def give(self, i):
            return [shoal.put(np.full(100_000, i))]  # the actor keeps no ref of its own

    m = Maker.remote()
    for i in range(10):
        inner = shoal.get(m.give.remote(i), timeout=30)[0]
        assert shoal.get(inner, timeout=30)[0] == i


class _ColumnError(ValueError):
    def __init__(self, column, message):
        super().__init__(message)
        self.column = column


def test_exception_with_its_own_init_is_caught_by_type_with_its_attributes(cluster):
    @shoal.remote
    def bad():
        raise _ColumnError("age", "missing column age")

    with pytest.raises(_ColumnError) as info:
        shoal.get(bad.remote())
    assert info.value.column == "age" and isinstance(info.value, TaskError)


def test_classes_of_the_drivers_main_script_reach_workers(tmp_path):
    script = tmp_path / "main_class.py"
    script.write_text(textwrap.dedent("""
        import shoal
        class Point:
            def __init__(self, x): self.x = x
        @shoal.remote
        def move(p): return Point(p.x + 1)
        print(shoal.get(move.remote(Point(1))).x)
    """))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("2")


@shoal.remote(num_returns="streaming")
def _stream_arrays(n):
    for i in range(n):
        yield np.full(300_000, i)          # big enough for shared-memory files


@shoal.remote(num_returns="dynamic")
def _dynamic_arrays(n):
    for i in range(n):
        yield np.full(300_000, i)


def test_generator_items_are_freed_when_their_refs_go(cluster):
    def settle():
        gc.collect()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with cluster.lock:
                cluster._drain_refs()
                if not cluster.objects.objs and not cluster.streams:
                    return
            time.sleep(0.05)
        raise AssertionError(f"left: {len(cluster.objects.objs)} objects, "
                             f"{len(cluster.streams)} streams")

    gen = _stream_arrays.remote(6)
    assert [int(shoal.get(r)[0]) for r in gen] == list(range(6))
    del gen
    half = _stream_arrays.remote(6)
    assert int(shoal.get(next(half))[0]) == 0
    shoal.get(half.completed())
    del half                                 # items never taken are let go too
    refs = list(shoal.get(_dynamic_arrays.remote(4)))
    assert [int(shoal.get(r)[0]) for r in refs] == list(range(4))
    del refs
    settle()


def test_pending_actor_starts_when_a_dead_actor_frees_its_cpu(cluster):
    @shoal.remote(num_cpus=1)
    class Slot:
        def pid(self):
            return os.getpid()

    actors = [Slot.remote() for _ in range(3)]        # 2 CPUs: the third waits
    refs = [a.pid.remote() for a in actors]
    ready, pending = shoal.wait(refs, num_returns=3, timeout=3)
    assert len(ready) == 2 and len(pending) == 1
    os.kill(shoal.get(ready[0]), signal.SIGKILL)      # a crash, not shoal.kill
    ready, _ = shoal.wait(pending, num_returns=1, timeout=20)
    assert ready, "the pending actor did not start after a CPU was freed by a death"
    for a in actors:
        shoal.kill(a)


def _booted_worker_pids(n: int) -> set:
    # n tasks at once need n booted pooled workers; they are idle again after
    @shoal.remote
    def pid_after_pause():
        time.sleep(0.3)
        return os.getpid()

    pids: set = set()
    for _ in range(20):     # on a loaded host one worker may boot late and another run both
        pids |= set(shoal.get([pid_after_pause.remote() for _ in range(n)], timeout=60))
        if len(pids) >= n:
            return pids
    raise AssertionError(f"{n} pooled workers did not boot: {pids}")


@shoal.remote
class PidActor:
    def pid(self):
        return os.getpid()


def test_actor_starts_in_an_idle_pooled_worker_and_tasks_go_on_when_it_dies(monkeypatch):
    shoal.shutdown()
    monkeypatch.setenv("SHOAL_WORKER_PREIMPORT", "json")
    shoal.init(num_cpus=2)
    try:
        pooled = _booted_worker_pids(2)
        a = PidActor.remote()
        pid = shoal.get(a.pid.remote(), timeout=30)
        assert pid in pooled                  # no new process: a booted worker was adopted
        shoal.kill(a)
        with pytest.raises(ActorDiedError):
            shoal.get(a.pid.remote(), timeout=30)
        # the pool lost a worker with it; tasks still run (a new worker starts when needed)
        assert shoal.get([shoal.remote(os.getpid).remote() for _ in range(3)], timeout=60)
        # an actor needing its own environment gets its own process
        b = PidActor.options(runtime_env={"env_vars": {"SHOAL_TEST_RL3": "1"}}).remote()
        assert shoal.get(b.pid.remote(), timeout=30) not in pooled
        shoal.kill(b)
    finally:
        shoal.shutdown()


def test_without_preimport_an_actor_gets_a_new_process(cluster):
    pooled = _booted_worker_pids(2)
    a = PidActor.remote()
    assert shoal.get(a.pid.remote(), timeout=30) not in pooled
    shoal.kill(a)


def test_worker_preimport_imports_modules_in_pooled_workers(monkeypatch):
    shoal.shutdown()
    # a module no worker imports otherwise, and one that does not exist (skipped, logged)
    monkeypatch.setenv("SHOAL_WORKER_PREIMPORT", "xml.dom.minidom, shoal_no_such_module_rl3")
    b = shoal.init(num_cpus=2)
    try:
        @shoal.remote
        def loaded():
            time.sleep(0.2)
            return "xml.dom.minidom" in sys.modules, os.getpid()

        results = shoal.get([loaded.remote() for _ in range(2)], timeout=60)
        assert all(ok for ok, _ in results)

        @shoal.remote
        class Probe:
            def loaded(self):
                return "xml.dom.minidom" in sys.modules

        p = Probe.remote()           # in an adopted pooled worker: imported already
        assert shoal.get(p.loaded.remote(), timeout=30)
        shoal.kill(p)
        logs = "".join(open(os.path.join(b.dir, "logs", f)).read()
                       for f in os.listdir(os.path.join(b.dir, "logs")) if f.endswith(".err"))
        assert "cannot import 'shoal_no_such_module_rl3'" in logs
    finally:
        shoal.shutdown()


def test_worker_preimport_rejects_a_bad_name(monkeypatch):
    shoal.shutdown()
    monkeypatch.setenv("SHOAL_WORKER_PREIMPORT", "torch;rm -rf")
    with pytest.raises(ValueError, match="SHOAL_WORKER_PREIMPORT"):
        shoal.init(num_cpus=2)
    assert not shoal.is_initialized()
    assert not [p for p in psutil.Process().children(recursive=True)
                if "shoal.core._worker" in " ".join(p.cmdline())]

