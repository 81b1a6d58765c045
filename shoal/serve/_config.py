"""A deployment's settings: dataclasses with defaults and validation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class AutoscalingConfig:
    """Scale a deployment on ongoing requests per replica (Ray Serve's names).

    ``target_ongoing_requests`` is what each replica should hold on average;
    the replica count moves between ``min_replicas`` and ``max_replicas``
    after the demand has stayed above (below) for ``upscale_delay_s``
    (``downscale_delay_s``).
    """

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 60.0
    metrics_interval_s: float = 0.5

    def __post_init__(self):
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"autoscaling_config needs 0 <= min_replicas <= max_replicas and "
                             f"max_replicas >= 1, got min_replicas={self.min_replicas}, "
                             f"max_replicas={self.max_replicas}")
        if self.initial_replicas is not None and not (
                self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError(f"autoscaling_config.initial_replicas={self.initial_replicas} must "
                             f"lie between min_replicas and max_replicas")
        if self.target_ongoing_requests <= 0:
            raise ValueError("autoscaling_config.target_ongoing_requests must be > 0, got "
                             f"{self.target_ongoing_requests}")
        if min(self.upscale_delay_s, self.downscale_delay_s, self.metrics_interval_s) < 0:
            raise ValueError("autoscaling_config delays must be >= 0")

    @classmethod
    def of(cls, value) -> "AutoscalingConfig | None":
        if value is None or isinstance(value, AutoscalingConfig):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            bad = set(value) - known
            if bad:
                raise ValueError(f"unknown autoscaling_config key(s) {sorted(bad)}; "
                                 f"allowed: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"autoscaling_config must be a dict or AutoscalingConfig, got "
                        f"{type(value).__name__}")

    def desired(self, ongoing_total: float, current: int) -> int:
        """The replica count that holds ``ongoing_total`` requests at the target."""
        want = math.ceil(ongoing_total / self.target_ongoing_requests) if ongoing_total else 0
        return max(self.min_replicas, min(self.max_replicas, want if want else
                                          (self.min_replicas if current else 0)))


@dataclass(frozen=True)
class DeploymentConfig:
    """How a deployment runs: replicas, limits, health checks, shutdown."""

    num_replicas: int = 1
    max_ongoing_requests: int = 5
    max_queued_requests: int = -1
    ray_actor_options: dict = field(default_factory=dict)
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    autoscaling_config: AutoscalingConfig | None = None
    user_config: object = None

    def __post_init__(self):
        if not isinstance(self.num_replicas, int) or self.num_replicas < 0:
            raise ValueError(f"num_replicas must be an int >= 0, got {self.num_replicas!r}")
        if not isinstance(self.max_ongoing_requests, int) or self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be an int >= 1, got "
                             f"{self.max_ongoing_requests!r}")
        if not isinstance(self.max_queued_requests, int) or self.max_queued_requests < -1:
            raise ValueError(f"max_queued_requests must be -1 (no limit) or an int >= 0, got "
                             f"{self.max_queued_requests!r}")
        allowed = {"num_cpus", "num_gpus", "resources", "memory", "runtime_env"}
        bad = set(self.ray_actor_options) - allowed
        if bad:
            raise ValueError(f"unknown ray_actor_options {sorted(bad)}; allowed: {sorted(allowed)}")
        for name in ("health_check_period_s", "health_check_timeout_s",
                     "graceful_shutdown_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def with_options(self, **opts) -> "DeploymentConfig":
        if "autoscaling_config" in opts:
            opts["autoscaling_config"] = AutoscalingConfig.of(opts["autoscaling_config"])
        if opts.get("num_replicas") == "auto":
            opts["num_replicas"] = 1
            opts.setdefault("autoscaling_config", AutoscalingConfig(min_replicas=1,
                                                                    max_replicas=100))
        return replace(self, **opts)

    def initial_replicas(self) -> int:
        a = self.autoscaling_config
        if a is None:
            return self.num_replicas
        return a.initial_replicas if a.initial_replicas is not None else max(a.min_replicas, 1)
