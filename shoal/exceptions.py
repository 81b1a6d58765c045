"""Every error shoal raises derives from ShoalError and says what to do."""
from __future__ import annotations


class ShoalError(Exception):
    """Base class of all shoal errors."""


class TaskError(ShoalError):
    """A remote task or actor method raised.

    ``get`` raises a subclass that is also an instance of the original
    exception's type, so ``except ValueError`` still catches a remote
    ``ValueError``. ``cause`` is the original exception (when it could be
    pickled) and ``remote_traceback`` the formatted remote traceback.
    """

    def __init__(self, function_name: str = "", remote_traceback: str = "",
                 cause: BaseException | None = None, cause_repr: str = ""):
        self.function_name = function_name
        self.remote_traceback = remote_traceback
        self.cause = cause
        self.cause_repr = cause_repr or repr(cause)
        # Not super(): in the class that is also the cause's type, the next
        # __init__ would be the cause's, with its own signature.
        Exception.__init__(self, function_name, remote_traceback, cause, cause_repr)

    def __str__(self) -> str:
        return (f"{self.function_name} raised {self.cause_repr}\n\n"
                f"Remote traceback:\n{self.remote_traceback}")

    def __reduce__(self):
        return (_rebuild_task_error,
                (self.function_name, self.remote_traceback, _exception_state(self.cause),
                 self.cause_repr))

    def as_instanceof_cause(self) -> "TaskError":
        """Return a TaskError that is also an instance of the cause's type."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self, cause_cls) or not issubclass(cause_cls, Exception):
            return self
        try:
            cls = _DUAL_CLASSES.get(cause_cls)
            if cls is None:
                cls = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls), {
                    "__init__": TaskError.__init__, "__str__": TaskError.__str__,
                    "__reduce__": TaskError.__reduce__})
                _DUAL_CLASSES[cause_cls] = cls
            err = cls.__new__(cls)
            TaskError.__init__(err, self.function_name, self.remote_traceback,
                               self.cause, self.cause_repr)
            for k, v in getattr(self.cause, "__dict__", {}).items():
                err.__dict__.setdefault(k, v)  # the cause's own attributes (e.g. .column)
            return err
        except TypeError:  # layouts that cannot be combined (some C exceptions)
            return self


_DUAL_CLASSES: dict = {}


def _rebuild_task_error(function_name, remote_traceback, cause_state, cause_repr):
    cause = _exception_from_state(cause_state)
    return TaskError(function_name, remote_traceback, cause, cause_repr).as_instanceof_cause()


def _exception_state(e):
    # An exception pickles as cls(*args), which fails for classes whose
    # __init__ takes other arguments; carry its type, args and attributes.
    if e is None:
        return None
    return (type(e), e.args, dict(getattr(e, "__dict__", {})))


def _exception_from_state(state):
    if state is None:
        return None
    cls, args, attrs = state
    try:
        e = cls.__new__(cls, *args)
        e.args = args
        e.__dict__.update(attrs)
        return e
    except Exception:  # noqa: BLE001 - an exotic type: keep the error, lose the cause
        return None


class WorkerCrashedError(ShoalError):
    """The worker process running a task died and the retries are spent."""


class ActorDiedError(ShoalError):
    """The actor's process died (and will not be restarted) or it was killed."""


class ActorUnavailableError(ShoalError):
    """The actor is restarting; the call was not retried."""


class GetTimeoutError(ShoalError, TimeoutError):
    """``get`` did not finish within its timeout."""


class TaskCancelledError(ShoalError):
    """The task was cancelled with ``shoal.cancel``."""


class ObjectLostError(ShoalError):
    """An object's value is no longer available (freed or its store is gone)."""


class SerializationError(ShoalError, TypeError):
    """An argument or result could not be serialized."""


class InfeasibleResourceError(ShoalError, ValueError):
    """A resource request that the cluster can never satisfy."""


class RuntimeEnvSetupError(ShoalError, ValueError):
    """A ``runtime_env`` could not be set up (an unsupported key, a missing directory)."""


class AuthenticationError(ShoalError, ConnectionError):
    """A peer failed to prove it holds the cluster secret."""


class NotInitializedError(ShoalError, RuntimeError):
    """An API call needs a running cluster; call shoal.init() first."""


class CollectiveError(ShoalError, RuntimeError):
    """A collective operation failed (mismatched calls, a dead rank, a timeout)."""


class TrainingFailedError(ShoalError, RuntimeError):
    """Training failed and the allowed restarts are spent."""


class MembershipChangedInterrupt(ShoalError):
    """An elastic gang gained or lost workers; raised by ``State.commit()`` on every rank at the
    same step so that the group re-forms there (``shoal.train.elastic.run`` catches it)."""


class ElasticUnsupportedError(ShoalError, ValueError):
    """An elastic run (a ``(min, max)`` worker range, ``shoal launch -n MIN:MAX``) was asked
    for something it cannot do yet, such as a sharded (ZeRO/FSDP) strategy; the message says
    what to use instead."""


class InvalidInputError(ShoalError, ValueError):
    """Input data was rejected (NaN/inf, wrong label type, empty, missing column, wrong shape).

    The message names the argument or column at fault and what to do.
    """


class DataError(ShoalError):
    """Base class of shoal.data's errors about a dataset's contents or plan."""


class ColumnNotFoundError(DataError, KeyError):
    """A dataset operation named a column the data does not have.

    The message names the missing column, the operation and the columns
    that exist.
    """

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class SchemaMismatchError(DataError, ValueError):
    """Blocks that must share a schema (e.g. in ``Dataset.union``) do not."""


class DatasetPathError(DataError, FileNotFoundError):
    """A path given to a shoal.data reader matches no file."""


class UDFReturnTypeError(DataError, TypeError):
    """A user function passed to map_batches/map/flat_map/filter/add_column returned a value of the wrong type."""


class NonFiniteLossError(ShoalError, FloatingPointError):
    """Training produced a NaN/inf loss or gradient (shoal.train)."""


class RankMismatchError(ShoalError, ValueError):
    """Ranks of a training gang disagree on something that must be equal on all of them
    (model parameters' shapes, number of batches per epoch)."""


class InvalidInputTypeError(InvalidInputError, TypeError):
    """Input data of a type that cannot be used (e.g. a dict inside a numeric array)."""


class DataStarvedError(DataError, TimeoutError):
    """A shoal.data stage could not start: no CPU was free in the cluster for it."""


class MissingDependencyError(ShoalError, ImportError):
    """A part of shoal needs a package that is not installed.

    ``pip install shoal`` brings what ``shoal.core`` and ``shoal.collective``
    need; each library's heavier dependencies come with an extra
    (``pip install 'shoal[ml]'``). The message names the missing packages and
    that extra; ``missing`` lists the packages, ``extra`` the extra.
    """

    # import name -> the name pip installs it under, where they differ
    _PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow"}

    def __init__(self, message: str, missing: tuple = (), extra: str = "", name: str | None = None):
        super().__init__(message, name=name)
        self.missing = tuple(missing)
        self.extra = extra

    def __reduce__(self):  # ImportError's pickling would drop missing/extra
        return (type(self), (str(self), self.missing, self.extra, self.name))

    @classmethod
    def require(cls, part: str, extra: str, *modules: str) -> None:
        """Raise unless every top-level module in ``modules`` is importable.

        The check finds the modules without importing them (microseconds), so
        a library's ``__init__`` can call it first and keep its own imports
        lazy. ``part`` names what needs them ("shoal.ml"), ``extra`` the pip
        extra that installs them ("ml").

        Raises:
            MissingDependencyError: e.g. ``shoal.ml needs scikit-learn, numba:
                pip install 'shoal[ml]'``.
        """
        import importlib.util

        def absent_(m):
            try:
                return importlib.util.find_spec(m) is None
            except (ImportError, ValueError):  # an import hook refused it, or a broken stub
                return True
        absent = [m for m in modules if absent_(m)]
        if absent:
            missing = tuple(cls._PIP_NAMES.get(m, m) for m in absent)
            raise cls(f"{part} needs {', '.join(missing)}, which "
                      f"{'is' if len(missing) == 1 else 'are'} not installed: "
                      f"pip install 'shoal[{extra}]'", missing, extra, absent[0])


class ServeError(ShoalError, RuntimeError):
    """shoal.serve could not deploy, route or answer a request; the message says why."""


class BackPressureError(ServeError):
    """A deployment's queue is full (``max_queued_requests``): retry later.

    Over HTTP this is a 503 with a ``Retry-After`` header.
    """


class DeploymentUnavailableError(ServeError):
    """No replica of a deployment could take the request in time (none running,
    or every one died); the message names the deployment."""


class RequestError(ServeError):
    """A request to a deployment failed in the replica's user code.

    ``error_id`` also appears in the replica's log next to the traceback;
    ``cause`` is the original exception when it could be sent back.
    """

    def __init__(self, message: str, error_id: str = "", cause: BaseException | None = None):
        super().__init__(message)
        self.error_id = error_id
        self.cause = cause

    def __reduce__(self):
        return (type(self), (str(self), self.error_id, self.cause))


class SpaceMismatchError(InvalidInputError):
    """An observation or action does not fit the environment's declared space (shoal.rl).

    The message names the space, the value's shape and dtype, and where the
    value came from; ``space`` and ``value`` hold them.
    """

    def __init__(self, message: str, space=None, value=None):
        super().__init__(message)
        self.space = space
        self.value = value

    def __reduce__(self):
        return (type(self), (str(self), self.space, self.value))


class EnvError(ShoalError, RuntimeError):
    """A Gymnasium environment raised inside an env runner (shoal.rl).

    The runner is replaced and the episode discarded while restarts last;
    the message names the environment and the runner.
    """


class EnvRunnerError(ShoalError, RuntimeError):
    """Env runners kept failing and their restarts are spent (shoal.rl)."""


class SearchSpaceError(ShoalError, ValueError):
    """A shoal.tune search space is invalid (``loguniform(0, 1)``, an empty ``choice``,
    a ``sample_from`` that depends on itself)."""


class TuneError(ShoalError, RuntimeError):
    """A shoal.tune experiment could not run as asked (a metric no trial reports, a
    trainable that cannot be pickled, an experiment directory that cannot be restored)."""
