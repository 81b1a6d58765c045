"""The same programs on every backend, checked for the same results.

Each test runs once on the local backend and once on Ray (the ``backend``
fixture in conftest.py). Tasks that must stay busy wait on a key of the
cluster's key-value store, and the test sets the key when it is done, so
nothing depends on timing and nothing is left running.
"""
from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import uuid

import numpy as np
import pytest

import shoal
from shoal.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError,
                              InfeasibleResourceError, SerializationError, TaskCancelledError,
                              TaskError, WorkerCrashedError)

LONG = 60  # seconds a blocked task waits for its release key before giving up


def _key(what: str) -> str:
    return f"test/{what}/{uuid.uuid4().hex}"


# ------------------------------------------------------------------ remote functions
@shoal.remote
def add_one(x):
    return x + 1


@shoal.remote
def add(x, y=0):
    return x + y


@shoal.remote(num_returns=3)
def three(x):
    return x, x * 2, x * 3


@shoal.remote
def fan_out(n):
    return sum(shoal.get([add_one.remote(i) for i in range(n)]))


@shoal.remote
def describe(container):
    inner = container[0]
    return type(inner).__name__, shoal.get(inner)


@shoal.remote
def get_nested_after(key, container):
    shoal.get_kv_store().get(key, timeout=LONG)
    return shoal.get(container[0])


@shoal.remote
def call_actor(handle, n):
    return shoal.get([handle.incr.remote() for _ in range(n)])


@shoal.remote
def array_info(a):
    return float(a.sum()), bool(a.flags.writeable), a.shape


@shoal.remote
def wait_key(key, value=None):
    """Block until ``key`` is set in the cluster's store; returns ``value`` (or the key's value)."""
    got = shoal.get_kv_store().get(key, timeout=LONG)
    return got if value is None else value


@shoal.remote
def raise_value_error(msg):
    raise ValueError(msg)


@shoal.remote
def get_failing_inner():
    return shoal.get(raise_value_error.remote("inner-boom"))


@shoal.remote
def crash_counted(key):
    shoal.get_kv_store().add(key, 1)
    os._exit(1)


@shoal.remote
def spin_after_signal(key):
    shoal.get_kv_store().set(key, b"started")
    for _ in range(LONG * 10):
        time.sleep(0.1)
    return "finished"


@shoal.remote
def kv_roundtrip(key_in, key_out):
    store = shoal.get_kv_store()
    store.set(key_out, b"from-task")
    return store.get(key_in, timeout=LONG)


@shoal.remote
def context_backend():
    return shoal.get_runtime_context().backend


@shoal.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.pid = os.getpid()

    def incr(self, by=1):
        self.n += by
        return self.n

    def value(self):
        return self.n

    def get_pid(self):
        return self.pid

    def crash(self):
        os._exit(1)

    @shoal.method(num_returns=2)
    def pair(self):
        return self.n, -self.n


@shoal.remote
class Rendezvous:
    """Two calls meet at a barrier: only possible if they run at the same time."""

    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=LONG)

    def meet(self, i):
        self.barrier.wait()
        return i


@shoal.remote
class AsyncGate:
    def __init__(self):
        self.event = asyncio.Event()

    async def wait_open(self):
        await asyncio.wait_for(self.event.wait(), LONG)
        return "opened"

    async def open(self):
        self.event.set()
        return "open"


# ------------------------------------------------------------------ tasks
def test_task_returns_its_value(backend):
    assert shoal.get(add_one.remote(1)) == 2
    assert shoal.get([add_one.remote(i) for i in range(8)]) == list(range(1, 9))


def test_num_returns_gives_one_ref_per_value(backend):
    refs = three.remote(5)
    assert len(refs) == 3
    assert shoal.get(list(refs)) == [5, 10, 15]
    a, b = add.options(num_returns=1).remote(1, 2), add.remote(3, y=4)
    assert shoal.get([a, b]) == [3, 7]


def test_task_submits_tasks_and_gets_them(backend):
    assert shoal.get(fan_out.remote(3)) == sum(range(1, 4))


def test_top_level_ref_arguments_are_resolved(backend):
    ref = shoal.put(40)
    assert shoal.get(add.remote(ref, y=shoal.put(2))) == 42
    assert shoal.get(add_one.remote(add_one.remote(0))) == 2


def test_nested_refs_stay_refs(backend):
    ref = shoal.put("payload")
    assert shoal.get(describe.remote([ref])) == ("ObjectRef", "payload")


def test_nested_ref_keeps_its_object_alive(backend):
    key = _key("nested-alive")
    # The driver's ref to the array is dropped at once; the task's nested ref must keep it.
    ref = get_nested_after.remote(key, [shoal.put(np.arange(200_000, dtype=np.int64))])
    gc.collect()
    shoal.get_kv_store().set(key, b"go")
    assert shoal.get(ref, timeout=LONG).sum() == 200_000 * 199_999 // 2


def test_runtime_context_names_the_backend(backend):
    assert shoal.get_runtime_context().backend == backend
    assert shoal.get(context_backend.remote()) == backend


# ------------------------------------------------------------------ objects
def test_put_get_numpy_array_is_equal_and_read_only(backend):
    a = np.arange(1_000_000, dtype=np.float64)
    b = shoal.get(shoal.put(a))
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable


def test_task_reads_numpy_argument_read_only(backend):
    a = np.ones((1000, 1000), dtype=np.float32)
    total, writeable, shape = shoal.get(array_info.remote(shoal.put(a)))
    assert (total, writeable, shape) == (1e6, False, (1000, 1000))


def test_unpicklable_argument_raises_serialization_error(backend):
    with pytest.raises(SerializationError, match="(?i)lock"):
        add_one.remote(threading.Lock())


# ------------------------------------------------------------------ wait and get
def test_wait_returns_ready_in_input_order_and_the_rest_not_ready(backend):
    key = _key("wait")
    blocked = wait_key.remote(key)
    fast = [add_one.remote(1), add_one.remote(2)]
    try:
        refs = [fast[0], blocked, fast[1]]
        ready, not_ready = shoal.wait(refs, num_returns=2, timeout=LONG)
        assert ready == fast
        assert not_ready == [blocked]
    finally:
        shoal.get_kv_store().set(key, b"go")
    assert shoal.get(blocked) == b"go"


def test_wait_timeout_returns_what_is_ready(backend):
    key = _key("wait-timeout")
    blocked = wait_key.remote(key)
    try:
        ready, not_ready = shoal.wait([blocked], num_returns=1, timeout=0.2)
        assert (ready, not_ready) == ([], [blocked])
    finally:
        shoal.get_kv_store().set(key, b"go")
    ready, not_ready = shoal.wait([blocked], num_returns=1, timeout=LONG)
    assert (ready, not_ready) == ([blocked], [])


def test_get_timeout_raises_get_timeout_error(backend):
    key = _key("get-timeout")
    blocked = wait_key.remote(key)
    try:
        with pytest.raises(GetTimeoutError):
            shoal.get(blocked, timeout=0.2)
    finally:
        shoal.get_kv_store().set(key, b"go")
    assert shoal.get(blocked, timeout=LONG) == b"go"


def test_task_error_is_a_task_error_and_the_original_type(backend):
    with pytest.raises(ValueError, match="boom-1234") as info:
        shoal.get(raise_value_error.remote("boom-1234"))
    err = info.value
    assert isinstance(err, TaskError)
    assert "raise_value_error" in err.remote_traceback
    assert "boom-1234" in err.remote_traceback


def test_error_of_a_nested_task_reaches_the_driver_with_its_type(backend):
    with pytest.raises(ValueError, match="inner-boom") as info:
        shoal.get(get_failing_inner.remote(), timeout=LONG)
    assert isinstance(info.value, TaskError)
    assert info.value.function_name.endswith("raise_value_error")


# ------------------------------------------------------------------ failures and cancel
def test_worker_crash_is_retried_then_raises_worker_crashed(backend):
    key = _key("crash")
    with pytest.raises(WorkerCrashedError):
        shoal.get(crash_counted.options(max_retries=1).remote(key), timeout=LONG)
    assert int(shoal.get_kv_store().get(key, timeout=5)) == 2
    assert shoal.get(add_one.remote(1), timeout=LONG) == 2   # the cluster still works


def test_cancel_queued_task_raises_task_cancelled(backend):
    key = _key("cancel-queued")
    gate = wait_key.remote(key)
    queued = add.remote(gate, "never")   # waits for its argument: queued, not running
    try:
        shoal.cancel(queued)
        with pytest.raises(TaskCancelledError):
            shoal.get(queued, timeout=LONG)
    finally:
        shoal.get_kv_store().set(key, b"go")
    assert shoal.get(gate, timeout=LONG) == b"go"


def test_cancel_running_task_raises_task_cancelled(backend):
    key = _key("cancel-running")
    ref = spin_after_signal.remote(key)
    shoal.get_kv_store().get(key, timeout=LONG)          # the task is running now
    shoal.cancel(ref)
    with pytest.raises(TaskCancelledError):
        shoal.get(ref, timeout=LONG)


def test_infeasible_task_raises_at_submission(backend):
    with pytest.raises(InfeasibleResourceError):
        add_one.options(num_cpus=64).remote(1)
    with pytest.raises(InfeasibleResourceError):
        add_one.options(resources={"no_such_resource": 1}).remote(1)


# ------------------------------------------------------------------ actors
def test_actor_keeps_state_and_runs_one_callers_calls_in_order(backend):
    c = Counter.remote(10)
    try:
        assert shoal.get([c.incr.remote() for _ in range(20)]) == list(range(11, 31))
        assert shoal.get(list(c.pair.remote())) == [30, -30]
    finally:
        shoal.kill(c)


def test_actor_handle_passed_to_a_task_calls_the_same_actor(backend):
    c = Counter.remote(0)
    try:
        assert shoal.get(call_actor.remote(c, 3), timeout=LONG) == [1, 2, 3]
        assert shoal.get(c.value.remote()) == 3
    finally:
        shoal.kill(c)


def test_actor_max_concurrency_runs_calls_on_threads(backend):
    r = Rendezvous.options(max_concurrency=2).remote()
    try:
        assert shoal.get([r.meet.remote(0), r.meet.remote(1)], timeout=LONG) == [0, 1]
    finally:
        shoal.kill(r)


def test_async_actor_runs_calls_concurrently(backend):
    g = AsyncGate.remote()
    try:
        waiting = g.wait_open.remote()
        assert shoal.get(g.open.remote(), timeout=LONG) == "open"
        assert shoal.get(waiting, timeout=LONG) == "opened"
    finally:
        shoal.kill(g)


def test_named_actor_is_found_by_name_and_namespace(backend):
    name = _key("actor").replace("/", "-")
    a = Counter.options(name=name).remote(0)
    b = Counter.options(name=name, namespace="other-ns").remote(100)
    try:
        shoal.get(a.incr.remote())
        assert shoal.get(shoal.get_actor(name).value.remote()) == 1
        assert shoal.get(shoal.get_actor(name, namespace="other-ns").value.remote()) == 100
        same = Counter.options(name=name, get_if_exists=True).remote(0)
        assert shoal.get(same.incr.remote()) == 2
        with pytest.raises(ValueError, match="already exists"):
            Counter.options(name=name).remote(0)
        with pytest.raises(ValueError):
            shoal.get_actor(name + "-missing")
    finally:
        shoal.kill(a)
        shoal.kill(b)


def test_killed_actor_raises_actor_died(backend):
    c = Counter.remote()
    assert shoal.get(c.incr.remote()) == 1
    shoal.kill(c)
    with pytest.raises(ActorDiedError):
        shoal.get(c.incr.remote(), timeout=LONG)


def test_actor_restarts_after_its_process_dies(backend):
    c = Counter.options(max_restarts=1).remote(0)
    try:
        assert shoal.get(c.incr.remote(5)) == 5
        first_pid = shoal.get(c.get_pid.remote())
        with pytest.raises((ActorDiedError, ActorUnavailableError)):
            shoal.get(c.crash.remote(), timeout=LONG)
        # The constructor ran again: fresh state, a new process.
        assert _call_after_restart(lambda: c.value.remote()) == 0
        assert shoal.get(c.get_pid.remote(), timeout=LONG) != first_pid
    finally:
        shoal.kill(c)


def _call_after_restart(submit, tries: int = 50):
    """Ray may report the actor unavailable while it restarts: ask again."""
    for _ in range(tries):
        try:
            return shoal.get(submit(), timeout=LONG)
        except ActorUnavailableError:
            time.sleep(0.1)
    raise AssertionError("the actor did not come back")


# ------------------------------------------------------------------ placement groups
def test_placement_group_runs_tasks_and_actors_in_its_bundles(backend):
    pg = shoal.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    try:
        assert pg.wait(LONG)
        shoal.get(pg.ready(), timeout=LONG)
        refs = [add_one.options(placement_group=pg, placement_group_bundle_index=i).remote(i)
                for i in range(2)]
        assert shoal.get(refs, timeout=LONG) == [1, 2]
        strategy = shoal.PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
        c = Counter.options(num_cpus=1, scheduling_strategy=strategy).remote(3)
        assert shoal.get(c.incr.remote(), timeout=LONG) == 4
        shoal.kill(c)
    finally:
        shoal.remove_placement_group(pg)


def test_infeasible_placement_group_raises_at_once(backend):
    with pytest.raises(InfeasibleResourceError):
        shoal.placement_group([{"CPU": 64}])


def test_task_bigger_than_its_bundle_raises_at_once(backend):
    pg = shoal.placement_group([{"CPU": 1}])
    try:
        with pytest.raises(InfeasibleResourceError):
            add_one.options(num_cpus=2, placement_group=pg,
                            placement_group_bundle_index=0).remote(1)
    finally:
        shoal.remove_placement_group(pg)


def test_removed_placement_group_frees_its_resources(backend):
    pg = shoal.placement_group([{"CPU": 2}])
    assert pg.wait(LONG)
    shoal.remove_placement_group(pg)
    # Every CPU is free again: a task needing all of them runs.
    assert shoal.get(add_one.options(num_cpus=2).remote(0), timeout=LONG) == 1


# ------------------------------------------------------------------ cluster
def test_cluster_and_available_resources(backend):
    total = shoal.cluster_resources()
    avail = shoal.available_resources()
    assert total["CPU"] == 2
    assert 0 <= avail.get("CPU", 0) <= total["CPU"]
    nodes = [n for n in shoal.nodes() if n["Alive"]]
    assert len(nodes) == 1 and nodes[0]["Resources"]["CPU"] == 2


# ------------------------------------------------------------------ key-value store
def test_kv_store_operations_from_the_driver(backend):
    store = shoal.get_kv_store()
    p = _key("kv")
    store.set(p + "/a", b"1")
    store.set(p + "/b", "two")
    assert store.get(p + "/a", timeout=5) == b"1"
    assert store.get(p + "/b") == b"two"
    assert store.add(p + "/n", 2) == 2 and store.add(p + "/n", 3) == 5
    assert store.check([p + "/a", p + "/b"]) and not store.check([p + "/missing"])
    assert sorted(store.keys(p + "/")) == [p + "/a", p + "/b", p + "/n"]
    store.wait([p + "/a", p + "/b"], timeout=5)
    assert store.compare_set(p + "/c", None, b"x") == b"x"
    assert store.compare_set(p + "/c", b"wrong", b"y") == b"x"
    assert store.compare_set(p + "/c", b"x", b"z") == b"z"
    assert store.delete(p + "/a") and not store.delete(p + "/a")
    with pytest.raises(GetTimeoutError):
        store.get(p + "/a", timeout=0.2)
    with pytest.raises(GetTimeoutError):
        store.wait([p + "/never"], timeout=0.2)


def test_kv_store_is_shared_with_tasks(backend):
    store = shoal.get_kv_store()
    key_in, key_out = _key("to-task"), _key("from-task")
    ref = kv_roundtrip.remote(key_in, key_out)
    assert store.get(key_out, timeout=LONG) == b"from-task"
    store.set(key_in, b"from-driver")
    assert shoal.get(ref, timeout=LONG) == b"from-driver"


# ------------------------------------------------------------------ Ray only
def test_ray_backend_attaches_to_a_running_ray_and_leaves_it_running(backend):
    if backend != "ray":
        pytest.skip("about the Ray backend's lifecycle")
    import ray

    from shoal.core._ray import RayBackend
    attached = RayBackend()
    assert attached.resources("total")["CPU"] == 2
    attached.shutdown()
    assert ray.is_initialized()
    store = shoal.get_kv_store()          # still usable: the store is made anew if ended
    store.set("after-attach", b"ok")
    assert store.get("after-attach", timeout=5) == b"ok"
    assert shoal.get(add_one.remote(1), timeout=LONG) == 2
