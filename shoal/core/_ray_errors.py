"""Ray's exceptions as shoal's: what ``shoal.get`` raises on the Ray backend."""
from __future__ import annotations

import re

import ray.exceptions as rex

from shoal.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    ShoalError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_NAME = re.compile(r"ray::([^\s(]+)\(")


def to_shoal_error(e: BaseException) -> BaseException:
    """The shoal exception for a Ray exception (others pass through)."""
    if isinstance(e, rex.RayTaskError):
        cause = e.cause
        # ray.get raises a dual-class copy that keeps only the cause and the message,
        # which holds "ray::name() (pid=..)" and the remote traceback.
        text = _ANSI.sub("", str(e))
        if isinstance(cause, TaskError):          # a nested get re-raised: report the root
            return TaskError(cause.function_name,
                             f"{cause.remote_traceback}\nre-raised by:\n{text}",
                             cause.cause, cause.cause_repr).as_instanceof_cause()
        if isinstance(cause, rex.RayError):       # Ray's own error inside the task
            cause = to_shoal_error(cause)
        m = _TASK_NAME.search(text)
        name = m.group(1) if m else "remote task"
        return TaskError(name, text, cause, repr(cause)).as_instanceof_cause()
    if isinstance(e, rex.TaskCancelledError):
        return TaskCancelledError(f"the task was cancelled with shoal.cancel ({e})")
    if isinstance(e, rex.GetTimeoutError):
        return GetTimeoutError(str(e))
    if isinstance(e, rex.ActorUnavailableError):
        return ActorUnavailableError(str(e))
    if isinstance(e, rex.RayActorError):
        return ActorDiedError(str(e))
    if isinstance(e, (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError,
                      rex.LocalRayletDiedError)):
        return WorkerCrashedError(str(e))
    if isinstance(e, rex.ObjectLostError):
        return ObjectLostError(str(e))
    if isinstance(e, (rex.TaskPlacementGroupRemoved, rex.ActorPlacementGroupRemoved)):
        return ActorDiedError(str(e)) if isinstance(e, rex.ActorPlacementGroupRemoved) \
            else WorkerCrashedError(str(e))
    if isinstance(e, rex.RayError):
        return ShoalError(f"Ray failed: {e}")
    return e
