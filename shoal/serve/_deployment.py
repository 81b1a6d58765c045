"""``@serve.deployment``, ``.bind()`` and the application graph it builds."""
from __future__ import annotations

import inspect

from shoal.serve._config import AutoscalingConfig, DeploymentConfig

_OPTION_NAMES = {"num_replicas", "max_ongoing_requests", "max_queued_requests",
                 "ray_actor_options", "health_check_period_s", "health_check_timeout_s",
                 "graceful_shutdown_timeout_s", "autoscaling_config", "user_config"}


class Deployment:
    """A class or function to be run as replicas; ``.bind(*args)`` makes an Application.

    Made by ``@serve.deployment``; ``.options(**opts)`` returns a copy with
    other settings (the same names as the decorator, plus ``name``).
    """

    def __init__(self, func_or_class, name: str, config: DeploymentConfig):
        self.func_or_class = func_or_class
        self.name = name
        self.config = config

    def bind(self, *args, **kwargs) -> "Application":
        """This deployment with the constructor arguments its replicas get.

        Arguments may be other bound deployments: each replica receives a
        DeploymentHandle to them (composition).
        """
        if not inspect.isclass(self.func_or_class) and (args or kwargs):
            raise TypeError(f"function deployment {self.name} takes no bind() arguments; "
                            "make it a class to give its replicas constructor arguments")
        return Application(self, args, kwargs)

    def options(self, name: str | None = None, **opts) -> "Deployment":
        """A copy with other settings, e.g. ``.options(num_replicas=4)``."""
        _check_options(opts, self.name)
        return Deployment(self.func_or_class, name or self.name, self.config.with_options(**opts))

    def __call__(self, *a, **k):
        raise TypeError(f"deployment {self.name} cannot be called directly; deploy it with "
                        f"serve.run({self.name}.bind(...)) and call it through the handle")

    def __repr__(self):
        return f"Deployment(name={self.name!r})"


class Application:
    """A bound deployment: the root of an application graph, passed to ``serve.run``."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict):
        self.deployment = deployment
        self.args = args
        self.kwargs = kwargs

    def deployments(self) -> list["Application"]:
        """Every bound deployment of the graph, children before their parents."""
        out: list = []
        seen: dict = {}

        def visit(node):
            for child in _children(node.args, node.kwargs):
                visit(child)
            name = node.deployment.name
            other = seen.get(name)
            if other is not None and other is not node:
                raise ValueError(f"two different deployments are named {name!r} in one "
                                 f"application; give one another name with "
                                 f".options(name=...)")
            if other is None:
                seen[name] = node
                out.append(node)
        visit(self)
        return out

    def __repr__(self):
        return f"Application({self.deployment.name})"


def _children(args, kwargs):
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, Application):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _children(v, {})
        elif isinstance(v, dict):
            yield from _children((), v)


def replace_bound(value, to_handle):
    """``value`` with each Application inside replaced by ``to_handle(app)``."""
    if isinstance(value, Application):
        return to_handle(value)
    if isinstance(value, list):
        return [replace_bound(v, to_handle) for v in value]
    if isinstance(value, tuple):
        return tuple(replace_bound(v, to_handle) for v in value)
    if isinstance(value, dict):
        return {k: replace_bound(v, to_handle) for k, v in value.items()}
    return value


def _check_options(opts: dict, what: str) -> None:
    bad = set(opts) - _OPTION_NAMES
    if bad:
        raise ValueError(f"unknown deployment option(s) {sorted(bad)} for {what}; "
                         f"allowed: {sorted(_OPTION_NAMES)}")


def deployment(_func_or_class=None, *, name: str | None = None, num_replicas=None,
               max_ongoing_requests: int | None = None, max_queued_requests: int | None = None,
               ray_actor_options: dict | None = None, health_check_period_s: float | None = None,
               health_check_timeout_s: float | None = None,
               graceful_shutdown_timeout_s: float | None = None,
               autoscaling_config: dict | AutoscalingConfig | None = None, user_config=None):
    """Make a class or function a Deployment (Ray Serve's ``@serve.deployment``).

    Args:
        name: the deployment's name (default: the class or function name).
        num_replicas: how many replicas; ``"auto"`` autoscales between 1 and 100.
        max_ongoing_requests: requests one replica holds at once (default 5).
        max_queued_requests: requests waiting for a replica beyond which callers get
            BackPressureError (HTTP 503); -1 (default) for no limit.
        ray_actor_options: resources of each replica's actor (``num_cpus`` defaults
            to 0 so a laptop holds several replicas; ``num_gpus``, ``resources``...).
        health_check_period_s, health_check_timeout_s: how often the replica's
            ``check_health()`` runs and how long it may take before the replica is replaced.
        graceful_shutdown_timeout_s: how long a stopping replica may finish its requests.
        autoscaling_config: a dict or AutoscalingConfig (min/max replicas, target
            ongoing requests per replica, delays).
        user_config: passed to the replica's ``reconfigure(user_config)`` if it has one.
    """
    opts = {k: v for k, v in dict(
        num_replicas=num_replicas, max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests, ray_actor_options=ray_actor_options,
        health_check_period_s=health_check_period_s,
        health_check_timeout_s=health_check_timeout_s,
        graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
        autoscaling_config=autoscaling_config, user_config=user_config).items() if v is not None}
    if num_replicas is not None and autoscaling_config is not None and num_replicas != "auto":
        raise ValueError("give num_replicas or autoscaling_config, not both")

    def make(obj):
        if not callable(obj):
            raise TypeError(f"@serve.deployment applies to a class or a function, not "
                            f"{type(obj).__name__}")
        return Deployment(obj, name or obj.__name__, DeploymentConfig().with_options(**opts))
    return make(_func_or_class) if _func_or_class is not None else make
