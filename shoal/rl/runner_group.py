"""A group of env runner actors: weights out once per version, batches back, failures replaced.

Weights go into the object store once per version (``shoal.put``) and every
runner receives the same reference, so a policy is serialized once per
iteration whatever the number of runners. A runner whose process dies, whose
environment raises or that does not answer within ``sample_timeout_s`` is
killed and replaced by a fresh one (new environments: its episodes in
progress are discarded), and the iteration goes on with the batches of the
others, as RLlib's ``restart_failed_env_runners``. A SpaceMismatchError is a
bug in the environment, not bad luck, and is raised at once.
"""
from __future__ import annotations

import logging
import time

import shoal
from shoal.exceptions import EnvRunnerError, GetTimeoutError, SpaceMismatchError
from shoal.rl.env_runner import EnvRunner, RunnerSpec

log = logging.getLogger("shoal.rl")


class EnvRunnerGroup:
    """``num_runners`` EnvRunner actors (or one runner in this process when 0).

    Args:
        spec: what each runner builds (RunnerSpec).
        num_runners: runner actors; 0 samples in the calling process.
        num_cpus_per_runner: CPUs each runner actor asks of the scheduler.
        restart_failed: replace failed runners (else the first failure raises).
        max_restarts: replacements allowed over the group's life.
        sample_timeout_s: bound of one ``sample`` call on every runner.
        seed_offset: added to the seeds of this group's runners (evaluation
            runners use another offset than training runners).
    """

    def __init__(self, spec: RunnerSpec, num_runners: int, num_cpus_per_runner: float = 1,
                 restart_failed: bool = True, max_restarts: int = 1000,
                 sample_timeout_s: float = 60.0, seed_offset: int = 0):
        self.spec = spec
        self.num_cpus = num_cpus_per_runner
        self.restart_failed = restart_failed
        self.max_restarts = max_restarts
        self.sample_timeout_s = sample_timeout_s
        self.seed_offset = seed_offset
        self.num_restarts = 0
        self._starts = 0
        self._weights_ref = None
        self._weights_local = None
        self._version = -1
        self.local = None
        self.runners: list = []
        self._in_flight: dict = {}      # ref -> (runner index, weights version, submit time)
        self._async_kwargs: dict = {}
        self._fresh_failures = 0
        if num_runners == 0:
            # in the caller's process: its torch settings stay the caller's
            self.local = EnvRunner(spec, 0, self._next_seed(), own_process=False)
        else:
            self._cls = shoal.remote(EnvRunner)
            self.runners = [self._start(i) for i in range(num_runners)]

    def _next_seed(self):
        s = None if self.spec.seed is None else self.spec.seed + self.seed_offset + 1000 * self._starts
        self._starts += 1
        return s

    def _start(self, index: int):
        return self._cls.options(num_cpus=self.num_cpus, max_restarts=0).remote(
            self.spec, index, self._next_seed())

    @property
    def num_runners(self) -> int:
        """Number of runner actors (0 when sampling in this process)."""
        return len(self.runners)

    def set_weights(self, weights: dict, version: int) -> None:
        """Publish a NumPy state dict: put once, sent by reference with the next calls."""
        self._version = version
        if self.local is not None:
            self._weights_local = weights
        else:
            self._weights_ref = shoal.put(weights)

    def sample(self, **kwargs) -> list[dict]:
        """One ``EnvRunner.sample`` on every runner; the batches of those that succeeded.

        Failed runners are replaced (their batch is dropped); when every
        runner failed the call is repeated on the replacements.

        Raises:
            EnvRunnerError: failures past ``max_restarts`` (or any failure when
                ``restart_failed`` is off), with the last error as cause.
            SpaceMismatchError: an environment returned an observation outside its space.
        """
        if self.local is not None:
            b = self.local.sample(self._weights_local, self._version, **kwargs)
            # the local runner reuses its buffers: the caller keeps copies
            return [{k: (v.copy() if hasattr(v, "copy") else v) for k, v in b.items()}]
        return self._call_all("sample", kwargs)

    def sample_episodes(self, num_episodes: int, **kwargs) -> list[dict]:
        """Complete ``num_episodes`` episodes spread over the runners (evaluation)."""
        if self.local is not None:
            return [self.local.sample_episodes(self._weights_local, self._version,
                                               num_episodes=num_episodes, **kwargs)]
        n = len(self.runners)
        per = [num_episodes // n + (i < num_episodes % n) for i in range(n)]
        return self._call_all("sample_episodes", kwargs, per_runner=[{"num_episodes": k} for k in per])

    def _call_all(self, method: str, kwargs: dict, per_runner: list | None = None) -> list:
        last_error = None
        for attempt in range(2):
            refs = [getattr(r, method).remote(self._weights_ref, self._version, **kwargs,
                                              **(per_runner[i] if per_runner else {}))
                    for i, r in enumerate(self.runners)]
            deadline = time.monotonic() + self.sample_timeout_s
            shoal.wait(refs, num_returns=len(refs), timeout=self.sample_timeout_s)
            results = []
            for i, ref in enumerate(refs):
                try:
                    # bounded by the same deadline, not by wait alone: inside a worker
                    # (a tune trial) wait was seen returning before the calls finished
                    results.append(shoal.get(ref, timeout=max(0.001, deadline - time.monotonic())))
                except SpaceMismatchError:
                    raise
                except Exception as e:  # noqa: BLE001 - a dead process, an env error, a timeout
                    last_error = e
                    self._replace(i, e)
            if results:
                return results
        # every runner failed, and then every fresh replacement too: not bad luck
        raise EnvRunnerError(f"every env runner failed {method}, and so did their fresh "
                             f"replacements: {last_error!r}"[:2000]) from last_error

    # ------------------------------------------------------------------ asynchronous sampling
    def sample_async(self, min_env_steps: int, max_in_flight: int = 2, **kwargs) -> list[dict]:
        """Batches of at least ``min_env_steps`` steps, sampled while the caller worked.

        Every runner keeps ``max_in_flight`` ``sample`` calls queued (an
        actor runs them one after another), so runners go on stepping with
        the weights they had while the caller trains: batches may come from
        a policy a few versions old (IMPALA's "slightly stale" weights).
        Each batch says which in ``weights_version``. A finished call is
        replaced at once by one with the latest weights. Failed runners are
        replaced (their batches are dropped); a call that waits past
        ``sample_timeout_s`` counts as its runner's failure. With no runner
        actors the call samples in this process (synchronously).

        Raises:
            EnvRunnerError, SpaceMismatchError: as ``sample``.
        """
        if self.local is not None:
            out, steps = [], 0
            while steps < min_env_steps:
                out.extend(self.sample(**kwargs))
                out[-1]["weights_version"] = self._version
                steps += out[-1]["env_steps"]
            return out
        self._async_kwargs = kwargs
        self._fill(max_in_flight)
        out, steps = [], 0
        while steps < min_env_steps:
            refs = list(self._in_flight)
            ready, _ = shoal.wait(refs, num_returns=1, timeout=self.sample_timeout_s)
            if not ready:
                self._expire_stuck()
            # every call already finished, not only the first: fewer round trips
            ready, _ = shoal.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref not in self._in_flight:
                    continue                # dropped with its failed runner just now
                index, version, _ = self._in_flight.pop(ref)
                try:
                    batch = shoal.get(ref, timeout=1)
                except SpaceMismatchError:
                    raise
                except Exception as e:  # noqa: BLE001 - a dead process, an env error
                    self._async_failure(index, e)
                    continue
                self._fresh_failures = 0
                batch["weights_version"] = version
                out.append(batch)
                steps += batch["env_steps"]
            self._fill(max_in_flight)
        return out

    def _fill(self, max_in_flight: int) -> None:
        counts = [0] * len(self.runners)
        for index, _, _ in self._in_flight.values():
            counts[index] += 1
        for i, r in enumerate(self.runners):
            for _ in range(max_in_flight - counts[i]):
                ref = r.sample.remote(self._weights_ref, self._version, **self._async_kwargs)
                self._in_flight[ref] = (i, self._version, time.monotonic())

    def _expire_stuck(self) -> None:
        now = time.monotonic()
        stuck = {i for i, _, t in self._in_flight.values() if now - t >= self.sample_timeout_s}
        for i in sorted(stuck):
            self._async_failure(i, GetTimeoutError(f"sample() on env runner {i} took longer "
                                                   f"than {self.sample_timeout_s}s"))

    def _async_failure(self, index: int, error: BaseException) -> None:
        # drop the runner's queued calls with it: they ran on the dead runner
        for ref in [r for r, (i, _, _) in self._in_flight.items() if i == index]:
            del self._in_flight[ref]
        self._fresh_failures += 1
        if self._fresh_failures > 2 * len(self.runners):
            raise EnvRunnerError(f"env runners keep failing sample, fresh replacements too: "
                                 f"{error!r}"[:2000]) from error
        self._replace(index, error)

    def _replace(self, index: int, error: BaseException) -> None:
        what = ("did not answer within sample_timeout_s="
                f"{self.sample_timeout_s}" if isinstance(error, GetTimeoutError) else f"failed: {error!r}")
        if not self.restart_failed or self.num_restarts >= self.max_restarts:
            raise EnvRunnerError(
                f"env runner {index} {what}; restarts {'are off' if not self.restart_failed else 'are spent'} "
                f"({self.num_restarts} of max_num_env_runner_restarts={self.max_restarts}). "
                f"Fix the environment, or raise the limit in config.fault_tolerance(...)") from error
        self.num_restarts += 1
        log.warning("env runner %d %s; replacing it (restart %d of %d), its episodes are discarded",
                    index, str(what).splitlines()[0][:300], self.num_restarts, self.max_restarts)
        try:
            shoal.kill(self.runners[index])
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.runners[index] = self._start(index)

    def stop(self) -> None:
        """Kill the runner actors (or close the local environments)."""
        self._in_flight.clear()
        if self.local is not None:
            self.local.close()
        for r in self.runners:
            try:
                shoal.kill(r)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.runners = []
