"""Membership of an elastic group: generations published in a key-value store.

Whoever owns an elastic job's membership (``shoal.train.Trainer`` with a
``(min, max)`` range, ``shoal launch -n MIN:MAX``) publishes each change as
a new *generation* ``g``: the list of worker ids that form the group, in
rank order (survivors first, so rank 0 always holds committed state when
anyone does). Workers re-form their group from it (shoal.train's elastic
``run``). Keys under ``<prefix>/``:

    ready/<wid>      the worker is ready to join (its model and data are built)
    gen              the latest generation number
    gen/<g>          pickle {"members": [...], "where": {wid: (node, pid)}}
    fail/<g>/<wid>   a worker saw generation g's group break (its message)
    resumed/<g>      pickle {"step": ..., "time": ...}: rank 0 synced generation g

Only the store is needed here (no torch), so a launcher can own a job's
membership without importing a training framework.
"""
from __future__ import annotations

import pickle

from shoal.exceptions import ShoalError


class Generations:
    """The owner's side of the protocol: publish generations, read what workers recorded.

    Args:
        store: the job's key-value store (authenticated; shared with the workers).
        prefix: the job's key prefix (every key above lives under it).
    """

    def __init__(self, store, prefix: str):
        self.store, self.prefix = store, prefix
        self.generation = -1
        self.members: list[int] = []

    def publish(self, members: list[int], where: dict) -> int:
        """Make ``members`` (worker ids, in rank order) the next generation; returns its number."""
        g = self.generation + 1
        rec = {"members": list(members), "where": {w: where[w] for w in members}}
        self.store.set(f"{self.prefix}/gen/{g}", pickle.dumps(rec, protocol=5))
        self.store.set(f"{self.prefix}/gen", str(g))
        self.generation, self.members = g, list(members)
        return g

    def ready(self) -> set[int]:
        """Workers waiting to join (or already members)."""
        pre = f"{self.prefix}/ready/"
        return {int(k[len(pre):]) for k in self.store.keys(pre)}

    def failures(self) -> dict[int, str]:
        """Workers that reported the current generation's group broken: {wid: message}."""
        pre = f"{self.prefix}/fail/{self.generation}/"
        out = {}
        for k in self.store.keys(pre):
            try:
                out[int(k[len(pre):])] = self.store.get(k, timeout=1).decode(errors="replace")
            except (ValueError, ShoalError):
                continue
        return out

    def resumed(self, g: int) -> dict | None:
        """Rank 0's record of resuming generation ``g`` (step, time, world size), or None yet."""
        key = f"{self.prefix}/resumed/{g}"
        if not self.store.check([key]):
            return None
        return pickle.loads(self.store.get(key, timeout=1))

    def clear(self) -> None:
        """Delete every key of the protocol (at the end of the job)."""
        for k in self.store.keys(self.prefix + "/"):
            self.store.delete(k)


def describe_change(ch: dict) -> str:
    """One line about a membership change record (what an elastic job prints).

    ``ch`` holds generation, reason, left ([{worker, rank, why}]), joined,
    world_size, previous_world_size, resumed_step and took_s.
    """
    if ch["reason"] == "start":
        return (f"started with {ch['world_size']} workers (generation {ch['generation']}) "
                f"in {ch['took_s']}s")
    parts = []
    if ch["left"]:
        parts.append("left: " + ", ".join(f"rank {x['rank']} (worker {x['worker']}"
                                          + (f", {x['why']}" if x["why"] else "") + ")"
                                          for x in ch["left"]))
    if ch["joined"]:
        parts.append("joined: " + ", ".join(f"worker {w}" for w in ch["joined"]))
    return (f"membership change {ch['generation']}: " + "; ".join(parts)
            + f"; world size {ch['previous_world_size']} -> {ch['world_size']}; resumed from "
              f"step {ch['resumed_step']} in {ch['took_s']}s")


__all__ = ["Generations", "describe_change"]
