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


def test_actor_constructed_from_a_task_still_running_waits_for_its_value(backend):
    key = _key("ctor-arg")
    c = Counter.remote(wait_key.remote(key, 41))      # the task blocks until the key is set
    try:
        time.sleep(1.0)               # the actor's process is up well before its argument
        shoal.get_kv_store().set(key, b"go")
        assert shoal.get(c.incr.remote(), timeout=LONG) == 42
    finally:
        shoal.kill(c)
    bad = Counter.remote(raise_value_error.remote("ctor-arg-boom"))
    with pytest.raises(ActorDiedError, match="ctor-arg-boom"):
        shoal.get(bad.incr.remote(), timeout=LONG)


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


def test_resource_all_taken_is_absent_from_available(backend):
    hog = Counter.options(num_cpus=2).remote()
    assert shoal.get(hog.value.remote(), timeout=LONG) == 0
    deadline = time.monotonic() + LONG
    while "CPU" in shoal.available_resources():     # Ray's view settles after a moment
        assert time.monotonic() < deadline, shoal.available_resources()
        time.sleep(0.05)
    shoal.kill(hog)


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


# ------------------------------------------------------------------ generators
@shoal.remote(num_returns="streaming")
def count_up(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"failed at item {i}")
        yield i * 10


@shoal.remote(num_returns="streaming")
def yield_then_wait(key):
    yield "first"
    shoal.get_kv_store().get(key, timeout=LONG)
    yield "second"


@shoal.remote(num_returns="streaming")
def yield_forever(key):
    shoal.get_kv_store().set(key, b"started")
    for i in range(LONG * 10):
        yield i
        time.sleep(0.1)


@shoal.remote(num_returns="dynamic")
def dynamic_items(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise KeyError(f"failed at item {i}")
        yield np.full(3, i)


@shoal.remote
def sum_stream(n):
    return sum(shoal.get(r) for r in count_up.remote(n))


@shoal.remote
class Streamer:
    @shoal.method(num_returns="streaming")
    def items(self, n):
        for i in range(n):
            yield i

    def plain_gen(self, n):
        for i in range(n, 0, -1):   # not `yield from range(...)`: Ray sends into the generator
            yield i


@shoal.remote
class AsyncStreamer:
    async def items(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def test_streaming_generator_yields_refs_in_order(backend):
    gen = count_up.remote(4)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, shoal.ObjectRef) for r in refs)
    assert shoal.get(refs) == [0, 10, 20, 30]
    with pytest.raises(StopIteration):
        next(gen)
    assert shoal.get(gen.completed(), timeout=LONG) is None


def test_streaming_next_returns_each_item_as_it_is_yielded(backend):
    key = _key("stream-wait")
    gen = yield_then_wait.remote(key)
    try:
        assert shoal.get(next(gen), timeout=LONG) == "first"
        assert not gen.next_ready()           # the task is blocked before its second item
    finally:
        shoal.get_kv_store().set(key, b"go")
    assert shoal.get(next(gen), timeout=LONG) == "second"
    assert list(gen) == []


def test_wait_takes_generators_ready_when_their_next_item_exists(backend):
    key = _key("stream-wait-gen")
    gen = yield_then_wait.remote(key)
    blocker = yield_then_wait.remote(_key("stream-wait-never"))
    try:
        ready, pending = shoal.wait([gen], timeout=LONG)
        assert ready == [gen] and pending == []
        assert shoal.get(next(gen), timeout=LONG) == "first"
        shoal.get(next(blocker), timeout=LONG)
        # both tasks now blocked before their second item: nothing is ready
        ready, pending = shoal.wait([gen, blocker], timeout=0.3)
        assert ready == [] and pending == [gen, blocker]
        done = shoal.put(1)
        ready, pending = shoal.wait([gen, done, blocker], num_returns=1, timeout=LONG)
        assert ready == [done] and pending == [gen, blocker]
    finally:
        shoal.get_kv_store().set(key, b"go")
    ready, _ = shoal.wait([blocker, gen], timeout=LONG)
    assert ready == [gen]
    assert shoal.get(next(gen), timeout=LONG) == "second"
    assert shoal.wait([gen], timeout=LONG)[0] == [gen]     # ended: ready, next() stops
    assert list(gen) == []
    shoal.cancel(blocker)


def test_streaming_error_surfaces_at_its_item_then_stops(backend):
    gen = count_up.remote(5, fail_at=2)
    assert shoal.get(next(gen)) == 0
    assert shoal.get(next(gen)) == 10
    with pytest.raises(ValueError, match="failed at item 2"):
        shoal.get(next(gen), timeout=LONG)
    with pytest.raises(StopIteration):
        next(gen)


def test_cancel_streaming_generator_stops_it(backend):
    key = _key("stream-cancel")
    gen = yield_forever.remote(key)
    assert shoal.get(next(gen), timeout=LONG) == 0
    shoal.get_kv_store().get(key, timeout=LONG)
    shoal.cancel(gen)
    seen = 0
    with pytest.raises(TaskCancelledError):
        for ref in gen:                        # items yielded before the cancel, then the error
            shoal.get(ref, timeout=LONG)
            seen += 1
    assert seen < LONG * 10
    with pytest.raises(StopIteration):
        next(gen)


def test_streaming_actor_methods(backend):
    s = Streamer.remote()
    assert shoal.get(list(s.items.remote(3))) == [0, 1, 2]
    gen = s.plain_gen.options(num_returns="streaming").remote(3)
    assert shoal.get(list(gen)) == [3, 2, 1]
    a = AsyncStreamer.remote()
    assert shoal.get(list(a.items.options(num_returns="streaming").remote(3))) == [0, 1, 2]


def test_streaming_generator_iterated_inside_a_task(backend):
    assert shoal.get(sum_stream.remote(4), timeout=LONG) == 60


def test_streaming_needs_a_generator_function(backend):
    with pytest.raises(ValueError, match="generator function"):
        add_one.options(num_returns="streaming")
    with pytest.raises(ValueError, match="generator function"):
        shoal.remote(num_returns="dynamic")(lambda: [1, 2])


def test_generator_fills_fixed_returns_and_its_error_the_rest(backend):
    @shoal.remote(max_retries=0)
    def gen(n, fail=False):
        for i in range(n):
            yield [i]
        if fail:
            raise KeyError("after the items")

    assert shoal.get(gen.options(num_returns=3).remote(3), timeout=LONG) == [[0], [1], [2]]
    assert shoal.get(gen.remote(1), timeout=LONG) == [0]          # num_returns=1: the item
    first, second, third = gen.options(num_returns=3).remote(2, fail=True)
    assert shoal.get(first, timeout=LONG) == [0]
    with pytest.raises(KeyError):
        shoal.get(third, timeout=LONG)
    short = gen.options(num_returns=3).remote(2)
    assert shoal.get(short[1], timeout=LONG) == [1]
    with pytest.raises(ValueError, match="num_returns=3"):
        shoal.get(short[2], timeout=LONG)


def test_dynamic_generator_is_a_ref_to_the_item_refs(backend):
    ref = dynamic_items.remote(3)
    assert isinstance(ref, shoal.ObjectRef)
    gen = shoal.get(ref, timeout=LONG)
    assert isinstance(gen, shoal.DynamicObjectRefGenerator)
    values = [shoal.get(r) for r in gen]
    assert [v.tolist() for v in values] == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]


@shoal.remote
def read_dynamic(gen):
    return [int(shoal.get(ref)[0]) for ref in gen]


def test_dynamic_generator_passed_to_a_task(backend):
    ref = dynamic_items.remote(3)
    assert shoal.get(read_dynamic.remote(ref), timeout=LONG) == [0, 1, 2]     # resolved there
    assert shoal.get(read_dynamic.remote(shoal.get(ref)), timeout=LONG) == [0, 1, 2]


def test_actor_generator_method_with_fixed_returns(backend):
    s = Streamer.remote()
    assert shoal.get(s.items.options(num_returns=2).remote(2), timeout=LONG) == [0, 1]
    assert shoal.get(s.plain_gen.remote(1), timeout=LONG) == 1


def test_dynamic_generator_error_is_its_last_ref(backend):
    refs = list(shoal.get(dynamic_items.remote(5, fail_at=2), timeout=LONG))
    assert len(refs) == 3
    assert shoal.get(refs[1]).tolist() == [1, 1, 1]
    with pytest.raises(KeyError):
        shoal.get(refs[2])


@shoal.remote(num_returns="dynamic", max_retries=1, retry_exceptions=[KeyError])
def dynamic_fails_once(key):
    yield "a"
    if shoal.get_kv_store().add(key, 1) == 1:
        raise KeyError("first attempt")
    yield "b"


def test_dynamic_generator_retries_a_retryable_error(backend):
    refs = list(shoal.get(dynamic_fails_once.remote(_key("dyn-retry")), timeout=LONG))
    assert shoal.get(refs, timeout=LONG) == ["a", "b"]


def test_bad_num_returns_is_rejected(backend):
    with pytest.raises(ValueError, match="num_returns"):
        add_one.options(num_returns="lots")


# ------------------------------------------------------------------ DAG
def test_dag_of_functions_runs_each_node_once_per_execute(backend):
    from shoal.dag import InputNode
    with InputNode() as inp:
        doubled = add.bind(inp, inp)
        dag = add.bind(doubled, doubled)
    assert shoal.get(dag.execute(3), timeout=LONG) == 12
    assert shoal.get(dag.execute(5), timeout=LONG) == 20


def test_dag_actor_keeps_state_across_executions(backend):
    from shoal.dag import InputNode
    with InputNode() as inp:
        counter = Counter.bind(100)
        dag = counter.incr.bind(add_one.bind(inp))
    assert shoal.get(dag.execute(0), timeout=LONG) == 101
    assert shoal.get(dag.execute(1), timeout=LONG) == 103
    live = Counter.remote(0)
    assert shoal.get(live.incr.bind(7).execute(), timeout=LONG) == 7


def test_dag_multi_output_and_input_parts(backend):
    from shoal.dag import InputNode, MultiOutputNode
    with InputNode() as inp:
        dag = MultiOutputNode([add.bind(inp[0], y=inp.y), add_one.bind(inp[1])])
    refs = dag.execute(1, 10, y=2)
    assert shoal.get(refs, timeout=LONG) == [3, 11]


def test_dag_error_reaches_the_result(backend):
    from shoal.dag import InputNode
    with InputNode() as inp:
        dag = add_one.bind(raise_value_error.bind(inp))
    with pytest.raises(ValueError, match="dag-boom"):
        shoal.get(dag.execute("dag-boom"), timeout=LONG)


def test_dag_actor_cannot_take_the_input(backend):
    from shoal.dag import InputNode
    with InputNode() as inp:
        with pytest.raises(ValueError, match="cannot take the InputNode"):
            Counter.bind(inp)


# ------------------------------------------------------------------ runtime context
@shoal.remote(num_cpus=1)
def task_context():
    c = shoal.get_runtime_context()
    return (c.get_job_id(), c.get_node_id(), c.get_task_id(), c.get_actor_id(),
            c.get_task_name(), c.get_assigned_resources(), c.get_worker_id())


@shoal.remote(max_restarts=1)
class ContextActor:
    def context(self):
        c = shoal.get_runtime_context()
        return (c.get_actor_id(), c.get_actor_name(), c.was_current_actor_reconstructed,
                c.get_assigned_resources(), c.get_accelerator_ids())

    def ping_self(self):
        me = shoal.get_runtime_context().current_actor
        return isinstance(me, shoal.ActorHandle)

    def crash(self):
        os._exit(1)


def test_runtime_context_in_driver_task_and_actor(backend):
    from shoal.util import get_node_ip_address
    ctx = shoal.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert isinstance(ctx.get_job_id(), str) and ctx.get_job_id()
    with pytest.raises(RuntimeError):
        ctx.current_actor
    job, node, task, actor, name, res, worker = shoal.get(
        task_context.options(name="ctx-task").remote(), timeout=LONG)
    assert job == ctx.get_job_id()
    assert node in {n["NodeID"] for n in shoal.nodes()}   # the driver's node on one machine
    assert isinstance(task, str) and actor is None and name == "ctx-task"
    assert res == {"CPU": 1.0} and isinstance(worker, str)
    a = ContextActor.options(name=_key("ctx-actor"), num_cpus=1).remote()
    actor_id, actor_name, reconstructed, res, accel = shoal.get(a.context.remote(), timeout=LONG)
    assert isinstance(actor_id, str) and actor_name.startswith("test/ctx-actor/")
    assert reconstructed is False and res == {"CPU": 1.0} and accel == {"GPU": []}
    assert shoal.get(a.ping_self.remote(), timeout=LONG) is True
    shoal.kill(a)
    assert isinstance(get_node_ip_address(), str) and get_node_ip_address()


def test_restarted_actor_knows_it_was_reconstructed(backend):
    a = ContextActor.remote()
    assert shoal.get(a.context.remote(), timeout=LONG)[2] is False
    a.crash.remote()
    deadline = time.monotonic() + LONG
    while True:
        try:
            assert shoal.get(a.context.remote(), timeout=LONG)[2] is True
            break
        except (ActorDiedError, ActorUnavailableError):
            assert time.monotonic() < deadline, "the actor never came back"
            time.sleep(0.1)
    shoal.kill(a)


# ------------------------------------------------------------------ runtime_env
@shoal.remote
def read_shipped_files():
    import shipped_helper   # only importable from the working_dir
    with open("data.txt") as f:
        return f.read(), shipped_helper.VALUE, os.environ.get("SHOAL_TEST_VAR")


@shoal.remote
def shipped_helper_importable():
    try:
        import shipped_helper  # noqa: F401
        return True
    except ImportError:
        return False


@shoal.remote
class ModuleUser:
    def use(self):
        import shipped_pkg
        return shipped_pkg.NAME, os.getcwd() != "", os.environ.get("SHOAL_TEST_VAR")


def test_runtime_env_working_dir_is_cwd_and_importable(backend, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "data.txt").write_text("shipped")
    (wd / "shipped_helper.py").write_text("VALUE = 7\n")
    env = {"working_dir": str(wd), "env_vars": {"SHOAL_TEST_VAR": "on"}}
    ref = read_shipped_files.options(runtime_env=env).remote()
    assert shoal.get(ref, timeout=LONG) == ("shipped", 7, "on")
    # Other tasks run without it (no leaked module, cwd or variable).
    assert shoal.get([shipped_helper_importable.remote() for _ in range(4)],
                     timeout=LONG) == [False] * 4


def test_runtime_env_py_modules_for_an_actor(backend, tmp_path):
    pkg = tmp_path / "shipped_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("NAME = 'from-py-modules'\n")
    a = ModuleUser.options(runtime_env={"py_modules": [str(pkg)],
                                        "env_vars": {"SHOAL_TEST_VAR": "actor"}}).remote()
    assert shoal.get(a.use.remote(), timeout=LONG) == ("from-py-modules", True, "actor")
    shoal.kill(a)


def test_runtime_env_missing_dir_or_pip_is_rejected_on_the_embedded_backend(backend, tmp_path):
    if backend != "local":
        pytest.skip("Ray installs pip/conda environments itself")
    from shoal.exceptions import RuntimeEnvSetupError
    with pytest.raises(RuntimeEnvSetupError, match="use backend='ray'"):
        add_one.options(runtime_env={"pip": ["requests"]}).remote(1)
    with pytest.raises(RuntimeEnvSetupError, match="not supported on the embedded backend"):
        Counter.options(runtime_env={"conda": "env"}).remote()
    with pytest.raises(RuntimeEnvSetupError, match="not a directory"):
        add_one.options(runtime_env={"working_dir": str(tmp_path / "missing")}).remote(1)
