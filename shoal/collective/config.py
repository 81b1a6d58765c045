"""Configuration of the native backend (dataclasses with defaults and validation)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


@dataclass
class FusionConfig:
    """Tensor fusion of async allreduces (as Horovod's).

    Async allreduces of tensors smaller than ``threshold_bytes`` that are
    submitted within ``cycle_time_s`` of each other are packed into one
    buffer (up to ``threshold_bytes`` in all) and reduced in one operation.
    ``enabled=False`` runs each op on its own. Environment overrides:
    SHOAL_FUSION_THRESHOLD (bytes), SHOAL_CYCLE_TIME (milliseconds).
    """

    threshold_bytes: int = field(default_factory=lambda: _env_int("SHOAL_FUSION_THRESHOLD", 64 << 20))
    cycle_time_s: float = field(default_factory=lambda: _env_float("SHOAL_CYCLE_TIME", 1.0) / 1000)
    enabled: bool = True

    def __post_init__(self):
        if self.threshold_bytes < 0:
            raise ValueError(f"FusionConfig.threshold_bytes must be >= 0, got {self.threshold_bytes}")
        if self.cycle_time_s < 0:
            raise ValueError(f"FusionConfig.cycle_time_s must be >= 0, got {self.cycle_time_s}")


@dataclass
class NativeConfig:
    """Settings of the native backend.

    Args:
        segment_bytes: shared-memory staging per rank and half; large buffers
            move in segments of this size (memory used: 2 x local ranks x this).
        p2p_ring_bytes: send/recv between two ranks of one host go through a
            shared-memory ring of this size per ordered pair (a larger message
            streams through it); 0 sends them over TCP like ranks on other
            hosts. Memory is taken only for pairs that send. The lowest rank
            of a host decides for the host, and takes 0 where every pair's
            ring would not fit in the free space of /dev/shm.
        small_bytes: allreduces up to this size use the one-shot (latency)
            algorithm, larger ones the reduce-scatter + allgather one.
        tcp_small_bytes: across hosts, allreduces up to this size use
            recursive doubling (when the number of hosts is a power of two),
            larger ones a ring.
        listen_host: address this rank accepts TCP connections on and
            advertises to its peers. Default: SHOAL_COLLECTIVE_HOST, else
            127.0.0.1 when every rank is on this host, else the address the
            store says other hosts reach this process at (on Ray: the node
            IP Ray reports).
        fusion: tensor fusion settings.
        cuda: where collectives on CUDA tensors run: "auto" (NCCL when every
            rank has a GPU of its own, else staged through host memory and
            reduced like CPU tensors), "nccl" or "host". Default:
            SHOAL_COLLECTIVE_CUDA, else "auto".
        timeline: a path prefix; each rank writes ``<prefix>.<name>.rank<r>.json``
            (Chrome trace: open in chrome://tracing or Perfetto). Default:
            SHOAL_TIMELINE, else no timeline.
    """

    segment_bytes: int = 2 << 20
    p2p_ring_bytes: int = 1 << 20
    small_bytes: int = 64 << 10
    tcp_small_bytes: int = 64 << 10
    listen_host: str | None = None
    fusion: FusionConfig = field(default_factory=FusionConfig)
    timeline: str | None = field(default_factory=lambda: os.environ.get("SHOAL_TIMELINE") or None)
    cuda: str = field(default_factory=lambda: os.environ.get("SHOAL_COLLECTIVE_CUDA") or "auto")

    def __post_init__(self):
        if self.cuda not in ("auto", "nccl", "host"):
            raise ValueError(f"NativeConfig.cuda must be 'auto', 'nccl' or 'host', got {self.cuda!r}")
        if self.segment_bytes < 4096:
            raise ValueError(f"NativeConfig.segment_bytes must be at least 4096, got {self.segment_bytes}")
        if self.p2p_ring_bytes and self.p2p_ring_bytes < 4096:
            raise ValueError("NativeConfig.p2p_ring_bytes must be 0 (send/recv over TCP) or at least "
                             f"4096, got {self.p2p_ring_bytes}")
        if self.small_bytes < 0 or self.tcp_small_bytes < 0:
            raise ValueError("NativeConfig.small_bytes and tcp_small_bytes must be >= 0")
