"""A worker's side of an elastic gang's membership (shoal.collective.membership).

The driver (``Trainer.fit``, or ``shoal launch`` in its elastic form) owns
the membership and publishes generations; a worker joins the latest generation that lists it and forms the group
``<name>-g<g>``; a watcher thread polls ``gen`` so that ``State.commit()``
learns of a newer generation without a store round trip on the step.
"""
from __future__ import annotations

import pickle
import threading
import time

from shoal.exceptions import CollectiveError, ShoalError

_POLL_S = 0.05


class WorkerRemovedError(ShoalError):
    """The driver left this worker out of the gang's newest generation."""


class MembershipLink:
    """A worker's side of the protocol: join a generation, watch for newer ones."""

    def __init__(self, store, prefix: str, wid: int, group_name: str, backend: str,
                 timeout: float, join_timeout: float):
        self.store, self.prefix, self.wid = store, prefix, wid
        self.group_name, self.backend = group_name, backend
        self.timeout, self.join_timeout = timeout, join_timeout
        self.generation = -1
        self.members: list[int] = []
        self.where: dict = {}
        self.newer = False              # set by the watcher: a newer generation exists
        self.launched = False           # a process of `shoal launch` (not a Trainer's actor)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="shoal-elastic-watch",
                                         daemon=True)
        self._watcher.start()

    def latest(self) -> int:
        key = f"{self.prefix}/gen"
        if not self.store.check([key]):
            return -1
        return int(self.store.get(key, timeout=self.timeout))

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_S):
            try:
                if self.latest() > self.generation >= 0:
                    self.newer = True
            except Exception:  # noqa: BLE001, S112 - the store went away: the run is ending
                continue

    def report_failure(self, message: str) -> None:
        """Tell the driver this worker saw the current group break."""
        if self.generation >= 0:
            self.store.set(f"{self.prefix}/fail/{self.generation}/{self.wid}", message.encode())

    def report_raised(self, commits: int) -> None:
        """Tell the driver this worker's loop raised with ``commits`` steps committed (so
        the driver knows whether losing every worker loses trained state)."""
        self.store.set(f"{self.prefix}/raised/{self.wid}", str(int(commits)).encode())

    def join(self, min_generation: int = 0):
        """Form the group of the latest generation >= ``min_generation`` listing this worker.

        Returns (communicator, rank, world_size). Raises WorkerRemovedError
        when the newest generation leaves this worker out, CollectiveError
        when no such generation appears within ``join_timeout`` seconds.
        """
        from shoal.train._group import form_group
        deadline = time.monotonic() + self.join_timeout
        self.store.set(f"{self.prefix}/ready/{self.wid}", b"1")
        while True:
            g = self.latest()
            if g >= min_generation:
                rec = pickle.loads(self.store.get(f"{self.prefix}/gen/{g}", timeout=self.timeout))
                if self.wid not in rec["members"]:
                    if self.generation >= 0:    # it was a member: the driver dropped it
                        raise WorkerRemovedError(
                            f"worker {self.wid} is not in generation {g} of the gang "
                            f"(members {rec['members']}): the driver removed it")
                    min_generation = g + 1      # a new worker: wait until it is added
                    continue
                rank, world = rec["members"].index(self.wid), len(rec["members"])
                self.generation, self.members, self.where = g, rec["members"], rec["where"]
                self.newer = False
                try:
                    comm = form_group(rank, world, self.store, f"{self.group_name}-g{g}",
                                      backend=self.backend, timeout=self.timeout)
                except CollectiveError as e:
                    if self.latest() > g:       # a member died while forming: take the next one
                        min_generation = g + 1
                        continue
                    self.report_failure(f"forming generation {g}: {e}")
                    min_generation = g + 1
                    if time.monotonic() > deadline:
                        raise
                    continue
                return comm, rank, world
            if time.monotonic() > deadline:
                raise CollectiveError(
                    f"worker {self.wid} waited {self.join_timeout}s for generation "
                    f"{min_generation} of the gang (latest: {g}); the driver did not re-form "
                    "it. Check that the driver is alive and enough workers can be placed")
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
