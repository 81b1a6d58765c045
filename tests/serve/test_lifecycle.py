"""Replica failures, rolling redeploys, autoscaling and draining."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from shoal.exceptions import DeploymentUnavailableError


def _wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def _replica_ids(serve, app="default", dep=None):
    deps = serve.status()["applications"][app]["deployments"]
    st = deps[dep or next(iter(deps))]
    return [r["id"] for r in st["replicas"] if r["state"] == "running"]


def test_killed_replica_is_replaced_and_idempotent_calls_are_retried(serve):
    @serve.deployment(num_replicas=2, max_ongoing_requests=4)
    class Pid:
        def pid(self):
            return os.getpid()

        @serve.idempotent
        async def slow(self, x):
            await asyncio.sleep(0.5)
            return x

        async def slow_once(self, x):
            await asyncio.sleep(0.5)
            return x

    h = serve.run(Pid.bind(), route_prefix=None)
    pids = {h.pid.remote().result() for _ in range(20)}
    assert len(pids) == 2
    before = set(_replica_ids(serve))
    victim = sorted(pids)[0]
    retried = [h.slow.remote(i) for i in range(4)]
    once = [h.slow_once.remote(i) for i in range(4)]
    time.sleep(0.2)
    os.kill(victim, signal.SIGKILL)
    assert [r.result(timeout_s=30) for r in retried] == [0, 1, 2, 3]
    lost = 0
    for r in once:
        try:
            r.result(timeout_s=30)
        except DeploymentUnavailableError as e:
            assert "idempotent" in str(e)
            lost += 1
    assert lost >= 1   # some of them sat on the killed replica
    _wait_for(lambda: len(set(_replica_ids(serve)) - before) == 1, what="a replacement replica")
    assert len(_replica_ids(serve)) == 2
    pids_after = {h.pid.remote().result() for _ in range(20)}
    assert victim not in pids_after and len(pids_after) == 2


def test_failed_health_check_replaces_the_replica(serve):
    @serve.deployment(health_check_period_s=0.2, health_check_timeout_s=5)
    class Sick:
        def __init__(self):
            self.sick = False

        def make_sick(self):
            self.sick = True

        def check_health(self):
            if self.sick:
                raise RuntimeError("unwell")

        def pid(self):
            return os.getpid()

    h = serve.run(Sick.bind(), route_prefix=None)
    first = h.pid.remote().result()
    h.make_sick.remote().result()
    _wait_for(lambda: _pid_or_none(h) not in (None, first), what="a healthy replacement")


def _pid_or_none(h):
    try:
        return h.pid.remote().result(timeout_s=5)
    except Exception:  # noqa: BLE001 - between replicas
        return None


def test_rolling_update_fails_no_request(serve, http):
    def make(version):
        @serve.deployment(num_replicas=2, graceful_shutdown_timeout_s=10)
        class Versioned:
            async def __call__(self, request):
                await asyncio.sleep(0.01)
                return version
        return Versioned

    serve.run(make("v1").bind(), port=0)
    import httpx
    stop = threading.Event()
    results: list = []

    def load():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.get(http.url("/"))
                    results.append((r.status_code, r.text))
                except Exception as e:  # noqa: BLE001 - counted as a failure
                    results.append((0, repr(e)))
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(results) > 20, what="traffic")
        serve.run(make("v2").bind(), port=0)
        n = len(results)
        _wait_for(lambda: len(results) > n + 20, what="traffic after the update")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    texts = [t for _, t in results]
    assert "v1" in texts and texts[-1] == "v2"
    st = serve.status()["applications"]["default"]["deployments"]["Versioned"]
    assert len(st["replicas"]) == 2


@pytest.mark.slow
def test_autoscaling_follows_ongoing_requests_up_and_down(serve):
    @serve.deployment(max_ongoing_requests=10, autoscaling_config={
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
        "upscale_delay_s": 0.5, "downscale_delay_s": 1.0, "metrics_interval_s": 0.2})
    class Busy:
        async def __call__(self):
            await asyncio.sleep(0.3)

    h = serve.run(Busy.bind(), route_prefix=None)
    assert len(_replica_ids(serve)) == 1
    stop = threading.Event()

    def load():
        while not stop.is_set():
            h.remote().result()
    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(_replica_ids(serve)) == 3, what="scaling up to 3", timeout=40)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    _wait_for(lambda: len(_replica_ids(serve)) == 1, what="scaling down to 1", timeout=40)


def test_delete_drains_requests_in_flight(serve):
    @serve.deployment(graceful_shutdown_timeout_s=10)
    class Slow:
        async def __call__(self):
            await asyncio.sleep(0.5)
            return "finished"

    h = serve.run(Slow.bind(), name="slow", route_prefix=None)
    rs = [h.remote() for _ in range(3)]
    time.sleep(0.1)
    serve.delete("slow")
    assert [r.result(timeout_s=30) for r in rs] == ["finished"] * 3
    assert "slow" not in serve.status()["applications"]


def test_shutdown_leaves_no_replica_process_or_socket(serve):
    import psutil

    @serve.deployment(num_replicas=2)
    class P:
        def pid(self):
            return os.getpid()

    h = serve.run(P.bind(), port=0)
    pids = {h.pid.remote().result() for _ in range(10)}
    port = serve.status()["proxy"]["port"]
    serve.shutdown()
    _wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                              for p in pids), what="replica processes gone")
    import socket
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))    # the port is free again
    finally:
        s.close()


def test_a_constructor_that_raises_fails_the_deploy_and_keeps_the_old_version(serve, http):
    from shoal.exceptions import ServeError

    def make(fail):
        @serve.deployment(num_replicas=2)
        class App:
            def __init__(self):
                if fail:
                    raise RuntimeError("cannot load the model")

            def __call__(self, request):
                return "old"
        return App

    serve.run(make(False).bind(), port=0)
    with pytest.raises(ServeError, match="cannot load the model"):
        serve.run(make(True).bind(), port=0)
    assert http.get(http.url("/")).text == "old"
    st = serve.status()["applications"]["default"]["deployments"]["App"]
    assert len(st["replicas"]) == 2 and st["status"] == "HEALTHY"


def test_new_user_config_is_applied_in_place_without_restart(serve, http):
    @serve.deployment(num_replicas=2, user_config={"greeting": "hello"})
    class Greeter:
        def __init__(self):
            self.calls = 0

        async def reconfigure(self, config):
            await asyncio.sleep(0)
            self.greeting = config["greeting"]

        async def __call__(self, request):
            self.calls += 1
            return {"text": f"{self.greeting} from {os.getpid()}", "calls": self.calls}

    serve.run(Greeter.bind(), port=0)
    first = {http.post(http.url("/")).json()["text"] for _ in range(20)}
    ids = set(_replica_ids(serve))
    assert {t.split()[0] for t in first} == {"hello"}
    serve.run(Greeter.options(user_config={"greeting": "hi"}).bind(), port=0)
    assert set(_replica_ids(serve)) == ids          # the same replicas, not restarted
    after = [http.post(http.url("/")).json() for _ in range(20)]
    assert {a["text"].split()[0] for a in after} == {"hi"}
    assert {a["text"].split()[-1] for a in after} <= {t.split()[-1] for t in first}
    assert max(a["calls"] for a in after) > 10      # state kept across the reconfigure

    @serve.deployment(user_config={"x": 1})
    class NoReconfigure:
        def __call__(self, request):
            return "x"

    from shoal.exceptions import ServeError
    with pytest.raises(ServeError, match="reconfigure"):
        serve.run(NoReconfigure.bind(), name="bad", route_prefix="/bad")


def test_a_replica_freezes_its_heap_once_set_up_unless_told_not_to(serve, http):
    """Full collections that walk the model and the web stack stop the event loop for
    tens of milliseconds; a set-up replica moves them out of the collector's reach."""
    def make(env):
        @serve.deployment(ray_actor_options={"runtime_env": {"env_vars": env}})
        class Model:
            def __init__(self):
                self.weights = [[float(i)] * 4 for i in range(1000)]

            def __call__(self, request=None):
                import gc
                return {"frozen": gc.get_freeze_count(), "pid": os.getpid()}
        return Model.bind()

    handle = serve.run(make({}), name="frozen", route_prefix="/frozen")
    frozen = handle.remote().result()
    # more than the user's weights: what the replica and its HTTP front had imported too
    assert frozen["frozen"] > 10_000, frozen
    assert http.get(http.url("/frozen")).json()["frozen"] >= frozen["frozen"]
    handle = serve.run(make({"SHOAL_SERVE_GC_FREEZE": "0"}), name="left",
                       route_prefix="/left")
    left = handle.remote().result()
    assert left["frozen"] == 0 and left["pid"] != frozen["pid"], left
