"""serve.run / delete / status / shutdown: the driver's verbs."""
from __future__ import annotations

import threading

import shoal
from shoal.serve._deployment import Application, Deployment
from shoal.serve._handle import DeploymentHandle

DEFAULT_BODY_LIMIT = 10 * 1024 * 1024
_controller = None
_lock = threading.Lock()


def _get_controller(host: str = "127.0.0.1", port: int = 8000,
                    body_limit: int = DEFAULT_BODY_LIMIT, create: bool = True):
    global _controller
    with _lock:
        if _controller is None and create:
            if not shoal.is_initialized():
                shoal.init()
            from shoal.serve._controller import Controller
            _controller = Controller(host, port, body_limit)
        return _controller


def start(host: str = "127.0.0.1", port: int = 8000,
          max_body_bytes: int = DEFAULT_BODY_LIMIT) -> None:
    """Start serve with these HTTP settings (``serve.run`` does it with its own).

    ``host`` is 127.0.0.1 unless you say otherwise ("0.0.0.0" serves every
    interface); ``port=0`` picks a free port (``serve.status()`` names it);
    requests with bodies over ``max_body_bytes`` get 413.
    """
    c = _get_controller(host, port, max_body_bytes)
    if (c.host, c.port, c.body_limit) != (host, port, max_body_bytes) and port != 0:
        if c.proxy is not None or (c.host, c.body_limit) != (host, max_body_bytes):
            raise ValueError(f"serve already runs with host={c.host!r} port={c.port}; call "
                             "serve.shutdown() first to change them")
        c.port = port


def run(target, *, name: str = "default", route_prefix: str | None = "/",
        host: str = "127.0.0.1", port: int = 8000, blocking: bool = False,
        max_body_bytes: int = DEFAULT_BODY_LIMIT) -> DeploymentHandle:
    """Deploy an application and return a handle to its ingress deployment.

    Args:
        target: a bound deployment (``Model.bind(...)``), the root of the graph.
        name: the application's name; running a new version under the same name
            rolls its replicas over without failing requests.
        route_prefix: where HTTP requests reach it ("/" by default); None serves
            no HTTP (handles only).
        host, port: where the HTTP proxy listens (loopback unless told otherwise;
            0 picks a free port). Set by the first application.
        blocking: serve until Ctrl-C, then drain and shut down.
    """
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise TypeError(f"serve.run takes a bound deployment (MyDeployment.bind(...)), got "
                        f"{type(target).__name__}")
    if route_prefix is not None and (not route_prefix.startswith("/") or
                                     (route_prefix != "/" and route_prefix.endswith("/"))):
        raise ValueError(f"route_prefix must start with '/' and not end with one, got "
                         f"{route_prefix!r}")
    c = _get_controller(host, port, max_body_bytes)
    if c.proxy is None:
        start(host, port, max_body_bytes)
    c.deploy(name, target, route_prefix)
    handle = DeploymentHandle(target.deployment.name, name)
    if blocking:
        import time
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            shutdown()
    return handle


def delete(name: str) -> None:
    """Remove an application: its routes go, its replicas drain and stop."""
    c = _get_controller(create=False)
    if c is not None:
        c.delete(name)


def status() -> dict:
    """Applications, their deployments and replicas (states, versions), and the proxy."""
    c = _get_controller(create=False)
    return c.status() if c is not None else {"proxy": None, "applications": {}}


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to a running application's ingress deployment."""
    c = _get_controller(create=False)
    if c is None or name not in c.apps:
        raise KeyError(f"no application named {name!r} is running; see serve.status()")
    return DeploymentHandle(c.apps[name]["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    """A handle to one deployment of a running application."""
    c = _get_controller(create=False)
    if c is None or app_name not in c.apps or \
            deployment_name not in c.apps[app_name]["deployments"]:
        raise KeyError(f"no deployment {deployment_name!r} in a running application "
                       f"{app_name!r}; see serve.status()")
    return DeploymentHandle(deployment_name, app_name)


def shutdown() -> None:
    """Drain and stop every application, the proxy and the controller."""
    global _controller
    with _lock:
        c, _controller = _controller, None
    if c is not None:
        c.shutdown()


def idempotent(fn):
    """Mark a deployment method safe to run twice: when its replica dies mid-request
    the request is retried once on another replica."""
    fn._shoal_idempotent = True
    return fn
