"""shoal.util (ActorPool, queue.Queue, multiprocessing.Pool) on every backend.

Each test runs on the local backend and on Ray (the ``backend`` fixture).
Calls that must stay busy wait on a key of the cluster's key-value store,
which the test sets, so nothing depends on timing.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import threading
import uuid

import cloudpickle
import pytest

import shoal
from shoal.exceptions import ActorDiedError, GetTimeoutError
from shoal.util import ActorPool
from shoal.util.multiprocessing import Pool
from shoal.util.queue import Empty, Full, Queue

LONG = 60

# Ray's workers cannot import this test module: the plain functions handed to
# the Pool travel by value (a user's would come from an importable module, or
# a runtime_env working_dir).
cloudpickle.register_pickle_by_value(sys.modules[__name__])
try:
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
except ImportError:
    pass


def _key(what: str) -> str:
    return f"test/{what}/{uuid.uuid4().hex}"


@shoal.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def wait_then(self, key, v):
        shoal.get_kv_store().get(key, timeout=LONG)
        return v

    def fail(self, v):
        raise ValueError(f"bad value {v}")

    def die(self, v):
        os._exit(1)

    def pid(self, v):
        return os.getpid()


def _double(a, v):
    return a.double.remote(v)


# ------------------------------------------------------------------ ActorPool
def test_actor_pool_map_keeps_order_and_map_unordered_gets_all(backend):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(_double, range(6))) == [0, 2, 4, 6, 8, 10]
    assert sorted(pool.map_unordered(_double, range(6))) == [0, 2, 4, 6, 8, 10]
    assert not pool.has_next()


def test_actor_pool_submit_get_next_and_membership(backend):
    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1])
    assert pool.has_free()
    pool.submit(_double, 1)
    pool.submit(_double, 2)          # waits for the one actor
    assert not pool.has_free() and pool.pop_idle() is None
    assert pool.has_next()
    assert pool.get_next() == 2
    assert pool.get_next() == 4
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    assert pool.pop_idle() == a1
    pool.push(a2)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)
    pool.submit(_double, 5)
    assert pool.get_next_unordered() == 10


def test_actor_pool_get_next_timeout_and_ignore(backend):
    key = _key("pool-timeout")
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.wait_then.remote(key, v), "late")
    try:
        with pytest.raises(TimeoutError):
            pool.get_next(timeout=0.05)
        assert pool.has_next()                           # still there after a plain timeout
        with pytest.raises(GetTimeoutError, match="given up"):
            pool.get_next(timeout=0.05, ignore_if_timedout=True)
        assert not pool.has_next()
        pool.submit(_double, 3)                          # the actor is back in the pool
    finally:
        shoal.get_kv_store().set(key, b"go")
    assert pool.get_next(timeout=LONG) == 6


def test_actor_pool_errors_reach_the_caller_and_dead_actors_leave(backend):
    good, doomed = Doubler.remote(), Doubler.remote()
    pool = ActorPool([good])
    pool.submit(lambda a, v: a.fail.remote(v), 7)
    with pytest.raises(ValueError, match="bad value 7"):
        pool.get_next()
    assert pool.has_free()                               # an error leaves the actor usable
    assert pool.pop_idle() == good
    pool.push(doomed)
    pool.submit(lambda a, v: a.die.remote(v), 0)
    with pytest.raises(ActorDiedError):
        pool.get_next(timeout=LONG)
    assert not pool.has_free() and pool.pop_idle() is None   # the dead actor is gone
    pool.push(good)
    assert list(pool.map(_double, [1, 2])) == [2, 4]


# ------------------------------------------------------------------ Queue
@shoal.remote
def produce(q, n):
    for i in range(n):
        q.put(i)
    return n


@shoal.remote
def consume(q, n):
    return [q.get(timeout=LONG) for _ in range(n)]


def test_queue_put_get_in_order_with_sizes(backend):
    q = Queue(maxsize=3)
    try:
        assert q.empty() and not q.full() and q.qsize() == 0
        for i in range(3):
            q.put(i)
        assert q.full() and q.size() == 3 and len(q) == 3
        assert [q.get(), q.get_nowait(), q.get(block=False)] == [0, 1, 2]
        assert q.empty()
    finally:
        q.shutdown()


def test_queue_full_and_empty_raise(backend):
    q = Queue(maxsize=1)
    try:
        q.put_nowait("x")
        with pytest.raises(Full):
            q.put_nowait("y")
        with pytest.raises(Full):
            q.put("y", timeout=0.05)
        import queue as stdlib_queue
        with pytest.raises(stdlib_queue.Full):           # the standard library's types too
            q.put("y", block=False)
        assert q.get() == "x"
        with pytest.raises(Empty):
            q.get_nowait()
        with pytest.raises(Empty):
            q.get(timeout=0.05)
        with pytest.raises(ValueError):
            q.get(timeout=-1)
    finally:
        q.shutdown()


def test_queue_batches_are_all_or_nothing(backend):
    q = Queue(maxsize=3)
    try:
        q.put_nowait_batch([1, 2])
        with pytest.raises(Full):
            q.put_nowait_batch([3, 4])
        assert q.qsize() == 2
        with pytest.raises(Empty):
            q.get_nowait_batch(3)
        assert q.get_nowait_batch(2) == [1, 2]
    finally:
        q.shutdown()


def test_queue_is_shared_by_tasks(backend):
    q = Queue()
    try:
        got = consume.remote(q, 5)
        assert shoal.get(produce.remote(q, 5), timeout=LONG) == 5
        assert shoal.get(got, timeout=LONG) == [0, 1, 2, 3, 4]
    finally:
        q.shutdown()


def test_queue_blocking_get_wakes_on_put(backend):
    q = Queue()
    try:
        got = consume.remote(q, 1)
        ready, _ = shoal.wait([got], timeout=0.05)
        assert not ready                                 # blocked on the empty queue
        q.put("hello")
        assert shoal.get(got, timeout=LONG) == ["hello"]
    finally:
        q.shutdown()


def test_queue_after_shutdown_raises(backend):
    q = Queue()
    actor = q.actor
    q.shutdown()
    with pytest.raises(ActorDiedError):
        shoal.get(actor.qsize.remote(), timeout=LONG)


# ------------------------------------------------------------------ multiprocessing.Pool
def _init(tag):
    os.environ["SHOAL_TEST_POOL_TAG"] = tag   # process state the initializer leaves


def _tagged(x):
    return os.environ.get("SHOAL_TEST_POOL_TAG"), x


def _square(x):
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ZeroDivisionError(f"no {x}")
    return x


def _wait_key(key):
    return shoal.get_kv_store().get(key, timeout=LONG)


def _pid(_):
    return os.getpid()


def test_pool_map_family_matches_the_standard_library(backend):
    with Pool(2) as p:
        assert p.map(_square, range(10)) == [x * x for x in range(10)]
        assert p.map(_square, range(10), chunksize=3) == [x * x for x in range(10)]
        assert list(p.imap(_square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(p.imap_unordered(_square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert p.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert p.apply(pow, (2, 5)) == 32
        assert p.apply(_square, kwds={"x": 6}) == 36
        assert p.map(_square, []) == []


def test_pool_async_results_and_callbacks(backend):
    got, errors = [], []
    done = threading.Event()
    with Pool(2) as p:
        r = p.map_async(_square, range(4), callback=lambda v: (got.append(v), done.set()))
        assert r.get(timeout=LONG) == [0, 1, 4, 9]
        assert r.ready() and r.successful()
        assert done.wait(LONG) and got == [[0, 1, 4, 9]]
        bad = p.apply_async(_fail_on_three, (3,), error_callback=errors.append)
        with pytest.raises(ZeroDivisionError):
            bad.get(timeout=LONG)
        assert not bad.successful()
        s = p.starmap_async(pow, [(2, 2)])
        s.wait(LONG)
        assert s.get() == [4]


def test_pool_error_in_map_raises_its_type_and_imap_yields_it(backend):
    with Pool(2) as p:
        with pytest.raises(ZeroDivisionError, match="no 3"):
            p.map(_fail_on_three, range(6))
        assert p.map(_square, [2]) == [4]                # the pool still works
        got = list(p.imap(_fail_on_three, range(5), chunksize=5))
        assert got[:3] == [0, 1, 2] and got[4] == 4      # as Ray's Pool: the error in its place
        assert isinstance(got[3], ZeroDivisionError)


def _mark(item):
    shoal.get_kv_store().set(item, b"1")
    return item


def test_pool_imap_streams_its_input_through_a_bounded_window(backend):
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield i
            i += 1

    with Pool(2) as p:
        it = p.imap(_square, endless(), chunksize=3)
        assert [next(it) for _ in range(20)] == [x * x for x in range(20)]
        assert len(read) <= 20 + 3 * 2 * 2 + 3          # a window of 2 chunks per process
        got = list(itertools.islice(p.imap_unordered(_square, endless()), 5))
        assert len(set(got)) == 5 and all(round(g ** 0.5) ** 2 == g for g in got)


def test_pool_join_runs_the_rest_of_an_imap_input(backend):
    keys = [_key(f"imap-rest-{i}") for i in range(12)]
    p = Pool(2)
    it = p.imap(_mark, iter(keys))
    assert next(it) == keys[0]                          # the rest is not all sent yet
    p.close()
    p.join()                                            # as the standard library: all of it runs
    assert shoal.get_kv_store().check(keys)


def test_pool_larger_than_the_cluster_is_rejected(backend):
    with pytest.raises(ValueError, match="ask for fewer processes"):
        Pool(64)


def test_pool_timeout_and_not_ready(backend):
    key = _key("pool-wait")
    with Pool(1) as p:
        r = p.apply_async(_wait_key, (key,))
        try:
            with pytest.raises(multiprocessing.TimeoutError):
                r.get(timeout=0.05)
            assert not r.ready()
            with pytest.raises(ValueError, match="not ready"):
                r.successful()
            it = p.imap(_square, [3])
            with pytest.raises(multiprocessing.TimeoutError):
                it.next(timeout=0.05)                    # queued behind the blocked call
        finally:
            shoal.get_kv_store().set(key, b"go")
        assert r.get(timeout=LONG) == b"go"
        assert it.next(timeout=LONG) == 9


def test_pool_initializer_runs_in_each_process(backend):
    with Pool(2, initializer=_init, initargs=("ready",)) as p:
        assert p.map(_tagged, range(4), chunksize=1) == [("ready", i) for i in range(4)]


def test_pool_close_join_and_lifecycle_errors(backend):
    p = Pool(2)
    r = p.map_async(_square, range(8))
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(_square, [1])
    p.join()
    assert r.get(timeout=LONG) == [x * x for x in range(8)]
    p.terminate()                                        # twice is fine
    with pytest.raises(ValueError):
        Pool(0)


def test_pool_maxtasksperchild_replaces_processes(backend):
    with Pool(1, maxtasksperchild=1) as p:
        pids = [p.apply(_pid, (i,)) for i in range(3)]
    assert len(set(pids)) == 3
