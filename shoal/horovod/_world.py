"""The job's state in shoal.horovod: init/shutdown, ranks, process sets, introspection."""
from __future__ import annotations

import os
import sys
import threading

from shoal.horovod._engine import ADD_SET, REMOVE_SET, Engine, Request


class _Solo:
    """A communicator of one rank (a script run without a launcher): every op is local."""

    rank, world_size, name, timeout = 0, 1, "solo", 300.0

    def allreduce(self, t, op="sum", prescale=1.0, postscale=1.0):
        return self.grouped_allreduce([t], op, prescale, postscale)[0]

    def grouped_allreduce(self, tensors, op="sum", prescale=1.0, postscale=1.0):
        for t in tensors:
            if prescale * postscale != 1.0:
                t *= prescale * postscale
        return tensors

    def allgather(self, t):
        return [_clone(t)]

    def grouped_allgather(self, tensors):
        return [[_clone(t)] for t in tensors]

    def broadcast(self, t, src=0):
        return t

    def grouped_broadcast(self, tensors, src=0):
        return tensors

    def reduce_scatter(self, t, op="sum"):
        return _clone(t)

    def grouped_reduce_scatter(self, tensors, op="sum"):
        return [_clone(t) for t in tensors]

    def alltoall(self, t, send_splits=None):
        return _clone(t)

    def barrier(self):
        return None

    def new_group(self, ranks):
        return self

    def destroy(self):
        pass


def _clone(t):
    return t.copy() if hasattr(t, "copy") and not hasattr(t, "clone") else t.clone()


class ProcessSet:
    """A subset of the job's ranks that runs collectives on its own (Horovod's ProcessSet).

    Build it with a list of global ranks and register it on every rank, with
    ``hvd.init(process_sets=[...])`` or ``hvd.add_process_set(ps)``; then pass
    ``process_set=ps`` to any op. Ranks outside the set must not issue its ops.
    """

    def __init__(self, ranks):
        self.ranks = sorted(int(r) for r in ranks)
        if not self.ranks or len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"a ProcessSet needs a non-empty list of distinct ranks, got {ranks!r}")
        self.process_set_id: int | None = None
        self._engine: Engine | None = None

    def size(self) -> int:
        """The number of ranks in the set."""
        self._registered()
        return len(self.ranks)

    def rank(self) -> int:
        """This process's rank within the set (-1 if it is not a member)."""
        self._registered()
        me = _w().rank
        return self.ranks.index(me) if me in self.ranks else -1

    def included(self) -> bool:
        """True if this process is a member of the set."""
        self._registered()
        return _w().rank in self.ranks

    def _registered(self) -> None:
        if self.process_set_id is None:
            raise ValueError(f"process set {self.ranks} is not registered; pass it to hvd.init("
                             "process_sets=[...]) or hvd.add_process_set() on every rank")

    def __eq__(self, other) -> bool:
        return isinstance(other, ProcessSet) and self.ranks == other.ranks

    def __hash__(self) -> int:
        return hash(tuple(self.ranks))

    def __repr__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"


class _GlobalProcessSet(ProcessSet):
    """All ranks of the job; its membership follows ``hvd.init``."""

    def __init__(self):
        self.ranks, self.process_set_id, self._engine = [0], None, None


global_process_set = _GlobalProcessSet()


class _World:
    def __init__(self):
        self.comm = self.own_comm = None  # own_comm: formed by init, destroyed by shutdown
        self.rank = self.local_rank = self.cross_rank = 0
        self.size = self.local_size = self.cross_size = 1
        self.sets: dict[int, ProcessSet] = {}
        self.next_set_id = 1
        self.timeline = None


_world: _World | None = None
_lock = threading.Lock()


def init(comm=None, process_sets=None) -> None:
    """Join the job's group (idempotent); Horovod's ``hvd.init``.

    In a script started by ``shoal launch`` (or torchrun, mpirun) the group
    comes from the environment; inside a shoal.train loop it is the gang's
    communicator; otherwise this process is a world of one. ``comm`` passes a
    shoal communicator explicitly. ``process_sets`` (a list of ProcessSet)
    registers process sets on every rank.
    """
    global _world
    with _lock:
        if _world is not None:
            return
        w = _World()
        session = _train_session() if comm is None else None
        if session is not None:
            comm = session.comm
            ctx = session.context
            w.local_rank, w.local_size = ctx.local_rank, ctx.local_world_size
            w.cross_rank = ctx.node_rank
        elif comm is None and _launched():
            # shoal.train (which needs torch) is not here: form the launcher's group directly
            from shoal.collective import init_group_from_env
            comm = w.own_comm = init_group_from_env()
        if comm is not None and session is None:
            env = os.environ
            w.local_rank = int(env.get("SHOAL_LOCAL_RANK", env.get("LOCAL_RANK", 0)))
            w.local_size = int(env.get("SHOAL_LOCAL_WORLD_SIZE",
                                       env.get("LOCAL_WORLD_SIZE", comm.world_size)))
            w.cross_rank = int(env.get("SHOAL_NODE_RANK", env.get("GROUP_RANK", 0)))
        if comm is not None:
            w.comm, w.rank, w.size = comm, comm.rank, comm.world_size
            w.local_size = w.local_size or w.size
            w.cross_size = max(1, w.size // max(1, w.local_size))
        global_process_set.ranks = list(range(w.size))
        global_process_set.process_set_id = 0
        global_process_set._engine = Engine(comm if comm is not None else _Solo(),
                                            list(range(w.size)), timeline=_timeline_hook)
        w.sets[0] = global_process_set
        _world = w
    path = os.environ.get("HOROVOD_TIMELINE")
    if path:
        start_timeline(path)
    for ps in process_sets or ():
        add_process_set(ps)


def _train_session():
    """The shoal.train session of this process (a Trainer worker, or a launched script), or
    None; without torch there is no shoal.train, hence none."""
    if "shoal.train.context" not in sys.modules and _torch() is None:
        return None
    from shoal.train.context import current_session
    return current_session(required=False)


def _launched() -> bool:
    env = os.environ
    return ("SHOAL_RANK" in env or "RANK" in env) and \
        ("SHOAL_WORLD_SIZE" in env or "WORLD_SIZE" in env)


def shutdown() -> None:
    """Leave the group (pending ops fail); ``init`` may be called again."""
    global _world
    with _lock:
        w, _world = _world, None
    if w is None:
        return
    for ps in sorted(w.sets.values(), key=lambda p: -p.process_set_id):
        if ps._engine is not None:
            ps._engine.close()
            if ps.process_set_id != 0 and ps._engine.comm is not None:
                ps._engine.comm.destroy()
        ps._engine, ps.process_set_id = None, None
    if w.timeline is not None:
        w.timeline.flush()
    if w.own_comm is not None:
        w.own_comm.destroy()


def is_initialized() -> bool:
    """True between ``init()`` and ``shutdown()``."""
    return _world is not None


def _w() -> _World:
    if _world is None:
        raise ValueError("Horovod has not been initialized; use hvd.init().")
    return _world


def rank() -> int:
    """This process's rank in the job (0..size()-1)."""
    return _w().rank


def size() -> int:
    """The number of processes in the job."""
    return _w().size


def local_rank() -> int:
    """This process's rank among the processes on its host."""
    return _w().local_rank


def local_size() -> int:
    """The number of processes on this host."""
    return _w().local_size


def cross_rank() -> int:
    """The rank of this process's host among the job's hosts."""
    return _w().cross_rank


def cross_size() -> int:
    """The number of hosts in the job."""
    return _w().cross_size


def is_homogeneous() -> bool:
    """True if every host runs the same number of processes (always, under ``shoal launch``)."""
    w = _w()
    return w.size == w.local_size * w.cross_size


# ------------------------------------------------------------------ process sets
def engine_of(process_set) -> Engine:
    """The engine that runs ``process_set``'s ops on this rank (ValueError if not a member)."""
    w = _w()
    ps = global_process_set if process_set is None else process_set
    if not isinstance(ps, ProcessSet):
        raise ValueError(f"process_set must be a hvd.ProcessSet, got {type(ps).__name__}")
    if ps.process_set_id is None or w.sets.get(ps.process_set_id) is not ps:
        raise ValueError(f"process set {ps.ranks} is not registered; register it with "
                         "hvd.add_process_set() on every rank first")
    if ps._engine is None:
        raise ValueError(f"rank {w.rank} is not a member of process set {ps.ranks}; only its "
                         "members may issue its collectives")
    return ps._engine


def add_process_set(process_set) -> ProcessSet:
    """Register a process set (a ProcessSet or a list of ranks) on every rank; collective.

    Every rank of the job must call it, in the same order. Returns the
    registered ProcessSet. Raises ValueError for ranks outside the job or a
    set already registered.
    """
    w = _w()
    ps = process_set if isinstance(process_set, ProcessSet) else ProcessSet(process_set)
    if ps.ranks[-1] >= w.size or ps.ranks[0] < 0:
        raise ValueError(f"process set {ps.ranks} names ranks outside this job (0..{w.size - 1})")
    if any(p.ranks == ps.ranks for p in w.sets.values()):
        raise ValueError(f"a process set with ranks {ps.ranks} is already registered")
    eng = global_process_set._engine
    req = Request(f"process_set.add.{w.next_set_id}", ADD_SET, extra=tuple(ps.ranks))
    sub = eng.submit(req).wait(eng, eng.stall_s * 2)
    ps.process_set_id = w.next_set_id
    w.next_set_id += 1
    w.sets[ps.process_set_id] = ps
    if w.rank in ps.ranks:
        ps._engine = Engine(sub, list(ps.ranks), timeline=_timeline_hook)
    return ps


def remove_process_set(process_set: ProcessSet) -> bool:
    """Unregister a process set on every rank (collective); False if it was not registered."""
    w = _w()
    if process_set is global_process_set or process_set.process_set_id == 0:
        raise ValueError("the global process set cannot be removed")
    if process_set.process_set_id is None or w.sets.get(process_set.process_set_id) is not process_set:
        return False
    eng = global_process_set._engine
    eng.submit(Request(f"process_set.remove.{process_set.process_set_id}", REMOVE_SET,
                       extra=tuple(process_set.ranks))).wait(eng, eng.stall_s * 2)
    del w.sets[process_set.process_set_id]
    if process_set._engine is not None:
        process_set._engine.close()
        process_set._engine.comm.destroy()
    process_set._engine, process_set.process_set_id = None, None
    return True


# ------------------------------------------------------------------ timeline
def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    """Record a Chrome-trace timeline of this job's ops into ``file_path`` (rank 0 writes it).

    Each op gets a row named after its tensor, with a NEGOTIATE_<OP> event
    (from submission until every rank had submitted it) and an <OP> event
    (the collective itself). Open the file in chrome://tracing or Perfetto.
    ``mark_cycles`` is accepted for Horovod compatibility (no cycles here).
    """
    from shoal.collective.timeline import Timeline
    w = _w()
    if w.timeline is not None:
        w.timeline.flush()
    if w.own_comm is not None:
        w.own_comm.destroy()
    w.timeline = Timeline(file_path, w.rank) if w.rank == 0 else None


def stop_timeline() -> None:
    """Stop recording and write the timeline file."""
    w = _w()
    if w.timeline is not None:
        w.timeline.flush()
    if w.own_comm is not None:
        w.own_comm.destroy()
        w.timeline = None


def _timeline_hook(name: str, kind: str, t_submit: float, t_start: float, t_end: float) -> None:
    w = _world
    tl = w.timeline if w is not None else None
    if tl is None:
        return
    tl.span(f"NEGOTIATE_{kind.upper()}", t_submit, t_start, tid=name)
    tl.span(kind.upper(), t_start, t_end, tid=name)


# ------------------------------------------------------------------ introspection
def mpi_built() -> bool:
    """False: shoal.horovod runs on shoal.collective, not MPI."""
    return False


def mpi_enabled() -> bool:
    """False: MPI is never used at runtime."""
    return False


def mpi_threads_supported() -> bool:
    """Raises ValueError as Horovod does when MPI is not enabled (it never is here)."""
    raise ValueError("Horovod MPI is not enabled; shoal.horovod runs on shoal.collective "
                     "(shared memory and TCP), which supports ops from any thread.")


def _torch():
    """torch, or None where it is not installed (the TensorFlow faces run without it)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def gloo_built() -> bool:
    """True if torch was built with Gloo (shoal.collective's torch backend can use it)."""
    torch = _torch()
    return bool(torch is not None and torch.distributed.is_available()
                and torch.distributed.is_gloo_available())


def gloo_enabled() -> bool:
    """True if this job's collectives run on Gloo (a shoal communicator on the torch
    backend with CPU tensors); False for the native backend and before init."""
    w = _world
    comm = w.comm if w is not None else None
    return bool(comm is not None and getattr(comm, "backend", "") == "torch"
                and str(getattr(comm, "device", "cpu")).startswith("cpu"))


def nccl_built() -> int:
    """The NCCL version CUDA tensors use (as Horovod: e.g. 21803 for 2.18.3), 0 without NCCL."""
    torch = _torch()
    if not (torch is not None and torch.distributed.is_available()
            and torch.distributed.is_nccl_available() and torch.cuda.is_available()):
        return 0
    major, minor, patch = torch.cuda.nccl.version()
    return major * 10000 + minor * 100 + patch if (major, minor) >= (2, 9) else \
        major * 1000 + minor * 100 + patch


def ddl_built() -> bool:
    """False: IBM DDL is not supported."""
    return False


def ccl_built() -> bool:
    """False: Intel oneCCL is not supported."""
    return False


def cuda_built() -> bool:
    """True if CUDA tensors are supported (torch was built with CUDA)."""
    torch = _torch()
    return bool(torch is not None and torch.backends.cuda.is_built())


def rocm_built() -> bool:
    """True if torch was built for ROCm (HIP)."""
    torch = _torch()
    return torch is not None and torch.version.hip is not None
