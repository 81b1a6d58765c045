"""Horovod's coordinator on a shoal communicator: ops matched by name, checked on every rank.

Each process set has one ``Engine``. An op call submits a ``Request`` and
returns; rounds run on the engine's thread (or on the caller's, when it waits
for its op at once): every rank publishes the requests it submitted since its
last round (name, kind, dtypes, shapes, reduce op, root, scale factors) and
every rank adds them to the same table. The common round, where every rank
announces the same list, costs one 24-byte allreduce (a digest of the list,
its negation and the clock); any other round allgathers the lists. When the
list is a batch of allreduces that would run as one collective and nothing
else is pending, a rank skips even that: it runs the collective at once,
tagged with the digest, and the ranks meet once a round instead of twice;
ranks whose lists differ all raise a mismatch in that first collective,
before any data moves, and allgather their lists as before. A name is *ready* once every rank that has
not joined has submitted it; every rank then takes the ready names in the
same order and either runs them (consecutive allreduces with the same dtype,
op and scale factors as one grouped collective: tensor fusion) or, when the
ranks' descriptions disagree, fails them with one and the same error on every
rank. So a mismatch raises the same error everywhere and the next op runs
normally, as in Horovod.

A rank that called ``join()`` keeps running rounds and stands in for the ops
the others still issue (zeros for allreduce, no rows for allgather). A rank
runs rounds only while it has requests in flight (or has joined), so an idle
job costs nothing. When every working rank waits on an op that is not ready
and nothing else is, the ranks waited on differently named ops: they all
raise. A name that some ranks never submit fails after the stall timeout.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time
from collections import deque

import numpy as np

from shoal.exceptions import CollectiveError

# request kinds
ALLREDUCE, ALLGATHER, BROADCAST, ALLTOALL, REDUCESCATTER, BARRIER, JOIN, ADD_SET, REMOVE_SET = (
    "allreduce", "allgather", "broadcast", "alltoall", "reducescatter", "barrier", "join",
    "add_process_set", "remove_process_set")
# ops that joined ranks stand in for; the others fail while a rank has joined (as in Horovod)
_JOINABLE = frozenset({ALLREDUCE, ALLGATHER, BARRIER})


class Request:
    """One submitted op: its tensors, its description for the other ranks, its handle."""

    __slots__ = ("key", "kind", "tensors", "op", "root", "pre", "post", "extra", "error",
                 "handle", "t0", "meta", "splits")

    def __init__(self, key, kind, tensors=(), op="sum", root=-1, pre=1.0, post=1.0, extra=None,
                 error=None):
        self.key, self.kind, self.tensors = key, kind, list(tensors)
        self.op, self.root, self.pre, self.post, self.extra = op, root, float(pre), float(post), extra
        self.error = error          # a local input error: every rank raises it
        self.splits = None          # alltoall: this rank's send counts (may differ by rank)
        self.handle = Handle()
        self.t0 = time.perf_counter()
        specs = tuple(_spec(t) for t in self.tensors)
        self.meta = (kind, specs, op, root, self.pre, self.post, extra)


class Handle:
    """Completion of one request: ``wait()`` returns its outputs or raises its error."""

    def __init__(self):
        self.event = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.waiting = False

    def done(self, result=None, error=None) -> None:
        self.result, self.error = result, error
        self.event.set()

    def wait(self, engine, bound: float | None):
        """The request's outputs; ``bound`` None: as long as the engine runs (its rounds
        are bounded by the communicator's timeout and the stall timeout)."""
        self.waiting = True
        try:
            engine.drive(self, None if bound is None else time.monotonic() + bound)
        finally:
            self.waiting = False
        if self.error is not None:
            raise self.error
        return self.result


_PACKED = "packed"


def packed_extra(shapes) -> tuple:
    """The description of a group packed into one buffer: its tensors' shapes."""
    return (_PACKED, tuple(tuple(int(d) for d in s) for s in shapes))


def is_packed(extra) -> bool:
    return isinstance(extra, tuple) and len(extra) == 2 and extra[0] == _PACKED


def _spec_text(meta, what: str):
    kind, specs, op, root, pre, post, extra = meta
    if what == "dtype":
        return [s[0] for s in specs]
    if what == "shape":
        return list(extra[1]) if is_packed(extra) else [s[1] for s in specs]
    if what == "trailing shape":
        return [s[1][1:] for s in specs]
    if what == "number of dimensions":
        return [len(s[1]) for s in specs]
    if what == "device":
        return [s[2] for s in specs]
    if what == "tensor count":
        return len(specs)
    return {"reduce op": op, "root rank": root, "prescale/postscale factors": (pre, post),
            "process set ranks": extra}[what]


# what must agree across ranks, per kind (beyond the kind itself)
_MUST_MATCH = {
    ALLREDUCE: ("tensor count", "dtype", "device", "shape", "reduce op",
                "prescale/postscale factors"),
    ALLGATHER: ("tensor count", "dtype", "device", "number of dimensions", "trailing shape"),
    BROADCAST: ("tensor count", "dtype", "device", "shape", "root rank"),
    ALLTOALL: ("tensor count", "dtype", "device", "number of dimensions", "trailing shape"),
    REDUCESCATTER: ("tensor count", "dtype", "device", "shape", "reduce op"),
    BARRIER: (), JOIN: (), ADD_SET: ("process set ranks",), REMOVE_SET: ("process set ranks",),
}


def check(key: str, entries: dict, set_ranks: list) -> str | None:
    """The error every rank raises for ``key`` (None: the ranks' calls agree)."""
    for r, (meta, err) in sorted(entries.items()):
        if err:
            return f"rank {set_ranks[r]} rejected its input to {meta[0]} {key!r}: {err}"
    items = sorted(entries.items())
    kinds = {meta[0] for _, (meta, _) in items}
    if len(kinds) > 1:
        calls = ", ".join(f"rank {set_ranks[r]} issued {m[0]}" for r, (m, _) in items)
        return (f"Mismatched Horovod operations on tensor {key!r}: {calls}; every rank must "
                "issue the same operation under one name")
    for what in _MUST_MATCH[items[0][1][0][0]]:
        vals = [_spec_text(m, what) for _, (m, _) in items]
        if any(v != vals[0] for v in vals[1:]):
            calls = ", ".join(f"rank {set_ranks[r]}: {v}" for (r, _), v in zip(items, vals))
            return (f"Mismatched {items[0][1][0][0]} {what} for tensor {key!r} ({calls}); "
                    f"every rank must pass the same {what}")
    return None


class _Entry:
    """A name in the table: each member's (description, local error), and when it was
    first announced (for the stall timeout)."""

    __slots__ = ("metas", "first")

    def __init__(self, first: float):
        self.metas: dict[int, tuple] = {}
        self.first = first


class Engine:
    """Negotiates and runs the ops of one process set (see the module docstring)."""

    def __init__(self, comm, set_ranks: list[int], timeline=None):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.world_size
        self.set_ranks = set_ranks            # global rank of each member
        self.timeline = timeline    # callable(name, kind, t_submit, t_start, t_end) or None
        self.stall_s = float(os.environ.get("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS") or
                             max(60.0, getattr(comm, "timeout", 300.0)))
        self._cond = threading.Condition()
        self._new: deque[Request] = deque()   # submitted, not yet announced
        self._mine: dict[str, Request] = {}   # announced or not, not finished (by name)
        self._table: dict[str, _Entry] = {}   # identical on every rank
        self._joined: dict[int, int] = {}     # member -> round it joined (identical everywhere)
        self._join_req: Request | None = None
        self._rounds = 0
        self._noname = 0
        self._speculate = True      # the last round was common: run the next one speculatively
        self._mismatch_next = False
        self._thread: threading.Thread | None = None
        self._round_lock = threading.Lock()  # one thread runs rounds at a time
        self._closed = False
        self.broken: str | None = None

    # ------------------------------------------------------------ submission
    def auto_name(self, kind: str) -> str:
        """The name of an unnamed op: the n-th unnamed op of this set, the same on every rank."""
        with self._cond:
            self._noname += 1
            return f"noname.{self._noname}"

    def submit(self, req: Request, wake: bool = True) -> Handle:
        """Queue ``req``; ``wake=False`` when the caller waits for it at once (it then runs
        the rounds itself, saving two thread switches per synchronous op)."""
        with self._cond:
            if self.broken is not None:
                raise CollectiveError(f"the Horovod engine stopped: {self.broken}; call "
                                      "hvd.shutdown() and hvd.init() to form a new group")
            if req.key in self._mine:
                raise ValueError(
                    f"Requested to {req.kind} a tensor with the same name ({req.key!r}) as "
                    "another tensor that is currently being processed. If you want to request "
                    "another tensor, use a different tensor name.")
            self._mine[req.key] = req
            self._new.append(req)
            if self.size > 1:
                self._start()
                if wake:
                    self._cond.notify_all()
        if self.size == 1:
            self._safe_round()          # no one to agree with: run it now, in this thread
        return req.handle

    def drive(self, handle: Handle, deadline: float | None) -> None:
        """Wait for ``handle``, running rounds in this thread while no other thread does."""
        idle = 0
        while not handle.event.is_set():
            if self.broken is not None:
                raise CollectiveError(f"the Horovod engine stopped: {self.broken}")
            if deadline is not None and time.monotonic() > deadline:
                raise CollectiveError("Horovod op did not finish in time; check that every "
                                      "rank issues it")
            if self._round_lock.acquire(blocking=False):
                try:
                    progressed = handle.event.is_set() or self._safe_round()
                finally:
                    self._round_lock.release()
                idle = 0 if progressed else min(idle + 1, 20)
                if idle:
                    handle.event.wait(0.0005 * idle)
            else:   # the engine's thread is in a round: it goes on while requests are pending
                handle.event.wait(0.05)

    def _safe_round(self) -> bool:
        with self._cond:
            if not self._mine or self.broken is not None:
                return False
        try:
            return self._round()
        except BaseException as e:  # noqa: BLE001 - a dead or broken group ends the engine
            self.broken = f"{type(e).__name__}: {e}"
            self._fail_all(e if isinstance(e, CollectiveError) else
                           CollectiveError(f"Horovod engine failed: {self.broken}"))
            return True

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"shoal-horovod-{self.comm.name}")
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._fail_all(CollectiveError("hvd.shutdown() was called before this op finished"))

    # ------------------------------------------------------------ the loop
    def _loop(self) -> None:
        idle = 0
        while True:
            with self._cond:
                while not self._closed and not self._mine:
                    self._cond.wait()
                if self._closed or self.broken is not None:
                    return
            with self._round_lock:
                progressed = self._safe_round()
            # nothing ready: back off a little so that waiting ranks do not spin
            idle = 0 if progressed else min(idle + 1, 20)
            if idle:
                with self._cond:
                    if not self._new:
                        self._cond.wait(0.0005 * idle)

    def _fail_all(self, err) -> None:
        with self._cond:
            pending = list(self._mine.values())
            self._mine.clear()
            self._new.clear()
            self._join_req = None
        for req in pending:
            if not req.handle.event.is_set():
                req.handle.done(error=err)

    def _round(self) -> bool:
        """One negotiation; runs what became ready. Returns whether anything ran."""
        with self._cond:
            new = list(self._new)
            self._new.clear()
            for req in new:
                if req.kind == JOIN:
                    self._join_req = req
            blocked = [k for k, r in self._mine.items() if r.handle.waiting]
        joined = self._join_req is not None
        announce = [(r.key, r.meta, r.error) for r in new if r.kind != JOIN]
        if self.size > 1 and not joined and self._speculate and self._speculative(new, announce):
            return True
        msg = (joined, announce, blocked, self._noname, time.time())
        msgs, now = self._exchange(msg) if self.size > 1 else ([msg], msg[4])
        self._rounds += 1
        for member, (has_joined, reqs, _, _, _) in enumerate(msgs):
            if has_joined and member not in self._joined:
                self._joined[member] = self._rounds
            for key, meta, err in reqs:
                e = self._table.get(key)
                if e is None:
                    e = self._table[key] = _Entry(now)   # the same clock everywhere
                e.metas[member] = (meta, err)
        working = [m for m in range(self.size) if m not in self._joined]
        ready = [k for k, e in self._table.items() if all(w in e.metas for w in working)]
        ready_entries = [(k, self._table.pop(k)) for k in ready]
        failed = self._stalls(msgs, working, now, deadlock=not ready) if working and self._table \
            else {}
        self._run(ready_entries)
        for k, why in failed.items():
            self._table.pop(k, None)
            self._finish_error(k, CollectiveError(why))
        if not working:
            self._finish_join(msgs)
        return bool(ready or failed or not working)

    def _speculative(self, new: list, announce: list) -> bool:
        """The common round folded into the data: when nothing is pending in the table and
        every new request is an allreduce that would run as one fused collective, run that
        collective at once, tagged with the digest of the list (``Communicator.tagged``). If
        every rank announced the same list the tags agree and the round is done with one
        meeting of the ranks instead of two; if not, every rank's first collective of the
        round (this one, or another rank's digest allreduce) raises a mismatch before any
        data moves, and all of them agree by allgathering their lists (``_exchange``).
        Returns whether the round ran."""
        if self._table or self._joined or not new:
            return False
        sig = None
        for r in new:
            if r.kind != ALLREDUCE or r.error is not None:
                return False
            s = _fusion_sig(r.meta)
            if sig is not None and s != sig:
                return False
            sig = s
        tag = _digest((False, announce)) | 1
        batch = [(r.key, r, r.meta) for r in new]
        t_start = time.perf_counter()
        try:
            with self.comm.tagged(tag):
                self._collective(batch)
        except CollectiveError as e:
            if getattr(e, "fatal", False) or not getattr(e, "mismatch", False):
                raise
            self._disagreed()
            return False
        except (TypeError, ValueError, RuntimeError):
            # rejected on this rank's side: the others raised a mismatch; the agreed round
            # runs it again and fails it the usual way
            self._disagreed()
            return False
        self._rounds += 1
        with self._cond:
            for r in new:
                self._mine.pop(r.key, None)
        self._done(batch, None, t_start, time.perf_counter())
        return True

    def _disagreed(self) -> None:
        # the lists differed: the ranks are out of step (names announced over two rounds),
        # so the next round agrees first; speculation resumes after a common round
        self._speculate = False
        self._mismatch_next = True

    def _exchange(self, msg) -> tuple[list, float]:
        """Every member's message, and the latest clock among them. The common round (every rank announces the same new ops,
        none joined) costs one 24-byte allreduce of a digest; otherwise the messages are
        allgathered (joins, mismatches, ops in different orders, stalls)."""
        joined, announce = msg[0], msg[1]
        # every rank takes the same path: the digest covers all that decides it
        h = _digest((joined, announce))
        # the latest clock of any rank comes along, so stall verdicts agree everywhere
        v = np.array([h, -h, int(msg[4] * 1000)], np.int64)
        if self._mismatch_next:     # a speculative round just failed on every rank
            self._mismatch_next = False
        else:
            try:
                self.comm.allreduce(v, op="max")
            except CollectiveError as e:
                # another rank ran its round speculatively (``_speculative``) with a list
                # that differs from ours: every rank now allgathers
                if getattr(e, "fatal", False) or not getattr(e, "mismatch", False):
                    raise
            else:
                if int(v[0]) == -int(v[1]) and announce and not joined and not self._joined:
                    self._speculate = True
                    return [msg] * self.size, int(v[2]) / 1000  # max == min: all sent this list
        msgs = self.comm.allgather_object(msg)
        return msgs, max(m[4] for m in msgs)

    def _stalls(self, msgs, working, now, deadlock: bool) -> dict:
        """Names that can never become ready: the same verdict on every rank."""
        waits = {w: msgs[w][2] for w in working}
        if deadlock and all(waits.values()):
            # every working rank waits on an op the others have not issued: a deadlock
            calls = ", ".join(f"rank {self.set_ranks[w]} waits for {v[0]!r}" for w, v in waits.items())
            why = (f"Mismatched Horovod tensor names: {calls}, and none of them was submitted by "
                   "every rank; ranks must issue collectives with the same names")
            return {k: why for v in waits.values() for k in v if k in self._table}
        out = {}
        for k, e in self._table.items():
            if now - e.first > self.stall_s:
                missing = [self.set_ranks[w] for w in working if w not in e.metas]
                out[k] = (f"tensor {k!r} was submitted by ranks "
                          f"{[self.set_ranks[m] for m in sorted(e.metas)]} but not by ranks "
                          f"{missing} within {self.stall_s:.0f}s (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS)")
        return out

    def _finish_error(self, key: str, err: BaseException) -> None:
        with self._cond:
            req = self._mine.pop(key, None)
        if req is not None:
            req.handle.done(error=err)

    def _finish_join(self, msgs) -> None:
        last = max(self._joined, key=lambda m: (self._joined[m], m))
        self._joined.clear()
        with self._cond:
            req, self._join_req = self._join_req, None
            self._noname = max(m[3] for m in msgs)   # unnamed ops issued meanwhile by others
            if req is not None:
                self._mine.pop(req.key, None)
        if req is not None:
            req.handle.done(self.set_ranks[last])

    # ------------------------------------------------------------ execution
    def _run(self, ready: list) -> None:
        """Run (or fail) the ready names in order; consecutive compatible allreduces as one."""
        batch: list = []
        sig = None
        for key, entry in ready:
            meta = next(iter(entry.metas.values()))[0]
            kind = meta[0]
            why = check(key, entry.metas, self.set_ranks)
            if why is None and self._joined and kind not in _JOINABLE:
                why = (f"hvd.{kind} ({key!r}) is not supported while ranks "
                       f"{sorted(self.set_ranks[m] for m in self._joined)} have called hvd.join() "
                       "(as in Horovod); only allreduce, allgather and barrier run with joined "
                       "ranks. Issue it after every rank has returned from join().")
            with self._cond:
                req = self._mine.pop(key, None)
            if why is not None:
                self._flush(batch)
                batch, sig = [], None
                if req is not None:
                    req.handle.done(error=_mismatch(why))
                continue
            if kind == ALLREDUCE:
                s = _fusion_sig(meta)
                if batch and s != sig:
                    self._flush(batch)
                    batch = []
                batch.append((key, req, meta))
                sig = s
                continue
            self._flush(batch)
            batch, sig = [], None
            self._guarded([(key, req, meta)], lambda: self._run_one(kind, req, meta))
        self._flush(batch)

    def _flush(self, batch: list) -> None:
        if batch:
            self._guarded(batch, lambda: self._collective(batch))

    def _collective(self, batch: list) -> None:
        """One allreduce of a fused batch of allreduces (stand-in zeros for joined ranks)."""
        _, _, meta = batch[0]
        op, pre, post = meta[2], meta[4], meta[5]
        tensors = [t for key, req, m in batch for t in (req.tensors if req else _zeros(m[1]))]
        if len(tensors) == 1:   # no packing for a lone tensor
            self.comm.allreduce(tensors[0], op=op, prescale=pre, postscale=post)
        else:
            self.comm.grouped_allreduce(tensors, op=op, prescale=pre, postscale=post)

    def _guarded(self, batch: list, fn) -> None:
        """Run one collective for ``batch``; a non-fatal error fails just its requests."""
        t_start = time.perf_counter()
        try:
            result = fn()
        except CollectiveError as e:
            if getattr(e, "fatal", False) or not getattr(e, "mismatch", False):
                raise
            self._fail_batch(batch, e)
            return
        except (TypeError, ValueError, RuntimeError) as e:
            # rejected on this rank's side (the collective told the others with an error record)
            self._fail_batch(batch, e)
            return
        self._done(batch, result, t_start, time.perf_counter())

    @staticmethod
    def _fail_batch(batch: list, err: BaseException) -> None:
        for _, req, _ in batch:
            if req is not None:
                req.handle.done(error=err)

    def _done(self, batch: list, result, t_start: float, t_end: float) -> None:
        for key, req, meta in batch:
            if req is None:
                continue
            if self.timeline is not None:
                self.timeline(key, meta[0], req.t0, t_start, t_end)
            req.handle.done(req.tensors if result is None else result)

    def _run_one(self, kind, req, meta):
        comm, specs = self.comm, meta[1]
        ts = req.tensors if req is not None else _zeros(specs, rows=0)
        if kind == ALLGATHER:
            if len(ts) == 1:
                return [_cat(comm.allgather(ts[0]), ts[0])]
            return [_cat(parts, t) for parts, t in zip(comm.grouped_allgather(ts), ts)]
        if kind == BARRIER:
            comm.barrier()
            return []
        if kind == BROADCAST:
            if len(ts) == 1:
                comm.broadcast(ts[0], src=meta[3])
            else:
                comm.grouped_broadcast(ts, src=meta[3])
            return ts
        if kind == REDUCESCATTER:
            if meta[4] != 1.0:
                ts = [t * meta[4] for t in ts]
            if len(ts) == 1:
                outs = [_like(comm.reduce_scatter(ts[0], op=meta[2]), ts[0])]
            else:
                outs = [_like(o, t) for o, t in zip(comm.grouped_reduce_scatter(ts, op=meta[2]), ts)]
            if meta[5] != 1.0:
                outs = [o * meta[5] for o in outs]
            return outs
        if kind == ALLTOALL:
            t, send = ts[0], req.splits
            recv = comm.alltoall(np.array(send, dtype=np.int64))
            out = comm.alltoall(t, send_splits=send)
            return [_like(out, t), _like(recv.astype(np.int32), t)]
        if kind == ADD_SET:
            return comm.new_group(list(meta[6]))
        if kind == REMOVE_SET:
            return None
        raise AssertionError(kind)


def _fusion_sig(meta) -> tuple:
    """What consecutive allreduces must share to run as one collective: reduce op,
    prescale, postscale and devices."""
    return meta[2], meta[4], meta[5], tuple(sorted({d for _, _, d in meta[1]}))


def _digest(obj) -> int:
    """A 56-bit digest of a round's announcement (the same on every rank that sent it)."""
    blob = pickle.dumps(obj, protocol=5)
    return int.from_bytes(hashlib.blake2b(blob, digest_size=7).digest(), "little")


def _spec(t) -> tuple:
    """(dtype, shape, device) of a torch tensor or a NumPy array (device "numpy": the
    array API of shoal.horovod.tensorflow, which hands the engine NumPy views)."""
    if isinstance(t, np.ndarray):
        return t.dtype.name, t.shape, "numpy"
    return str(t.dtype).replace("torch.", ""), tuple(t.shape), t.device.type


def _cat(parts, like):
    """Every rank's rows, concatenated, as the kind of ``like`` (torch tensor or array)."""
    if isinstance(like, np.ndarray):
        return np.concatenate([np.asarray(p) for p in parts])
    import torch  # a torch tensor came in: torch is loaded (the TF faces never get here)
    return torch.cat([torch.as_tensor(p) for p in parts])


def _like(x, like):
    if isinstance(like, np.ndarray):
        return np.asarray(x)
    import torch
    return torch.as_tensor(x)


def _zeros(specs, rows=None) -> list:
    """Stand-ins for a joined rank: zeros shaped as the working ranks' tensors (``rows``:
    override dimension 0, e.g. no rows for an allgather)."""
    out = []
    for dtype, shape, device in specs:
        if rows is not None and shape:
            shape = (rows, *shape[1:])
        if device == "numpy":
            out.append(np.zeros(shape, dtype=dtype))
            continue
        import torch
        out.append(torch.zeros(shape, dtype=getattr(torch, dtype), device=device))
    return out


def _mismatch(why: str) -> CollectiveError:
    err = CollectiveError(why)
    err.mismatch = True
    return err
