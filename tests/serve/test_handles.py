"""Handles, composition, routing across replicas, 503 under overload, batching."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

from shoal.exceptions import BackPressureError, RequestError


def test_handle_calls_methods_of_class_and_function_deployments(serve):
    @serve.deployment
    class Adder:
        def __init__(self, k):
            self.k = k

        def add(self, x):
            return x + self.k

        async def add_async(self, x, *, times=1):
            await asyncio.sleep(0)
            return (x + self.k) * times

    @serve.deployment
    def double(x):
        return 2 * x

    h = serve.run(Adder.bind(10), name="adder", route_prefix=None)
    assert h.add.remote(1).result() == 11
    assert h.add_async.remote(2, times=3).result() == 36
    d = serve.run(double.bind(), name="double", route_prefix=None)
    assert d.remote(21).result(timeout_s=10) == 42


def test_user_error_reaches_the_caller_with_an_error_id(serve):
    @serve.deployment
    class Bad:
        def f(self, x):
            raise KeyError(x)

        def ok(self):
            return "ok"

    h = serve.run(Bad.bind(), route_prefix=None)
    with pytest.raises(RequestError) as info:
        h.f.remote("k").result()
    assert len(info.value.error_id) == 16 and isinstance(info.value.cause, KeyError)
    assert h.ok.remote().result() == "ok"


def test_composition_of_three_deployments(serve, http):
    @serve.deployment
    class Pre:
        def __call__(self, text):
            return text.strip().lower()

    @serve.deployment(num_replicas=2)
    class Model:
        async def __call__(self, text):
            return {"len": len(text), "text": text}

    @serve.deployment
    class Pipeline:
        def __init__(self, pre, model):
            self.pre, self.model = pre, model

        async def __call__(self, request):
            text = (await request.json())["text"]
            clean = self.pre.remote(text)                 # responses chain without awaiting
            out = await self.model.remote(clean)
            return {"pipeline": out}

    serve.run(Pipeline.bind(Pre.bind(), Model.bind()), port=0)
    r = http.post(http.url("/"), json={"text": "  HeLLo "})
    assert r.json() == {"pipeline": {"len": 5, "text": "hello"}}
    deps = serve.status()["applications"]["default"]["deployments"]
    assert sorted(deps) == ["Model", "Pipeline", "Pre"] and len(deps["Model"]["replicas"]) == 2


def test_requests_spread_over_replicas(serve):
    @serve.deployment(num_replicas=3, max_ongoing_requests=2)
    class Who:
        async def __call__(self):
            import os
            await asyncio.sleep(0.02)
            return os.getpid()

    h = serve.run(Who.bind(), route_prefix=None)
    pids = [r.result() for r in [h.remote() for _ in range(60)]]
    counts = sorted(pids.count(p) for p in set(pids))
    assert len(counts) == 3 and counts[0] >= 10, counts


def test_max_ongoing_requests_bounds_each_replica(serve):
    @serve.deployment(num_replicas=1, max_ongoing_requests=3)
    class Slow:
        def __init__(self):
            self.now = self.peak = 0

        async def __call__(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.05)
            self.now -= 1

        def peak_seen(self):
            return self.peak

    h = serve.run(Slow.bind(), route_prefix=None)
    for r in [h.remote() for _ in range(12)]:
        r.result()
    assert h.peak_seen.remote().result() == 3


def test_overload_beyond_the_queue_is_a_503_with_retry_after(serve, http):
    @serve.deployment(max_ongoing_requests=1, max_queued_requests=2)
    class Slow:
        async def __call__(self, request):
            await asyncio.sleep(0.5)
            return "done"

    serve.run(Slow.bind(), port=0)
    import httpx
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: httpx.get(http.url("/"), timeout=30), range(8)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 3 and codes.count(503) >= 1, codes
    bad = next(r for r in rs if r.status_code == 503)
    assert bad.headers["retry-after"] == "1" and "max_queued_requests" in bad.json()["error"]


def test_handle_back_pressure_raises(serve):
    @serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
    class Slow:
        async def __call__(self):
            await asyncio.sleep(0.3)

    h = serve.run(Slow.bind(), route_prefix=None)
    rs = [h.remote() for _ in range(6)]
    errors = 0
    for r in rs:
        try:
            r.result()
        except BackPressureError:
            errors += 1
    assert 1 <= errors <= 4


def test_batch_keeps_order_and_batches_concurrent_calls(serve):
    @serve.deployment(max_ongoing_requests=16)
    class Batched:
        def __init__(self):
            self.sizes = []

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.2)
        async def __call__(self, xs):
            self.sizes.append(len(xs))
            return [x * 10 for x in xs]

        def sizes_seen(self):
            return self.sizes

    h = serve.run(Batched.bind(), route_prefix=None)
    rs = [h.remote(i) for i in range(16)]
    assert [r.result() for r in rs] == [i * 10 for i in range(16)]
    sizes = h.sizes_seen.remote().result()
    assert sum(sizes) == 16 and max(sizes) == 8 and len(sizes) <= 4


def test_batch_timeout_sends_a_partial_batch():
    from shoal import serve

    @serve.batch(max_batch_size=100, batch_wait_timeout_s=0.05)
    async def f(xs):
        return [(x, len(xs)) for x in xs]

    async def main():
        t0 = time.perf_counter()
        out = await asyncio.gather(*(f(i) for i in range(3)))
        return out, time.perf_counter() - t0
    out, took = asyncio.run(main())
    assert out == [(0, 3), (1, 3), (2, 3)] and took < 5


def test_batch_rejects_wrong_result_length():
    from shoal import serve

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def f(xs):
        return xs[:-1]

    async def main():
        return await asyncio.gather(f(1), f(2), return_exceptions=True)
    out = asyncio.run(main())
    assert all(isinstance(e, ValueError) and "one result per input" in str(e) for e in out)
    with pytest.raises(TypeError, match="async"):
        serve.batch(lambda xs: xs)
