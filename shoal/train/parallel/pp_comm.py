"""Pipeline parallelism's communication: a stage's sends and receives, off the critical path.

``Links`` moves one rank's activations and gradients. On CPU over a group
whose ``send(async_op=True)`` does not block (``nonblocking_send``, shoal's
native backend), a send is written on the training thread as far as the
connection takes it (a whole activation, usually) and the rest queued behind
it, and a receive is read on the training thread when the schedule needs it:
each neighbour's messages come in the order it sends them (each rank derives
every rank's schedule), so ``take`` reads that neighbour's stream up to the
message wanted, keeping any read on the way in a buffer per (kind, stage,
micro-batch). A message is then one write and one read, with no hand-off
between threads: on a host whose cores are all computing, each hand-off
(waking a helper thread, passing the GIL) put a fraction of a millisecond
on the pipeline's critical path twice per micro-batch. The transport's
buffers hold what is sent ahead (on one host the pair's shared-memory ring,
across hosts the kernel's socket buffers); a send they cannot take finishes
on the group's sender thread, so two ranks sending to each other never wait
on each other. Elsewhere (CUDA tensors, other backends) one sender thread
sends, and one receiver thread per neighbouring rank reads ahead of need;
a CUDA event orders them with the training thread's stream.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from shoal.exceptions import CollectiveError, InvalidInputError

_MAX_DIMS = 8
_TAG_STEP, _TAG_SHAPE, _TAG_ACT, _TAG_GRAD = 0x5001, 0x5002, 0x5003, 0x5004
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)


class Links:
    """A rank's pipeline messages: on the training thread on CPU, else on helper threads."""

    _pull_on_cpu = True     # False: helper threads on CPU too (tests cover that path without a GPU)

    def __init__(self, group, meta: dict, device=None):
        self.group, self.timeout = group, float(getattr(group, "timeout", 300.0))
        cpu = device is None or torch.device(device).type == "cpu"
        # on CPU the training thread reads (and, where sends cannot block, writes) itself
        self.pull = cpu and self._pull_on_cpu
        self.inline = self.pull and bool(getattr(group, "nonblocking_send", False))
        self.expected: dict = {}      # peer -> [messages still to read this step], pull mode
        self.works: list = []         # this step's async sends, inline mode
        self.cond = threading.Condition()
        self.slots: dict = {}
        self.meta = meta              # (kind, stage, i) -> (shape, dtype, requires_grad)
        self.error: BaseException | None = None
        self.sends = queue.SimpleQueue()
        self.unsent = 0               # sends queued and not yet done
        self.receiving = 0            # receive jobs (one per neighbour per step) not yet done
        self.bufs: dict = {}          # ("act", stage, i) -> the buffer reused step after step
        self.jobs: dict = {}
        self.threads = []
        if not self.inline:
            self.threads.append(threading.Thread(target=self._send_loop, daemon=True,
                                                 name=f"pipeline-send-{group.rank}"))
            self.threads[0].start()

    def receive(self, peer: int, job) -> None:
        """Expect this step's ``job`` = (messages, renegotiate, device) from ``peer``."""
        if self.pull:
            messages, renegotiate, device = job
            self.expected[peer] = [list(messages), 0, renegotiate, device]
            return
        if peer not in self.jobs:
            self.jobs[peer] = queue.SimpleQueue()
            t = threading.Thread(target=self._recv_loop, args=(peer,), daemon=True,
                                 name=f"pipeline-recv-{self.group.rank}-from-{peer}")
            self.threads.append(t)
            t.start()
        with self.cond:
            self.receiving += 1
        self.jobs[peer].put(job)

    # -- the training thread
    def send(self, t, dst: int, tag: int) -> None:
        """Send or queue ``t`` for rank ``dst`` (it must not change until the step's ``drain``)."""
        if self.inline:
            self._raise()
            self.works.append(self.group.send(t, dst, tag=tag, async_op=True))
            return
        with self.cond:
            self._raise()
            self.unsent += 1
        # on a GPU the sender waits for the work of this thread's stream that makes ``t``
        self.sends.put((t, dst, tag, _stream_event(t)))

    def take(self, key):
        """The received tensor of ``key`` = (kind, stage, microbatch), once it is here."""
        if self.pull:
            return self._pull(key)
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while key not in self.slots:
                self._raise()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CollectiveError(
                        f"pipeline rank {self.group.rank} waited {self.timeout:.0f}s for the "
                        f"{'activation' if key[0] == 'act' else 'gradient'} of stage {key[1]}, "
                        f"micro-batch {key[2]}; is every rank calling step() with the same schedule?")
                self.cond.wait(min(left, 1.0))
            t, ready = self.slots.pop(key)
        if ready is not None:      # this thread's stream waits for the receive's copy
            torch.cuda.current_stream(t.device).wait_event(ready)
        return t

    def drain(self) -> None:
        """Wait until every queued send has left and every receive job ended (a step's end)."""
        if self.pull:     # messages no action took (none in a complete step) keep the stream in step
            for peer, exp in self.expected.items():
                while exp[1] < len(exp[0]):
                    self._pull_next(peer, exp)
        if self.inline:
            works, self.works = self.works, []
            for w in works:
                w.wait(self.timeout)
            return
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while self.unsent or self.receiving:
                self._raise()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CollectiveError(
                        f"pipeline rank {self.group.rank}: {self.unsent} sends and {self.receiving} "
                        f"receive jobs did not complete within {self.timeout:.0f}s")
                self.cond.wait(min(left, 1.0))
            self._raise()

    def note_meta(self, key, meta) -> None:
        """Record what a message of ``key`` carries (a receiver may be waiting to know)."""
        with self.cond:
            self.meta[key] = meta
            self.cond.notify_all()

    def close(self) -> None:
        """Stop the helper threads."""
        self.sends.put(None)
        for q in self.jobs.values():
            q.put(None)
        for t in self.threads:
            t.join(timeout=5)

    def _raise(self):
        if self.error is not None:
            raise CollectiveError(f"pipeline rank {self.group.rank}: a transfer failed: "
                                  f"{self.error}") from self.error

    def _fail(self, e):
        with self.cond:
            self.error = self.error or e
            self.cond.notify_all()

    # -- pull mode: the training thread reads its neighbours' streams itself
    def _pull(self, key):
        kind, stage, _ = key
        p = self.group.world_size
        peer = (stage - 1) % p if kind == "act" else (stage + 1) % p
        exp = self.expected.get(peer)
        while key not in self.slots:
            if exp is None or exp[1] >= len(exp[0]):
                raise CollectiveError(
                    f"pipeline rank {self.group.rank}: the {'activation' if kind == 'act' else 'gradient'}"
                    f" of stage {stage}, micro-batch {key[2]} is not among the messages rank {peer} "
                    "sends this step; is every rank calling step() with the same schedule?")
            try:      # bounded by the group's timeout on its connection
                self._pull_next(peer, exp)
            except CollectiveError as e:
                raise CollectiveError(
                    f"pipeline rank {self.group.rank} waited for the "
                    f"{'activation' if kind == 'act' else 'gradient'} of stage {stage}, micro-batch "
                    f"{key[2]} from rank {peer}, which failed: {e}; is every rank alive and calling "
                    "step() with the same schedule?") from e
        return self.slots.pop(key)[0]

    def _pull_next(self, peer, exp):
        messages, k, renegotiate, device = exp
        exp[1] = k + 1
        self._receive(peer, *messages[k], renegotiate, device)

    # -- the helper threads
    def _send_loop(self):
        while True:
            item = self.sends.get()
            if item is None:
                return
            t, dst, tag, ready = item
            try:
                if self.error is None:
                    if ready is not None:
                        ready.synchronize()
                    self.group.send(t, dst, tag=tag)
            except BaseException as e:  # delivered to the training thread
                self._fail(e)
            with self.cond:
                self.unsent -= 1
                self.cond.notify_all()

    def _recv_loop(self, peer: int):
        jobs = self.jobs[peer]
        while True:
            job = jobs.get()
            if job is None:
                return
            messages, renegotiate, device = job
            try:
                for kind, stage, i in messages:
                    self._receive(peer, kind, stage, i, renegotiate, device)
            except BaseException as e:  # delivered to the training thread
                self._fail(e)
            with self.cond:
                self.receiving -= 1
                self.cond.notify_all()

    def _receive(self, peer, kind, stage, i, renegotiate, device):
        if kind == "act":
            if renegotiate:
                head = torch.empty(3 + _MAX_DIMS, dtype=torch.int64)
                self.group.recv(head, peer, tag=_TAG_SHAPE)
                self.note_meta(("in", stage, i), decode_meta(head))
            shape, dtype, requires_grad = self.meta[("in", stage, i)]
            tag = _TAG_ACT
        else:
            # a gradient comes for what this rank sent, and only if that needed one
            key = ("out", stage, i)
            deadline = time.monotonic() + self.timeout
            with self.cond:
                while key not in self.meta and self.error is None:
                    if time.monotonic() > deadline:
                        raise CollectiveError(f"stage {stage} never sent micro-batch {i}")
                    self.cond.wait(1.0)
                if self.error is not None:
                    return
            shape, dtype, requires_grad = self.meta[key]
            if not requires_grad:
                return
            tag = _TAG_GRAD
        if kind == "grad":     # used once: not kept, so 1F1B holds only the gradients in flight
            buf = torch.empty(shape, dtype=dtype, device=device)
        else:
            buf = self.bufs.get((kind, stage, i))
            if buf is None or buf.shape != shape or buf.dtype != dtype:
                buf = self.bufs[(kind, stage, i)] = torch.empty(shape, dtype=dtype, device=device)
        self.group.recv(buf, peer, tag=tag)
        ready = _stream_event(buf)
        with self.cond:
            self.slots[(kind, stage, i)] = (buf, ready)
            self.cond.notify_all()


def _stream_event(t: torch.Tensor):
    """An event after the work queued so far on ``t``'s device's current stream (GPU only)."""
    if not t.is_cuda:
        return None
    ev = torch.cuda.Event()
    ev.record(torch.cuda.current_stream(t.device))
    return ev


def encode_meta(meta) -> torch.Tensor:
    """(shape, dtype, requires_grad) as a fixed-size int64 header."""
    shape, dtype, requires_grad = meta
    if len(shape) > _MAX_DIMS:
        raise InvalidInputError(f"a pipeline activation has {len(shape)} dimensions; at most "
                                f"{_MAX_DIMS} are supported")
    if dtype not in _DTYPES:
        raise InvalidInputError(f"a pipeline activation has dtype {dtype}; supported: {_DTYPES}")
    head = torch.zeros(3 + _MAX_DIMS, dtype=torch.int64)
    head[0], head[1], head[2] = _DTYPES.index(dtype), len(shape), int(requires_grad)
    head[3:3 + len(shape)] = torch.tensor(shape, dtype=torch.int64)
    return head


def decode_meta(head: torch.Tensor):
    """The (shape, dtype, requires_grad) of an ``encode_meta`` header."""
    code, ndim, requires_grad = (int(v) for v in head[:3])
    return tuple(int(v) for v in head[3:3 + ndim]), _DTYPES[code], bool(requires_grad)


__all__ = ["Links", "encode_meta", "decode_meta"]
