"""The controller: deploys applications and keeps their replicas running.

It lives in the driver (a thread), not in an actor: with the local backend
the cluster ends with the driver anyway, and here every control-plane step
(creating, checking, draining and killing replica actors) is a shoal actor
call through the authenticated cluster, while nothing listens for control
commands on a port. It replaces replicas that die or fail health checks,
scales on ongoing requests, rolls redeploys over without dropping requests
(new replicas up, routes switched everywhere, old ones drained), and drains
on shutdown.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import shutil
import tempfile
import threading
import time

import cloudpickle

import shoal
from shoal.exceptions import ServeError
from shoal.serve._deployment import Application, replace_bound
from shoal.serve._handle import DeploymentHandle
from shoal.serve._router import registry
from shoal.serve._traffic import Traffic, gather

_READY_TIMEOUT_S = 120.0
# SHOAL_SERVE_HTTP_IN_REPLICAS=0: every HTTP request goes through the proxy (two hops), as
# before replicas answered HTTP themselves; for comparing the two in benchmarks/serve.py.
_HTTP_IN_REPLICAS = os.environ.get("SHOAL_SERVE_HTTP_IN_REPLICAS", "1") != "0"
_ids = itertools.count(1)


class _ReplicaState:
    def __init__(self, rid, handle, version):
        self.id, self.handle, self.version = rid, handle, version
        self.path = None
        self.serves_http = False
        self.state = "starting"
        self.sentinel = None
        self.health_ref = None
        self.health_sent = 0.0
        self.last_health = time.monotonic()


class _DeploymentState:
    def __init__(self, app: str, node: Application, init_args, init_kwargs, version: str):
        self.app, self.name = app, node.deployment.name
        self.deployment = node.deployment
        self.config = node.deployment.config
        self.args, self.kwargs = init_args, init_kwargs
        self.version = version
        self.replicas: list[_ReplicaState] = []
        self.target = self.config.initial_replicas()
        self.above_since = None
        self.below_since = None
        self.last_scale_check = 0.0
        self.http = False       # its replicas answer HTTP themselves (an ingress with a route)
        self.idempotent = frozenset(
            n for n in dir(node.deployment.func_or_class)
            if getattr(getattr(node.deployment.func_or_class, n, None), "_shoal_idempotent", False))


class Controller:
    """Every application of this driver's serve instance."""

    def __init__(self, host: str, port: int, body_limit: int):
        self.host, self.port, self.body_limit = host, port, body_limit
        self.secret = secrets.token_bytes(32)
        self.sock_dir = tempfile.mkdtemp(prefix=f"shoal-serve-{os.getpid()}-")
        os.chmod(self.sock_dir, 0o700)
        self.apps: dict = {}          # name -> {"route_prefix", "ingress", "deployments": {}}
        self.lock = threading.RLock()
        self.proxy = None
        self.proxy_paths = None     # (where replicas borrow the HTTP socket, proxy's figures)
        self.stop_event = threading.Event()
        self._published = 0.0        # when the deployments were last shown in shoal.state
        self.traffic = Traffic()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="shoal-serve-ctl")
        self.thread.start()

    # ------------------------------------------------------------ HTTP proxy
    def _ensure_proxy(self) -> None:
        if self.proxy is not None:
            return
        from shoal.serve._proxy import Proxy
        actor = shoal.remote(Proxy).options(num_cpus=0, max_concurrency=100_000)
        self.proxy = actor.remote(self.host, self.port, self.body_limit, self._table(),
                                  self._routes(), self.secret, self.sock_dir)
        try:
            self.port, *paths = shoal.get(self.proxy.start.remote(), timeout=60)
            self.proxy_paths = tuple(paths)
        except Exception as e:
            shoal.kill(self.proxy)
            self.proxy = None
            raise ServeError(f"could not start the HTTP proxy on {self.host}:{self.port}: "
                             f"{e}") from None

    # ------------------------------------------------------------ deploy
    def deploy(self, name: str, root: Application, route_prefix: str | None) -> None:
        nodes = root.deployments()
        with self.lock:
            old = self.apps.get(name)
            for other, a in self.apps.items():
                if other != name and route_prefix is not None and a["route_prefix"] == route_prefix:
                    raise ValueError(f"route_prefix {route_prefix!r} is already used by "
                                     f"application {other!r}; pick another or delete it")
            states = {}
            reconfigure = []     # (kept deployment, its new user_config): applied in place
            for node in nodes:
                args = replace_bound(node.args, lambda a: DeploymentHandle(a.deployment.name, name))
                kwargs = replace_bound(node.kwargs,
                                       lambda a: DeploymentHandle(a.deployment.name, name))
                version = _version(node, args, kwargs)
                prev = old["deployments"].get(node.deployment.name) if old else None
                if prev is not None and prev.version == version:
                    if not _same(prev.config.user_config, node.deployment.config.user_config):
                        reconfigure.append((prev, node.deployment.config.user_config))
                    prev.config = node.deployment.config
                    prev.target = node.deployment.config.initial_replicas() \
                        if node.deployment.config.autoscaling_config is None else prev.target
                    states[prev.name] = prev
                else:
                    states[node.deployment.name] = _DeploymentState(name, node, args, kwargs,
                                                                    version)
            new_app = {"route_prefix": route_prefix, "ingress": root.deployment.name,
                       "deployments": states}
            for st in states.values():
                # A replica cannot retry a request whose connection dies with it: an
                # idempotent __call__ is answered through the proxy, which can.
                st.http = (_HTTP_IN_REPLICAS and route_prefix is not None
                           and st.name == root.deployment.name
                           and "__call__" not in st.idempotent)
            for st, user_config in reconfigure:
                self._reconfigure(st, user_config)
            # Start what is new before anything old goes: routes switch only once
            # every new replica listens.
            starting = []
            for st in states.values():
                have = [r for r in st.replicas if r.version == st.version]
                starting += [self._start_replica(st) for _ in range(st.target - len(have))]
            try:
                self._wait_ready(starting)
            except Exception:   # nothing of a failed deploy stays up; the old version serves on
                for r in starting:
                    if r in r.owner.replicas:
                        r.owner.replicas.remove(r)
                    _kill(r.handle)
                raise
            retired = []
            if old:
                for dname, st in old["deployments"].items():
                    keep = states.get(dname)
                    for r in st.replicas:
                        if keep is not st or r.version != st.version:
                            retired.append(r)
                    if keep is st:
                        st.replicas = [r for r in st.replicas if r.version == st.version]
            self.apps[name] = new_app
            if route_prefix is not None:
                self._ensure_proxy()
            self._push_routes()
            self._stop_replicas(retired)
            for st in states.values():   # replicas beyond a lowered target
                extra = [r for r in st.replicas if r.state == "running"][st.target:]
                if extra:
                    st.replicas = [r for r in st.replicas if r not in extra]
                    self._push_routes()
                    self._stop_replicas(extra)

    def _reconfigure(self, st: _DeploymentState, user_config) -> None:
        """A new user_config for running replicas: their reconfigure() runs in place."""
        refs = [(r, r.handle.reconfigure.remote(user_config)) for r in st.replicas
                if r.state == "running"]
        for r, ref in refs:
            try:
                shoal.get(ref, timeout=_READY_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - said to the caller of serve.run
                raise ServeError(f"reconfigure({user_config!r}) failed on replica {r.id} of "
                                 f"deployment {st.name!r} (application {st.app!r}): {e}") from None

    def _start_replica(self, st: _DeploymentState) -> _ReplicaState:
        from shoal.serve._replica import Replica
        opts = dict(st.config.ray_actor_options)
        opts.setdefault("num_cpus", 0)
        rid = f"{st.name}-{next(_ids)}-{secrets.token_hex(3)}"
        actor = shoal.remote(Replica).options(max_concurrency=100_000, **opts)
        handle = actor.remote(st.app, st.name, rid, st.deployment.func_or_class, st.args,
                              st.kwargs, st.config.user_config, self.secret, self.sock_dir,
                              self._table())
        r = _ReplicaState(rid, handle, st.version)
        r.ready_ref = handle.ready.remote()
        r.owner = st
        st.replicas.append(r)
        return r

    def _wait_ready(self, replicas: list) -> None:
        failed = []
        for r in replicas:
            try:
                r.path = shoal.get(r.ready_ref, timeout=_READY_TIMEOUT_S)
                r.state = "running"
                r.sentinel = r.handle.wait_stopped.remote()
                r.last_health = time.monotonic()
            except Exception as e:  # noqa: BLE001 - reported below, with the deployment
                failed.append((r, e))
        if failed:
            for r, _ in failed:
                r.owner.replicas.remove(r)
                _kill(r.handle)
            r, e = failed[0]
            raise ServeError(f"replica of deployment {r.owner.name!r} (application "
                             f"{r.owner.app!r}) failed to start: {e}")

    def _stop_replicas(self, replicas: list) -> None:
        """Drain then kill replicas already removed from every route table."""
        refs = []
        for r in replicas:
            r.state = "stopping"
            refs.append((r, r.handle.drain.remote(r.owner.config.graceful_shutdown_timeout_s)))
        for r, ref in refs:
            try:
                shoal.get(ref, timeout=r.owner.config.graceful_shutdown_timeout_s + 5)
            except Exception:  # noqa: BLE001 - a dead replica needs no drain
                pass
            _kill(r.handle)
            r.state = "stopped"

    # ------------------------------------------------------------ routes
    def _table(self) -> dict:
        table = {}
        for app, a in self.apps.items():
            for st in a["deployments"].values():
                table[(app, st.name)] = {
                    "replicas": [(r.id, r.path) for r in st.replicas if r.state == "running"],
                    "max_ongoing_requests": st.config.max_ongoing_requests,
                    "max_queued_requests": st.config.max_queued_requests,
                    "secret": self.secret, "idempotent": st.idempotent}
        return table

    def _routes(self) -> dict:
        return {a["route_prefix"]: (name, a["ingress"]) for name, a in self.apps.items()
                if a["route_prefix"] is not None}

    def _push_routes(self) -> None:
        """Install the table in every router (driver, proxy, replicas) and wait for each;
        replicas of ingress deployments answer HTTP, the proxy only while none does."""
        table = self._table()
        routes = self._routes()
        loop = registry.get_loop()
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (registry.update(table), done.set()))
        serving = [r for a in self.apps.values() for st in a["deployments"].values()
                   if st.http and self.proxy is not None
                   for r in st.replicas if r.state == "running"]
        peers = ([self.proxy_paths[1]] if self.proxy_paths else []) + [r.path for r in serving]
        front = None
        if self.proxy_paths is not None:
            front = {"routes": routes, "peers": peers, "lend_path": self.proxy_paths[0],
                     "body_limit": self.body_limit}
        refs = []
        for a in self.apps.values():
            for st in a["deployments"].values():
                refs += [(r, r.handle.update_routes.remote(table, front if r in serving
                                                           else None))
                         for r in st.replicas if r.state == "running"]
        done.wait(10)
        for r, ref in refs:
            try:
                r.serves_http = bool(shoal.get(ref, timeout=10))
            except Exception:  # noqa: BLE001 - a replica that died is replaced by the loop
                r.serves_http = False
        if self.proxy is not None:
            accept = not any(r.serves_http for r in serving)
            try:
                shoal.get(self.proxy.update_routes.remote(table, routes, peers, accept),
                          timeout=10)
            except Exception as e:  # noqa: BLE001 - said, and tried again on the next change
                import sys
                sys.stderr.write(f"[shoal.serve] the proxy did not take new routes: {e!r}\n")

    # ------------------------------------------------------------ delete / shutdown
    def delete(self, name: str) -> None:
        with self.lock:
            a = self.apps.pop(name, None)
            if a is None:
                return
            self._push_routes()
            self._stop_replicas([r for st in a["deployments"].values() for r in st.replicas
                                 if r.state in ("running", "starting")])

    def shutdown(self) -> None:
        for name in list(self.apps):
            self.delete(name)
        self.stop_event.set()
        self.thread.join(5)
        if self.proxy is not None:
            try:
                shoal.get(self.proxy.stop.remote(), timeout=15)
            except Exception:  # noqa: BLE001 - killed below anyway
                pass
            _kill(self.proxy)
            self.proxy = None
        loop = registry.loop
        if loop is not None and not registry.in_loop():
            loop.call_soon_threadsafe(registry.close)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        with self.lock:
            out = {"proxy": {"host": self.host, "port": self.port} if self.proxy else None,
                   "applications": {}}
            for name, a in self.apps.items():
                deps = {}
                for st in a["deployments"].values():
                    deps[st.name] = {
                        "target_replicas": st.target,
                        "replicas": [{"id": r.id, "state": r.state, "version": r.version,
                                      "http": r.serves_http} for r in st.replicas],
                        "status": "HEALTHY" if sum(r.state == "running" for r in st.replicas)
                        >= st.target else "UPDATING"}
                out["applications"][name] = {"route_prefix": a["route_prefix"],
                                             "ingress": a["ingress"], "deployments": deps}
            return out

    def _publish(self) -> None:
        """Show each deployment in shoal.state (the dashboard's serving page, metrics); an
        ingress deployment with a route also its HTTP requests/s and latency."""
        with self.lock:
            paths = ([self.proxy_paths[1]] if self.proxy_paths else []) + [
                r.path for a in self.apps.values() for st in a["deployments"].values()
                if st.http for r in st.replicas if r.state == "running" and r.path]
        try:
            self.traffic.add(gather(registry.get_loop(), paths, self.secret))
        except Exception:  # noqa: BLE001 - figures late this second: the next ask has them
            pass
        now = time.monotonic()
        for app, a in self.status()["applications"].items():
            for name, d in a["deployments"].items():
                running = sum(r["state"] == "running" for r in d["replicas"])
                metrics = {"replicas_running": running, "target_replicas": d["target_replicas"]}
                extra = {}
                if a["ingress"] == name and a["route_prefix"] is not None:
                    figures, extra["latency_histogram"] = self.traffic.figures(app, now)
                    metrics.update(figures)
                shoal.state.report_run(
                    "serve", f"{app}/{name}", metrics,
                    status=d["status"], route_prefix=a["route_prefix"],
                    ingress=a["ingress"] == name, **extra)

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self.stop_event.is_set():
            if not shoal.is_initialized():   # shoal.shutdown() without serve.shutdown()
                return
            try:
                with self.lock:
                    self._reconcile()
                now = time.monotonic()
                if now - self._published >= 1.0:
                    self._published = now
                    self._publish()
            except Exception as e:  # noqa: BLE001 - keep the controller alive; say why
                import sys
                sys.stderr.write(f"[shoal.serve] controller step failed: {e!r}\n")
            self.stop_event.wait(0.1)

    def _reconcile(self) -> None:
        now = time.monotonic()
        changed = False
        dead = []
        for a in self.apps.values():
            for st in a["deployments"].values():
                running = [r for r in st.replicas if r.state == "running"]
                if running:
                    ready, _ = shoal.wait([r.sentinel for r in running],
                                          num_returns=len(running), timeout=0)
                    ready_ids = {ref.id for ref in ready}
                    dead += [r for r in running if r.sentinel.id in ready_ids]
                for r in running:
                    if r in dead:
                        continue
                    period = st.config.health_check_period_s
                    if r.health_ref is None and now - r.last_health >= period:
                        r.health_ref, r.health_sent = r.handle.check_health.remote(), now
                    elif r.health_ref is not None:
                        ok, _ = shoal.wait([r.health_ref], timeout=0)
                        if ok:
                            try:
                                shoal.get(r.health_ref)
                                r.last_health = now
                            except Exception:  # noqa: BLE001 - unhealthy: replaced
                                dead.append(r)
                            r.health_ref = None
                        elif now - r.health_sent > st.config.health_check_timeout_s:
                            dead.append(r)
                if st.config.autoscaling_config is not None:
                    changed |= self._autoscale(st, now)
        for r in dead:
            r.state = "dead"
            r.owner.replicas.remove(r)
            _kill(r.handle)
            import sys
            sys.stderr.write(f"[shoal.serve] replica {r.id} of {r.owner.app}/{r.owner.name} "
                             "died or failed its health check; starting a new one\n")
        if dead:
            self._push_routes()
        for a in self.apps.values():
            for st in a["deployments"].values():
                have = sum(r.state in ("running", "starting") for r in st.replicas)
                if have < st.target:
                    self._wait_ready([self._start_replica(st) for _ in range(st.target - have)])
                    changed = True
                elif have > st.target:
                    extra = [r for r in st.replicas if r.state == "running"][st.target:]
                    st.replicas = [r for r in st.replicas if r not in extra]
                    self._push_routes()
                    self._stop_replicas(extra)
        if changed:
            self._push_routes()

    def _autoscale(self, st: _DeploymentState, now: float) -> bool:
        cfg = st.config.autoscaling_config
        if now - st.last_scale_check < cfg.metrics_interval_s:
            return False
        st.last_scale_check = now
        running = [r for r in st.replicas if r.state == "running"]
        refs = [r.handle.stats.remote() for r in running]
        ongoing = 0
        for ref in refs:
            try:
                got = shoal.get(ref, timeout=2)
                ongoing += got["ongoing"] + got.get("waiting", 0)
            except Exception:  # noqa: BLE001 - a dead replica is handled by the sentinel
                pass
        ongoing += self._queued(st)
        want = cfg.desired(ongoing, len(running))
        if want > st.target:
            st.below_since = None
            st.above_since = st.above_since or now
            if now - st.above_since >= cfg.upscale_delay_s:
                st.target, st.above_since = want, None
        elif want < st.target:
            st.above_since = None
            st.below_since = st.below_since or now
            if now - st.below_since >= cfg.downscale_delay_s:
                st.target, st.below_since = want, None
        else:
            st.above_since = st.below_since = None
        return False

    def _queued(self, st) -> int:
        key = f"{st.app}/{st.name}"
        n = registry.queued().get(key, 0)
        if self.proxy is not None:
            try:
                n += shoal.get(self.proxy.stats.remote(), timeout=2)["queued"].get(key, 0)
            except Exception:  # noqa: BLE001 - a missing figure is no demand
                pass
        return n


def _version(node: Application, args, kwargs) -> str:
    cfg = node.deployment.config
    # user_config is left out: a new one is applied in place (reconfigure), no restart
    blob = cloudpickle.dumps((node.deployment.func_or_class, args, kwargs,
                              cfg.ray_actor_options))
    return hashlib.sha1(blob).hexdigest()[:12]


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - e.g. arrays: compare what they pickle to
        return cloudpickle.dumps(a) == cloudpickle.dumps(b)


def _kill(handle) -> None:
    try:
        shoal.kill(handle)
    except Exception:  # noqa: BLE001 - already gone
        pass
