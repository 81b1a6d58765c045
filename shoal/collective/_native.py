"""The native backend: shared memory within a host, authenticated TCP between hosts.

On one host every collective runs over the host's shared-memory segment
(_shm). When a group spans hosts, allreduce and broadcast are hierarchical
(reduce within each host through shared memory, across host leaders over
TCP, back through shared memory) and the other collectives run over TCP
(_multihost). Small allreduces use a one-shot algorithm (one synchronisation;
each rank reduces all contributions), large ones a reduce-scatter + allgather
over shared memory in pipelined segments, like a ring. send/recv between two
ranks of one host go through a ring of that pair in the segment (_shm_p2p),
between hosts over TCP.
"""
from __future__ import annotations

import pickle
import struct
import threading

import numpy as np

from shoal.collective import _descriptor as D
from shoal.collective import _multihost as MH
from shoal.collective._buffers import (DTYPES, Reducer, as_buffer, dtype_code, empty_like_buffer,
                                       is_torch_tensor)
from shoal.collective import _personalized as PX
from shoal.collective._fusion import Fuser
from shoal.collective._rendezvous import rendezvous
from shoal.collective._shm_p2p import ShmP2P
from shoal.collective.communicator import Communicator, split_sizes
from shoal.collective._work import Work
from shoal.collective.config import NativeConfig
from shoal.collective.timeline import Timeline, with_op_stats
from shoal.exceptions import CollectiveError

_P2P = struct.Struct("!qqq")  # tag, nbytes, dtype code


class _SendWork(Work):
    """The handle of a ``send(async_op=True)``: done once its header and payload left."""

    def __init__(self, description, pendings, data, timeout):
        super().__init__(description)
        self._pendings, self._data, self._timeout = pendings, data, timeout

    def is_completed(self) -> bool:
        return all(p.is_done() for p in self._pendings)

    def wait(self, timeout: float | None = None):
        """Block until the send left (at most ``timeout``, default the group's); returns None."""
        bound = self._timeout if timeout is None else timeout
        try:
            for p in self._pendings:
                p.wait(bound)
        except CollectiveError as e:
            raise CollectiveError(f"{self.description}: {e}") from e
        self._data = None
        return None


def _bytes(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


def _row_elems(shape) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1


class NativeCommunicator(Communicator):
    """Collectives on CPU memory among processes: see the module docstring."""

    backend = "native"
    nonblocking_send = True

    def __init__(self, rank: int, world_size: int, store, name: str = "default",
                 timeout: float = 300.0, config: NativeConfig | None = None):
        self.config = config or NativeConfig()
        self._fuser = Fuser(self, self.config.fusion)
        super().__init__(rank, world_size, name, timeout)
        self.store = store
        self.prefix, self.topology, self.shm, self.mesh = rendezvous(
            rank, world_size, store, name, timeout, self.config.segment_bytes, self.config.listen_host,
            self.config.p2p_ring_bytes)
        # send/recv to a rank of this host go through the segment's rings, the rest over TCP
        self._p2p_shm = ShmP2P(self.shm) if self.shm is not None and self.shm.R else None
        self.timeline = with_op_stats(Timeline.for_rank(self.config.timeline, name, rank),
                                      store, name, rank)
        if self.shm is not None and self.timeline.enabled:
            self.shm.timeline = self.timeline
        self._cuda = None
        self._p2p_lock = threading.Lock()
        self._p2p_sends: dict = {}   # dst -> the latest send(async_op=True) to it
        self._scratch: dict[str, np.ndarray] = {}
        self._reducers: dict[tuple, Reducer] = {}
        self._descs: dict[tuple, np.ndarray] = {}
        self._barrier_now()

    def _barrier_now(self) -> None:
        if self.world_size > 1:
            self._do_barrier()

    def _fusion_handler(self):
        return self._fuser.handle

    def _fusion_key(self, t, op, out, prescale, postscale):
        if self._is_cuda(t):
            return None
        return self._fuser.key(t, op, out, prescale, postscale)

    @property
    def single_host(self) -> bool:
        return self.topology.single_host

    # --------------------------------------------------------------- helpers
    def _traced(self, name: str, nbytes: int):
        return self.timeline.op(name, nbytes)

    def _reject(self, kind: str, err: Exception) -> None:
        """This rank's input is invalid: join the op with an error record so the others raise."""
        if self.world_size == 1:
            return
        desc, msg = D.error(kind, f"{type(err).__name__}: {err}", self._meta_world())
        try:
            if self.single_host:
                self.shm.fail(desc, msg)
            else:
                MH.exchange_descs(self, desc, msg)
        except CollectiveError:
            pass

    def _meta_world(self) -> int:
        return self.topology.local_ranks.__len__() if self.single_host else self.world_size

    def _prepare(self, kind: str, fn):
        try:
            return fn()
        except (TypeError, ValueError) as e:
            self._reject(kind, e)
            raise

    # ------------------------------------------------------------- CUDA
    def _cuda_route(self, decide: bool = True):
        """Where this group's CUDA tensors go: a NCCL communicator, or "host".

        Decided once, by every rank together at the group's first collective
        on CUDA tensors: NCCL when it is available and each rank has a GPU of
        its own; else (ranks sharing one GPU, which NCCL refuses, or no NCCL)
        the tensors are staged through host memory and reduced over shared
        memory / TCP like CPU ones. ``NativeConfig.cuda`` forces either.
        """
        if self._cuda is not None or not decide:
            return self._cuda
        import torch
        choice = self.config.cuda
        if choice == "auto":
            if not torch.distributed.is_nccl_available():
                mine = None
            else:
                props = torch.cuda.get_device_properties(torch.cuda.current_device())
                mine = (self.topology.host_of[self.rank], str(getattr(props, "uuid", "")) or
                        f"{props.name}/{torch.cuda.current_device()}")
            payload = np.frombuffer(pickle.dumps(mine, protocol=5), np.uint8).copy()
            everyone = [pickle.loads(p.tobytes()) for p in self._do_allgather(payload, None)]
            distinct = None not in everyone and len(set(everyone)) == len(everyone)
            choice = "nccl" if distinct else "host"
        if choice == "host":
            self._cuda = "host"
        else:
            from shoal.collective._torch_backend import TorchCommunicator
            self._cuda = TorchCommunicator(self.rank, self.world_size, self.store,
                                           name=f"{self.name}/nccl", timeout=self.timeout,
                                           device="cuda")
        return self._cuda

    @staticmethod
    def _is_cuda(t) -> bool:
        return is_torch_tensor(t) and t.device.type == "cuda"

    def _any_cuda(self, x) -> bool:
        if isinstance(x, (list, tuple)):
            return any(self._any_cuda(v) for v in x)
        return self._is_cuda(x)

    def _on_cuda(self, op: str, *args, decide: bool = True):
        """Run ``_do_<op>`` on CUDA tensors: through NCCL, or staged through host memory."""
        import torch
        route = self._cuda_route(decide)
        if route is not None and route != "host":
            return getattr(route, "_do_" + op)(*args)
        staged: list = []          # (host copy, the caller's CUDA tensor)

        def down(x):
            if isinstance(x, (list, tuple)):
                return type(x)(down(v) for v in x)
            if self._is_cuda(x):
                for h, y in staged:
                    if y is x:          # the same tensor passed twice (out=t): one host copy
                        return h
                h = x.detach().to("cpu")
                staged.append((h, x))
                return h
            return x
        host_args = [down(args[0])]
        # the first argument of these is only read: no copy back to the GPU
        n_read_only = len(staged) if op in ("allgather", "gather", "alltoall", "send",
                                            "scatter") else 0
        host_args += [down(a) for a in args[1:]]
        res = getattr(self, "_do_" + op)(*host_args)
        back = {id(h): x for h, x in staged}
        device = staged[0][1].device if staged else None
        with torch.no_grad():
            for h, x in staged[n_read_only:]:
                x.copy_(h)

        def up(r):
            if isinstance(r, (list, tuple)):
                return type(r)(up(v) for v in r)
            if id(r) in back:
                return back[id(r)]
            if is_torch_tensor(r) and device is not None:
                return r.to(device)
            return r
        return up(res)

    # ------------------------------------------------------------ allreduce
    def _do_allreduce(self, t, op, out, prescale, postscale):
        if self._is_cuda(t):
            return self._on_cuda("allreduce", t, op, out, prescale, postscale)

        def prep():
            buf = as_buffer(t)
            ob = buf if out is None else as_buffer(out, name="out")
            if ob.shape != buf.shape or ob.dtype_name != buf.dtype_name:
                raise ValueError(f"out has shape {ob.shape} and dtype {ob.dtype_name}; it must match "
                                 f"the input's {buf.shape} and {buf.dtype_name}")
            return buf, ob, self._reducer(op, buf.dtype_name, prescale, postscale)
        buf, ob, reducer = self._prepare("allreduce", prep)
        self._allreduce_flat(buf.flat, ob.flat, reducer, "allreduce", buf.shape)
        ob.finish()
        return t if out is None else out

    def _allreduce_flat(self, src, dst, reducer, kind, shape, root: int | None = None):
        if self.world_size == 1:
            if root is None or root == self.rank:
                reducer.reduce(dst, [src])
            return
        desc = self._desc(kind, reducer.op, reducer.dtype_name, shape, -1 if root is None else root)
        take = root is None or root == self.rank
        with self._traced(kind, src.nbytes):
            self._guarded(lambda: (
                self.shm.allreduce(src, dst if take else None, reducer, desc, self.config.small_bytes)
                if self.single_host else MH.allreduce(self, src, dst if take else None, reducer, desc)))

    def _desc(self, kind, rop, dtype, shape, root) -> np.ndarray:
        """The descriptor of a reduction, cached: training repeats the same calls."""
        key = (kind, rop, dtype, shape, root, D.current_group_signature())
        d = self._descs.get(key)
        if d is None:
            if len(self._descs) > 256:
                self._descs.clear()
            d = self._descs[key] = D.make(kind, rop=rop, dtype=dtype, shape=shape, root=root,
                                          world=self._meta_world())
            d.flags.writeable = False
        return d

    def _reducer(self, op, dtype_name, prescale=1.0, postscale=1.0) -> Reducer:
        """A cached Reducer (it keeps its scratch buffers between ops)."""
        key = (op, dtype_name, prescale, postscale)
        r = self._reducers.get(key)
        if r is None:
            if len(self._reducers) > 64:
                self._reducers.clear()
            r = self._reducers[key] = Reducer(op, dtype_name, self.world_size, prescale, postscale)
        return r

    def _guarded(self, fn):
        try:
            return fn()
        except CollectiveError as e:
            if not getattr(e, "mismatch", False):  # a dead, late or unreachable rank
                e.fatal = True
                if self.shm is not None:
                    self.shm.abort(str(e))
            raise

    def _do_grouped_allreduce(self, ts, op, prescale, postscale):
        if not ts:
            return ts
        if self._any_cuda(ts):
            return self._on_cuda("grouped_allreduce", ts, op, prescale, postscale)
        bufs = self._prepare("fused_allreduce", lambda: [as_buffer(t) for t in ts])
        self._fuser.reduce_buffers(bufs, op, prescale, postscale)
        return ts

    def _do_reduce(self, t, dst, op, out):
        if self._is_cuda(t):
            return self._on_cuda("reduce", t, dst, op, out)

        def prep():
            buf = as_buffer(t)
            ob = buf if out is None else as_buffer(out, name="out")
            if ob.shape != buf.shape or ob.dtype_name != buf.dtype_name:
                raise ValueError(f"out has shape {ob.shape}; it must match the input's {buf.shape}")
            return buf, ob, self._reducer(op, buf.dtype_name)
        buf, ob, reducer = self._prepare("reduce", prep)
        self._allreduce_flat(buf.flat, ob.flat, reducer, "reduce", buf.shape, root=dst)
        if self.rank == dst:
            ob.finish()
        return t if out is None else out

    def _do_reduce_scatter(self, t, op, out):
        if self._is_cuda(t):
            return self._on_cuda("reduce_scatter", t, op, out)

        def prep():
            buf = as_buffer(t)
            if not buf.shape:
                raise ValueError("reduce_scatter needs a tensor with at least one dimension "
                                 "(it splits dimension 0 among the ranks)")
            rows = split_sizes(buf.shape[0], self.world_size)
            oshape = (rows[self.rank],) + buf.shape[1:]
            if out is None:
                res, ob = empty_like_buffer(buf, oshape)
            else:
                res, ob = out, as_buffer(out, name="out")
                if ob.shape != oshape or ob.dtype_name != buf.dtype_name:
                    raise ValueError(f"out has shape {ob.shape}; rank {self.rank}'s part is {oshape}")
            return buf, ob, res, rows, Reducer(op, buf.dtype_name, self.world_size)
        buf, ob, res, rows, reducer = self._prepare("reduce_scatter", prep)
        re = _row_elems(buf.shape)
        offs = np.concatenate([[0], np.cumsum(rows)]) * re
        parts = [(int(offs[q]), int(offs[q + 1])) for q in range(self.world_size)]
        if self.world_size == 1:
            reducer.reduce(ob.flat, [buf.flat])
        else:
            desc = D.make("reduce_scatter", rop=op, dtype=buf.dtype_name, shape=buf.shape,
                          world=self._meta_world())
            with self._traced("reduce_scatter", buf.array.nbytes):
                self._guarded(lambda: (
                    self.shm.reduce_scatter(buf.flat, ob.flat, parts, reducer, desc)
                    if self.single_host else MH.reduce_scatter(self, buf.flat, ob.flat, parts,
                                                               reducer, desc)))
        ob.finish()
        return res

    # ------------------------------------------------------------ movement
    def _exchange(self, kind, send: np.ndarray, desc: np.ndarray, ranges, sink):
        """Byte-stream exchange (see ShmGroup.exchange) on this group's transport."""
        with self._traced(kind, send.nbytes):
            return self._guarded(lambda: (
                self.shm.exchange(send, desc, ranges, sink) if self.single_host
                else MH.exchange(self, send, desc, ranges, sink)))

    def scratch(self, key: str, nbytes: int) -> np.ndarray:
        """A reusable uint8 work buffer of at least ``nbytes`` (one per key)."""
        b = self._scratch.get(key)
        if b is None or b.size < nbytes:
            b = np.empty(max(nbytes, 1 << 16), np.uint8)
            self._scratch[key] = b
        return b[:nbytes]

    def _do_broadcast(self, t, src):
        if self._is_cuda(t):
            return self._on_cuda("broadcast", t, src)
        buf = self._prepare("broadcast", lambda: as_buffer(t))
        if self.world_size == 1:
            return t
        data = _bytes(buf.array)
        desc = D.make("broadcast", dtype=buf.dtype_name, shape=buf.shape, root=src,
                      nbytes=data.size if self.rank == src else 0, world=self._meta_world())
        self._exchange("broadcast", data if self.rank == src else data[:0], desc,
                       lambda metas, c: [] if c == src else [(src, 0, D.nbytes_of(metas[src]))],
                       lambda metas: [] if self.rank == src else [data])
        if self.rank != src:
            buf.finish()
        return t

    def _gather_like(self, kind, t, out, root):
        """allgather (root None) and gather: returns the list of parts (None off-root)."""
        buf = self._prepare(kind, lambda: as_buffer(t))
        scalar = not buf.shape
        shape = (1,) if scalar else buf.shape
        data = _bytes(buf.array)
        row_bytes = _row_elems(shape) * buf.array.itemsize
        state = {}

        def ranges(metas, c):
            if root is not None and c != root:
                return []
            return [(q, 0, D.nbytes_of(m)) for q, m in enumerate(metas)]

        def sink(metas):
            if root is not None and self.rank != root:
                return []
            sizes = [D.nbytes_of(m) for m in metas]
            rows = [s // row_bytes if row_bytes else D.shape_of(m)[0] if D.shape_of(m) else 1
                    for s, m in zip(sizes, metas)]
            total = (sum(rows),) + shape[1:]
            res, ob = None, None
            if out is not None:
                try:
                    ob = as_buffer(out, name="out")
                    if ob.shape != total or ob.dtype_name != buf.dtype_name:
                        raise ValueError(f"out has shape {ob.shape} and dtype {ob.dtype_name}; the "
                                         f"gathered rows need {total} and {buf.dtype_name}")
                    res = out
                except (TypeError, ValueError) as e:
                    state["error"] = e
                    ob = None
            if ob is None:
                res, ob = empty_like_buffer(buf, total)
            state.update(res=res, ob=ob, rows=rows)
            dst = _bytes(ob.array)
            offs = np.concatenate([[0], np.cumsum(sizes)])
            return [dst[offs[q]:offs[q + 1]] for q in range(len(metas))]
        if self.world_size == 1:
            sink([D.make(kind, nbytes=data.size)])
            np.copyto(_bytes(state["ob"].array), data)
        else:
            desc = D.make(kind, dtype=buf.dtype_name, shape=shape, nbytes=data.size,
                          root=-1 if root is None else root, world=self._meta_world())
            self._exchange(kind, data, desc, ranges, sink)
        if "error" in state:
            raise state["error"]
        if "ob" not in state:
            return None
        state["ob"].finish()
        res, rows = state["res"], state["rows"]
        offs = np.concatenate([[0], np.cumsum(rows)]).astype(int)
        parts = [res[offs[q]:offs[q + 1]] for q in range(len(rows))]
        return [p.reshape(()) if scalar else p for p in parts]

    def _do_allgather(self, t, out):
        if self._is_cuda(t):
            return self._on_cuda("allgather", t, out)
        return self._gather_like("allgather", t, out, None)

    def _do_gather(self, t, dst):
        if self._is_cuda(t):
            return self._on_cuda("gather", t, dst)
        return self._gather_like("gather", t, None, dst)

    def _do_scatter(self, parts, src, out):
        if self._any_cuda(parts) or self._is_cuda(out):
            return self._on_cuda("scatter", parts, src, out)
        return PX.scatter(self, parts, src, out)

    def _do_alltoall(self, t, send_splits, recv_splits, out):
        if self._is_cuda(t):
            return self._on_cuda("alltoall", t, send_splits, recv_splits, out)
        return PX.alltoall(self, t, send_splits, recv_splits, out)

    def _do_barrier(self):
        if self.world_size == 1:
            return None
        desc = D.make("barrier", world=self._meta_world())
        self._exchange("barrier", np.empty(0, np.uint8), desc, lambda metas, c: [], lambda metas: [])
        return None

    # ------------------------------------------------------- point-to-point
    def _do_send(self, t, dst, tag):
        if self._is_cuda(t):   # p2p never decides the route: only two ranks take part
            return self._on_cuda("send", t, dst, tag, decide=False)
        queued = self._p2p_sends.get(dst)
        if queued is not None and not queued.is_completed():
            queued.wait(self.timeout)      # after the async sends before it, in order
        buf = as_buffer(t)
        data = _bytes(buf.array)
        path = self._p2p_path(dst)
        path.send(dst, _P2P.pack(tag, data.size, dtype_code(buf.dtype_name)), channel=1)
        path.send(dst, data, channel=1)
        return None

    def _p2p_path(self, peer: int):
        shm = self._p2p_shm
        return shm if shm is not None and shm.has(peer) else self.mesh

    def _send_nowait(self, t, dst, tag):
        # Written on the calling thread as far as the ring or socket takes it without blocking
        # (a pipeline's activation usually all of it); the rest goes to the transport's sender
        # thread, behind this peer's earlier sends: no thread hop on the common path.
        if self._is_cuda(t):
            return None
        buf = as_buffer(t)
        data = _bytes(buf.array)
        head = _P2P.pack(tag, data.size, dtype_code(buf.dtype_name))
        with self._p2p_lock:   # the header and its payload back to back in the stream
            parts = (self._p2p_path(dst).send_async(dst, data, channel=1, inline_bytes=1 << 62,
                                                   head=head),)
            work = self._p2p_sends[dst] = _SendWork(f"send to rank {dst} on {self.name!r}",
                                                   parts, data, self.timeout)
        return work

    def _do_recv(self, t, src, tag):
        if self._is_cuda(t):
            return self._on_cuda("recv", t, src, tag, decide=False)
        buf = as_buffer(t)
        data = _bytes(buf.array)
        head = bytearray(_P2P.size)
        path = self._p2p_path(src)
        path.recv_into(src, head, channel=1)
        rtag, nbytes, code = _P2P.unpack(head)
        if (rtag, nbytes, code) != (tag, data.size, dtype_code(buf.dtype_name)):
            sink = np.empty(nbytes, np.uint8)
            path.recv_into(src, sink, channel=1)  # keep the stream in step
            raise CollectiveError(
                f"recv from rank {src} expected tag {tag}, {data.size} bytes of {buf.dtype_name}; "
                f"the matching send had tag {rtag}, {nbytes} bytes of {DTYPES[code]}")
        path.recv_into(src, data, channel=1)
        buf.finish()
        return t

    # -------------------------------------------------------------- groups
    def _make_subgroup(self, ranks, name):
        return NativeCommunicator(ranks.index(self.rank), len(ranks), self.store, name=name,
                                  timeout=self.timeout, config=self.config)

    def _close(self) -> None:
        if self._cuda not in (None, "host"):
            self._cuda.destroy()
        self.timeline.close()
        if self._p2p_shm is not None:
            self._p2p_shm.close()
            self._p2p_shm = None
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        self.mesh.close()

    def flush_timeline(self) -> None:
        """Write the timeline (Chrome trace JSON) so far, if the group records one."""
        self.timeline.flush()

