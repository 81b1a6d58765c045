"""``Communicator``: the collective API shared by the native and torch backends.

A backend implements the ``_do_*`` methods (synchronous, on one op); this
class adds argument checks, async handles, submission order, grouped ops and
object collectives, so both backends present exactly the same API.
"""
from __future__ import annotations

import pickle

import numpy as np

from shoal.collective import _descriptor as D
from shoal.collective import tf_tensors as _tf
from shoal.collective._buffers import REDUCE_OPS
from shoal.collective._work import OpQueue, Work
from shoal.exceptions import CollectiveError


class Communicator:
    """A group of ``world_size`` ranks that run collectives together.

    Every rank must call the same collectives in the same order. Tensors are
    NumPy arrays or torch tensors (any numeric dtype; CPU for the native
    backend). Every op takes ``async_op``: when True it returns a ``Work``
    whose ``wait()`` gives the result.
    """

    backend = "abstract"
    #: True where ``send(t, dst, async_op=True)`` on a CPU tensor writes on the calling thread
    #: what the connection takes without blocking and queues the rest behind the earlier sends
    #: (no thread per call, in order); False where each async send gets a thread of its own
    nonblocking_send = False

    def __init__(self, rank: int, world_size: int, name: str, timeout: float):
        self.rank, self.world_size, self.name, self.timeout = rank, world_size, name, timeout
        self._queue = OpQueue(name, self._fusion_handler())
        self._destroyed = False
        self._broken: str | None = None
        self._subgroups = 0

    def _fusion_handler(self):
        return None

    # -------------------------------------------------------------- plumbing
    def _run(self, what: str, fn, args, async_op: bool, fusion_key=None, nbytes: int = 0):
        if _tf.loaded() and _tf.mentions(args):
            return self._run_tf(what, fn, args, async_op)
        tag = D.current_group_signature()
        if tag:     # the op may run on the queue's thread: it takes the tag along
            fn, fusion_key = _tagged_call(fn, tag), None
        if self._destroyed:
            raise CollectiveError(f"{what} on communicator {self.name!r} after destroy(); "
                                  "form a new group with init_group")
        if self._broken:
            raise CollectiveError(f"{what} on a broken group ({self._broken}); destroy() it "
                                  "and form a new group")
        return self._queue.run(self._guard(fn), args, async_op, f"{what} on {self.name!r}",
                               fusion_key, nbytes)

    def _run_tf(self, what: str, fn, args, async_op: bool):
        """An op on TensorFlow tensors: NumPy stand-ins in, TF results out (see ``_tf``)."""
        if any(_tf.is_symbolic(a) for a in _tf_args(args)):
            if async_op:
                raise ValueError(f"{what} with async_op=True inside tf.function; the graph "
                                 "orders ops itself: call it with async_op=False")
            return _tf.graph_call(self, what, lambda *a: self._run_tf(what, fn, a, False), args)
        np_args, back = _tf.adapt(what, args, self.world_size)
        return self._run(what, lambda *a: back(fn(*a)), np_args, async_op)

    @staticmethod
    def tagged(tag: int):
        """A context in which this thread's collectives carry ``tag`` (a nonzero int) in
        the descriptor every rank checks before any data moves. Ranks that issue the same
        op under different tags (or one tagged, one not) all raise a ``CollectiveError``
        whose ``mismatch`` attribute is True, their tensors untouched, and the group stays
        usable: a caller can run a collective speculatively on what it expects the other
        ranks to issue and fall back to agreeing first when they did not."""
        if not isinstance(tag, (int, np.integer)) or isinstance(tag, bool) or not int(tag):
            raise ValueError(f"tagged(tag={tag!r}): the tag must be a nonzero int")
        return D.group_signature(int(tag))

    def _guard(self, fn):
        def call(*args):
            try:
                return fn(*args)
            except CollectiveError as e:
                if getattr(e, "fatal", False):
                    self._broken = str(e)
                raise
        return call

    def _check_rank(self, r: int, what: str) -> int:
        if not isinstance(r, (int, np.integer)) or not 0 <= r < self.world_size:
            raise ValueError(f"{what}={r!r} is not a rank of this group (0..{self.world_size - 1})")
        return int(r)

    @staticmethod
    def _check_op(op: str) -> str:
        if op not in REDUCE_OPS:
            raise ValueError(f"unknown reduce op {op!r}; use one of {', '.join(REDUCE_OPS)}")
        return op

    # ----------------------------------------------------------- collectives
    def allreduce(self, t, op: str = "sum", async_op: bool = False, *, out=None,
                  prescale: float = 1.0, postscale: float = 1.0):
        """Reduce ``t`` over all ranks: in place (returns ``t``), or into ``out``.

        ``op`` is "sum", "avg", "min", "max" or "prod"; the result is
        ``postscale * op(prescale * t_r)``. avg of integers floors.
        """
        self._check_op(op)
        fuse = async_op and not (_tf.loaded() and _tf.is_tf(t))
        key = self._fusion_key(t, op, out, prescale, postscale) if fuse else None
        return self._run("allreduce", self._do_allreduce, (t, op, out, prescale, postscale),
                         async_op, key, _nbytes(t) if key else 0)

    def grouped_allreduce(self, tensors: list, op: str = "sum", async_op: bool = False, *,
                          prescale: float = 1.0, postscale: float = 1.0):
        """Allreduce a list of tensors in place as one fused operation; returns the list."""
        self._check_op(op)
        tensors = list(tensors)
        return self._run("grouped_allreduce", self._do_grouped_allreduce,
                         (tensors, op, prescale, postscale), async_op)

    def reduce(self, t, dst: int = 0, op: str = "sum", async_op: bool = False, *, out=None):
        """Reduce ``t`` over all ranks into rank ``dst``'s ``t`` (or ``out``); others unchanged."""
        self._check_op(op)
        dst = self._check_rank(dst, "dst")
        return self._run("reduce", self._do_reduce, (t, dst, op, out), async_op)

    def reduce_scatter(self, t, op: str = "sum", async_op: bool = False, *, out=None):
        """Reduce ``t`` over all ranks; rank r gets part r of the result along dimension 0.

        Parts follow ``numpy.array_split``: sizes differ by at most one row
        when the first dimension is not divisible by ``world_size``.
        """
        self._check_op(op)
        return self._run("reduce_scatter", self._do_reduce_scatter, (t, op, out), async_op)

    def allgather(self, t, async_op: bool = False, *, out=None):
        """Every rank's ``t``, as a list in rank order (first dimensions may differ).

        With ``out`` (a tensor holding all ranks' rows, concatenated along
        dimension 0) the rows are written there and the list holds views.
        """
        return self._run("allgather", self._do_allgather, (t, out), async_op)

    def broadcast(self, t, src: int = 0, async_op: bool = False):
        """Copy rank ``src``'s ``t`` into ``t`` on every rank (in place); returns ``t``."""
        src = self._check_rank(src, "src")
        return self._run("broadcast", self._do_broadcast, (t, src), async_op)

    def grouped_broadcast(self, tensors: list, src: int = 0, async_op: bool = False):
        """Broadcast a list of tensors from rank ``src`` in one packed operation (in place)."""
        src = self._check_rank(src, "src")
        tensors = list(tensors)
        return self._run("grouped_broadcast", self._do_grouped_broadcast, (tensors, src), async_op)

    def _do_grouped_broadcast(self, tensors, src):
        from shoal.collective._buffers import as_buffer, is_torch_tensor
        if any(is_torch_tensor(t) and t.device.type != "cpu" for t in tensors):
            from shoal.collective import _grouped
            return _grouped.device_broadcast(self, tensors, src)
        bufs = [as_buffer(t, name=f"tensors[{i}]") for i, t in enumerate(tensors)]
        views = [b.array.reshape(-1).view(np.uint8) for b in bufs]
        packed = np.concatenate(views) if views else np.empty(0, np.uint8)
        self._do_broadcast(packed, src)
        if self.rank != src:
            off = 0
            for b, v in zip(bufs, views):
                v[...] = packed[off:off + v.size]
                off += v.size
                b.finish()
        return tensors

    def grouped_allgather(self, tensors: list, async_op: bool = False) -> list:
        """``allgather`` of each tensor of a list, packed into one collective.

        Returns one list per input tensor, each holding every rank's version
        of it in rank order (first dimensions may differ between ranks;
        dtypes and the other dimensions must agree).
        """
        tensors = list(tensors)
        return self._run("grouped_allgather", self._do_grouped_allgather, (tensors,), async_op)

    def grouped_reduce_scatter(self, tensors: list, op: str = "sum", async_op: bool = False) -> list:
        """``reduce_scatter`` of each tensor of a list; one packed collective per dtype.

        Returns this rank's part (``numpy.array_split`` rows of dimension 0)
        of every tensor, in input order.
        """
        self._check_op(op)
        tensors = list(tensors)
        return self._run("grouped_reduce_scatter", self._do_grouped_reduce_scatter,
                         (tensors, op), async_op)

    def grouped_reduce(self, tensors: list, dst: int = 0, op: str = "sum", async_op: bool = False):
        """``reduce`` of each tensor of a list into rank ``dst`` (in place); one packed
        collective per dtype. Returns the list."""
        self._check_op(op)
        dst = self._check_rank(dst, "dst")
        tensors = list(tensors)
        return self._run("grouped_reduce", self._do_grouped_reduce, (tensors, dst, op), async_op)

    def grouped_alltoall(self, tensors: list, async_op: bool = False) -> list:
        """``alltoall`` (even ``array_split`` of dimension 0) of each tensor of a list, packed
        into one collective. Returns the received tensor for each input, in input order."""
        tensors = list(tensors)
        return self._run("grouped_alltoall", self._do_grouped_alltoall, (tensors,), async_op)

    def _do_grouped_allgather(self, tensors):
        from shoal.collective import _grouped
        return _grouped.grouped_allgather(self, tensors)

    def _do_grouped_reduce_scatter(self, tensors, op):
        from shoal.collective import _grouped
        return _grouped.grouped_reduce_scatter(self, tensors, op)

    def _do_grouped_reduce(self, tensors, dst, op):
        from shoal.collective import _grouped
        return _grouped.grouped_reduce(self, tensors, dst, op)

    def _do_grouped_alltoall(self, tensors):
        from shoal.collective import _grouped
        return _grouped.grouped_alltoall(self, tensors)

    def gather(self, t, dst: int = 0, async_op: bool = False):
        """Every rank's ``t`` as a list on rank ``dst`` (None on the others)."""
        dst = self._check_rank(dst, "dst")
        return self._run("gather", self._do_gather, (t, dst), async_op)

    def scatter(self, parts, src: int = 0, async_op: bool = False, *, out=None):
        """Rank ``src`` passes a list of ``world_size`` tensors; rank r receives ``parts[r]``.

        Other ranks pass None (or anything) as ``parts``; the result goes into
        ``out`` when given, else a new NumPy array (pass ``out`` for bfloat16).
        """
        src = self._check_rank(src, "src")
        if self.rank == src:
            if parts is None or len(parts) != self.world_size:
                raise ValueError(f"scatter on the source rank needs a list of {self.world_size} "
                                 f"tensors (one per rank), got {type(parts).__name__}")
        return self._run("scatter", self._do_scatter, (parts, src, out), async_op)

    def alltoall(self, t, async_op: bool = False, *, send_splits=None, recv_splits=None, out=None):
        """Rank r sends rows ``send_splits[q]`` of ``t`` (in order) to rank q.

        ``send_splits`` defaults to an even split of dimension 0 (array_split
        sizes). The received rows are concatenated in rank order; their
        counts come from the senders, and ``recv_splits``, when given, is
        checked against them. Returns the output tensor.
        """
        return self._run("alltoall", self._do_alltoall, (t, send_splits, recv_splits, out), async_op)

    def barrier(self, async_op: bool = False):
        """Return once every rank reached the barrier."""
        return self._run("barrier", self._do_barrier, (), async_op)

    def send(self, t, dst: int, tag: int = 0, async_op: bool = False):
        """Send ``t`` to rank ``dst`` (matched by a ``recv`` there with the same tag)."""
        dst = self._check_rank(dst, "dst")
        if dst == self.rank:
            raise ValueError("send to this rank itself; pass another rank as dst")
        return self._p2p("send", self._do_send, (t, dst, int(tag)), async_op)

    def recv(self, t, src: int, tag: int = 0, async_op: bool = False):
        """Receive into ``t`` (in place) what rank ``src`` sends; returns ``t``."""
        src = self._check_rank(src, "src")
        if src == self.rank:
            raise ValueError("recv from this rank itself; pass another rank as src")
        return self._p2p("recv", self._do_recv, (t, src, int(tag)), async_op)

    def _p2p(self, what, fn, args, async_op):
        # Point-to-point is not ordered with collectives; async ones get their own thread.
        if self._destroyed or self._broken:
            raise CollectiveError(f"{what} on a destroyed or broken communicator {self.name!r}")
        if not async_op:
            return fn(*args)
        if what == "send":
            work = self._send_nowait(*args)
            if work is not None:
                return work
        import threading
        work = Work(f"{what} on {self.name!r}")

        def go():
            try:
                work._finish(fn(*args))
            except BaseException as e:  # delivered through the handle
                work._finish(error=e)
        threading.Thread(target=go, daemon=True).start()
        return work

    def broadcast_object(self, obj=None, src: int = 0):
        """Rank ``src``'s picklable ``obj`` on every rank (peers are authenticated)."""
        src = self._check_rank(src, "src")
        payload = np.frombuffer(pickle.dumps(obj, protocol=5), np.uint8) if self.rank == src else None
        size = np.array([payload.size if payload is not None else 0], np.int64)
        self.broadcast(size, src)
        data = payload.copy() if payload is not None else np.empty(int(size[0]), np.uint8)
        self.broadcast(data, src)
        return obj if self.rank == src else pickle.loads(data.tobytes())

    def allgather_object(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order."""
        payload = np.frombuffer(pickle.dumps(obj, protocol=5), np.uint8).copy()
        return [pickle.loads(p.tobytes()) for p in self.allgather(payload)]

    # ------------------------------------------------------------- sub-groups
    def new_group(self, ranks, name: str | None = None):
        """A communicator over ``ranks`` (of this group); every rank of this group calls it.

        Returns None on ranks not in ``ranks``. The new group's rank order
        follows ``ranks``.
        """
        ranks = [self._check_rank(r, "ranks entry") for r in ranks]
        if len(set(ranks)) != len(ranks) or not ranks:
            raise ValueError(f"new_group needs a non-empty list of distinct ranks, got {ranks}")
        self._subgroups += 1
        sub = name or f"{self.name}/g{self._subgroups}-" + "-".join(map(str, ranks))
        self.barrier()
        if self.rank not in ranks:
            return None
        return self._make_subgroup(ranks, sub)

    def split(self, color: int, key: int = 0, name: str | None = None):
        """Split into sub-groups of the ranks that pass the same ``color``.

        Within a sub-group ranks are ordered by ``(key, rank)``. A negative
        ``color`` (or None) takes no part and gets None. Collective.
        """
        self._subgroups += 1
        entries = self.allgather_object((color, key, self.rank))
        if color is None or (isinstance(color, int) and color < 0):
            return None
        members = [r for c, k, r in sorted(entries, key=lambda e: (e[1], e[2])) if c == color]
        return self._make_subgroup(members, name or f"{self.name}/s{self._subgroups}-{color}")

    def _make_subgroup(self, ranks: list[int], name: str):
        raise NotImplementedError

    def destroy(self) -> None:
        """Release the group's resources (shared memory, connections); idempotent."""
        if self._destroyed:
            return
        self._destroyed = True
        self._queue.close()
        try:
            self._close()
        finally:
            store = getattr(self, "_owned_store", None)  # hosted for init_group_from_env
            if store is not None:
                store.close()

    def _close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, rank={self.rank}, "
                f"world_size={self.world_size}, backend={self.backend!r})")

    def _fusion_key(self, t, op, out, prescale, postscale):
        return None

    # backends implement these
    def _do_allreduce(self, t, op, out, prescale, postscale): raise NotImplementedError
    def _do_grouped_allreduce(self, ts, op, prescale, postscale): raise NotImplementedError
    def _do_reduce(self, t, dst, op, out): raise NotImplementedError
    def _do_reduce_scatter(self, t, op, out): raise NotImplementedError
    def _do_allgather(self, t, out): raise NotImplementedError
    def _do_broadcast(self, t, src): raise NotImplementedError
    def _do_gather(self, t, dst): raise NotImplementedError
    def _do_scatter(self, parts, src, out): raise NotImplementedError
    def _do_alltoall(self, t, send_splits, recv_splits, out): raise NotImplementedError
    def _do_barrier(self): raise NotImplementedError
    def _do_send(self, t, dst, tag): raise NotImplementedError
    # an async send without a thread of its own (None: this backend has none)
    def _send_nowait(self, t, dst, tag): return None
    def _do_recv(self, t, src, tag): raise NotImplementedError


def _tf_args(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from (x for x in a if _tf.is_tf(x))
        elif _tf.is_tf(a):
            yield a


def _nbytes(t) -> int:
    n = getattr(t, "nbytes", None)
    if n is None and hasattr(t, "element_size"):
        n = t.numel() * t.element_size()
    return int(n or 0)


def split_sizes(n: int, parts: int) -> list[int]:
    """``numpy.array_split`` sizes of ``n`` rows into ``parts``."""
    q, r = divmod(n, parts)
    return [q + 1 if i < r else q for i in range(parts)]


def _tagged_call(fn, tag: int):
    def call(*args):
        with D.group_signature(tag, mix=False):
            return fn(*args)
    return call
