"""Resource accounting for one node and its placement-group bundles."""
from __future__ import annotations

from shoal.exceptions import InfeasibleResourceError

_EPS = 1e-9
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def demand_of(num_cpus=None, num_gpus=None, resources=None, memory=None, default_cpus=1.0) -> dict:
    d = {"CPU": float(default_cpus if num_cpus is None else num_cpus)}
    if num_gpus:
        d["GPU"] = float(num_gpus)
    if memory:
        d["memory"] = float(memory)
    for k, v in (resources or {}).items():
        if k in ("CPU", "GPU"):
            raise ValueError(f"use num_cpus/num_gpus for {k!r}, not resources={{{k!r}: ...}}")
        d[k] = float(v)
    for k, v in d.items():
        if v < 0:
            raise ValueError(f"resource {k!r} must be >= 0, got {v}")
    return {k: v for k, v in d.items() if v > 0}


class Pool:
    """Available amounts of each resource; acquire/release are all-or-nothing."""

    def __init__(self, total: dict):
        self.total = dict(total)
        self.avail = dict(total)

    def fits(self, demand: dict) -> bool:
        avail = self.avail
        for k, v in demand.items():
            if avail.get(k, 0.0) + _EPS < v:
                return False
        return True

    def feasible(self, demand: dict) -> bool:
        return all(self.total.get(k, 0.0) + _EPS >= v for k, v in demand.items())

    def acquire(self, demand: dict, force: bool = False) -> bool:
        if not force and not self.fits(demand):
            return False
        for k, v in demand.items():
            self.avail[k] = self.avail.get(k, 0.0) - v
        return True

    def release(self, demand: dict) -> None:
        for k, v in demand.items():
            self.avail[k] = self.avail.get(k, 0.0) + v


class PlacementGroupState:
    """A gang reservation: every bundle is reserved, or none is."""

    def __init__(self, pg_id, bundles: list[dict], strategy: str, name: str = ""):
        self.id = pg_id
        self.bundles = [dict(b) for b in bundles]
        self.strategy = strategy
        self.name = name
        self.pools: list[Pool] | None = None  # set when reserved
        self.removed = False

    def check_feasible(self, node: Pool, num_nodes: int = 1) -> None:
        if not self.bundles:
            raise ValueError("a placement group needs at least one bundle")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown placement strategy {self.strategy!r}; use one of {STRATEGIES}")
        for i, b in enumerate(self.bundles):
            if not b or all(v == 0 for v in b.values()):
                raise ValueError(f"bundle {i} of the placement group is empty: {b!r}")
            if not node.feasible(b):
                raise InfeasibleResourceError(
                    f"bundle {i} {b!r} does not fit on any node (a node has {node.total!r}); "
                    "ask for less or add nodes")
        if self.strategy == "STRICT_SPREAD" and len(self.bundles) > num_nodes:
            raise InfeasibleResourceError(
                f"STRICT_SPREAD needs {len(self.bundles)} nodes, the cluster has {num_nodes}; "
                "use SPREAD or PACK, or add nodes")
        total: dict = {}
        for b in self.bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        if num_nodes == 1 and not node.feasible(total):
            raise InfeasibleResourceError(
                f"the placement group needs {total!r} in all, the cluster has {node.total!r}")

    def try_reserve(self, node: Pool) -> bool:
        total: dict = {}
        for b in self.bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        if not node.acquire(total):
            return False
        self.pools = [Pool(b) for b in self.bundles]
        return True

    def unreserve(self, node: Pool) -> None:
        if self.pools is None:
            return
        for b in self.bundles:
            node.release(b)
        self.pools = None

    def pick(self, demand: dict, bundle_index: int) -> Pool | None:
        """The bundle pool a task or actor with ``demand`` can use now."""
        if self.pools is None:
            return None
        if bundle_index >= 0:
            p = self.pools[bundle_index]
            return p if p.fits(demand) else None
        for p in self.pools:
            if p.fits(demand):
                return p
        return None

    def feasible_in(self, demand: dict, bundle_index: int) -> bool:
        if bundle_index >= len(self.bundles):
            raise ValueError(f"placement group has {len(self.bundles)} bundles, "
                             f"bundle index {bundle_index} is out of range")
        if bundle_index >= 0:
            return Pool(self.bundles[bundle_index]).feasible(demand)
        return any(Pool(b).feasible(demand) for b in self.bundles)
