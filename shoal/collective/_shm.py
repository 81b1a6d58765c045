"""Collectives among the ranks of one host through one shared-memory segment.

Layout of the segment (one file in /dev/shm, unlinked as soon as every local
rank has mapped it, so the kernel frees it when the last rank exits, even
after a crash):

    counters   per rank, on its own cache line: an int64 sequence number (its low
               half is the futex word) and an int64 "someone sleeps on it" flag
    abort      [flag, rank], then a message
    pids       the process id of every rank (to notice a dead one)
    meta       per rank and half: an op descriptor (see _descriptor)
    data       per rank and half: ``segment_bytes`` of staging space
    rings      per ordered pair of ranks (src, dst): a head line, a tail line and
               ``ring_bytes`` of data, the byte stream of src's sends to dst
               (_shm_p2p); absent when ``ring_bytes`` is 0. tmpfs allocates a
               page when it is first written, so pairs that never send cost
               no memory.

Synchronisation is a sequence number per rank: a rank publishes ``seq`` and
waits until every counter reaches it: it polls the shared memory briefly,
then sleeps on the laggard's counter with a futex, which that rank wakes when
it publishes - no socket, and no busy waiting on oversubscribed cores. Data
moves by NumPy copies and ufuncs in segments; the two halves alternate so a
rank fills the next segment while slower ranks still read the last one (each
use of a half contains at least one synchronisation, which orders the reads of
use i before the writes of use i+2).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import time

import numpy as np

from shoal.collective import _descriptor as D
from shoal.collective import _futex
from shoal.exceptions import CollectiveError

_LINE = 64
_MSG = 512
_SPIN_S = 0.0002  # how long a rank with a core of its own polls before it sleeps


def shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_LEFT = -1  # a rank's pid slot once it destroyed the group: peers waiting on it stop at once


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        return True


class ShmGroup:
    """The shared-memory transport of the ``local_size`` ranks of one host.

    Args:
        path: file of the segment; ``create`` makes it (the lowest local rank).
        local_rank, local_size: this rank's place among the host's ranks.
        segment_bytes: staging bytes per rank and half (bounds the memory:
            ``2 * local_size * segment_bytes``).
        timeout: seconds a rank waits for the others before raising.
        ring_bytes: bytes of each point-to-point ring (0: none).
    """

    def __init__(self, path: str, local_rank: int, local_size: int, segment_bytes: int,
                 create: bool, timeout: float, ranks: list[int], ring_bytes: int = 0):
        self.path, self.lr, self.p = path, local_rank, local_size
        self.ranks = ranks  # global rank of each local rank, for messages
        self.S = segment_bytes // _LINE * _LINE
        self.R = ring_bytes // _LINE * _LINE
        self.timeout = timeout
        self._mb = D.meta_bytes(local_size)
        self._ctl_off = 0
        self._abort_off = local_size * _LINE
        self._pid_off = self._abort_off + _LINE + _MSG
        self._meta_off = self._pid_off + (local_size * 8 + _LINE - 1) // _LINE * _LINE
        self._data_off = self._meta_off + local_size * 2 * self._mb
        self._ring_off = self._data_off + local_size * 2 * self.S
        self.size = self._ring_off + (local_size * (local_size - 1) * (2 * _LINE + self.R)
                                      if self.R else 0)
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, self.size)
            except OSError:
                os.close(fd)
                os.unlink(path)
                raise
        else:
            fd = os.open(path, os.O_RDWR)
        try:
            have = os.fstat(fd).st_size
            if have != self.size:   # a mapping past the file's end would crash on first touch
                raise CollectiveError(
                    f"the host's shared memory {path} has {have} bytes, this rank's settings give "
                    f"{self.size} (segment_bytes={segment_bytes}); pass the same NativeConfig on "
                    "every rank")
            self._mm = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        buf = self._mm
        self._ctl = np.frombuffer(buf, np.int64, local_size * 8, self._ctl_off)
        self._counters = self._ctl[::8]
        self._cmv = memoryview(buf)[self._ctl_off:self._ctl_off + local_size * _LINE].cast("q")
        self._peer_idx = [q * 8 for q in range(local_size)]
        # futex words: the low half of each rank's counter (little-endian int64)
        self._anchor = ctypes.c_char.from_buffer(buf) if _futex.available and sys.byteorder == "little" \
            else None
        self._base = ctypes.addressof(self._anchor) if self._anchor is not None else 0
        self._abort = np.frombuffer(buf, np.int64, 2, self._abort_off)
        self._abort_msg = np.frombuffer(buf, np.uint8, _MSG, self._abort_off + _LINE)
        self._pids = np.frombuffer(buf, np.int64, local_size, self._pid_off)
        self._data = np.frombuffer(buf, np.uint8, local_size * 2 * self.S, self._data_off)
        self._meta = [[np.frombuffer(buf, np.int64, D.FIELDS + local_size,
                                     self._meta_off + (r * 2 + h) * self._mb) for h in (0, 1)]
                      for r in range(local_size)]
        self._slots = [[self._data[(r * 2 + h) * self.S:(r * 2 + h + 1) * self.S] for h in (0, 1)]
                       for r in range(local_size)]
        # every rank's descriptor of each half at once: [rank, half, field]
        self._meta_all = np.ndarray((local_size, 2, D.FIELDS + local_size), np.int64, buf,
                                    self._meta_off, (2 * self._mb, self._mb, 8))
        self._msg = [[np.frombuffer(buf, np.uint8, D.MSG_BYTES, self._meta_off + (r * 2 + h) * self._mb
                                    + (D.FIELDS + local_size) * 8) for h in (0, 1)]
                     for r in range(local_size)]
        self._pids[local_rank] = os.getpid()
        # Poll a peer's counter for a while before sleeping only when every rank has a core of
        # its own: on oversubscribed cores the peer we wait for is not running, and polling
        # would only delay it. With a core each, a futex sleep costs both sides a wake-up
        # (about 50 us each on a VM, where the wake is an interrupt to another virtual CPU),
        # and peers in a training step usually arrive within a few hundred microseconds.
        self._spin_s = _SPIN_S if local_size <= _cpus() else 0.0
        self._seq = int(self._counters[local_rank])
        self._use = 0
        self._half = 0
        self.timeline = None  # set by the communicator: records phases

    # ------------------------------------------------------------- plumbing
    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def ring_offset(self, src: int, dst: int) -> int:
        """Where the ring of local rank ``src``'s sends to local rank ``dst`` starts."""
        if not self.R or src == dst:
            raise ValueError(f"no ring from local rank {src} to {dst}")
        pair = src * (self.p - 1) + (dst if dst < src else dst - 1)
        return self._ring_off + pair * (2 * _LINE + self.R)

    def peer_gone(self, q: int) -> str | None:
        """Why local rank ``q`` will not take part again ("died", "left"), or None while it is alive."""
        pid = int(self._pids[q])
        if pid == _LEFT:
            return "left (destroyed the group)"
        return None if _pid_alive(pid) else "died"

    def aborted(self) -> str | None:
        """The abort message if some rank aborted the group, else None."""
        return self._aborted_message() if self._abort is not None and self._abort[0] else None

    def close(self) -> None:
        if self._pids is not None:
            self._pids[self.lr] = _LEFT
        self._ctl = self._counters = self._abort = self._abort_msg = self._pids = None
        if self._cmv is not None:
            self._cmv.release()
            self._cmv = None
        self._anchor = None
        self._data = self._slots = self._meta = self._meta_all = self._msg = None
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with the process

    def abort(self, message: str) -> None:
        """Tell every local rank that this group failed (they raise promptly)."""
        if self._abort is None or self._abort[0]:
            return
        raw = message.encode()[:_MSG - 1]
        self._abort_msg[:len(raw)] = np.frombuffer(raw, np.uint8)
        self._abort_msg[len(raw)] = 0
        self._abort[1] = self.ranks[self.lr]
        self._abort[0] = 1

    def _aborted_message(self) -> str:
        raw = bytes(self._abort_msg).split(b"\0", 1)[0].decode(errors="replace")
        return f"rank {int(self._abort[1])} aborted the group: {raw}"

    def slot(self, r: int, h: int) -> np.ndarray:
        return self._slots[r][h]

    def _next_half(self) -> int:
        self._half = self._use & 1
        self._use += 1
        return self._half

    def sync(self) -> None:
        """Publish the next sequence number and wait for every local rank to reach it."""
        self._seq += 1
        seq = self._seq
        mv = self._cmv
        mv[self.lr * 8] = seq
        if mv[self.lr * 8 + 1]:  # someone sleeps on our word: wake them
            mv[self.lr * 8 + 1] = 0
            _futex.wake(self._base + self.lr * _LINE)
        if self._all_reached(seq):
            return
        tl = self.timeline
        t0 = time.perf_counter() if tl is not None else 0.0
        self._wait(seq)
        if tl is not None:
            tl.phase("wait", t0)

    def _all_reached(self, seq: int) -> bool:
        mv = self._cmv
        for i in self._peer_idx:
            if mv[i] < seq:
                return False
        return True

    def _laggard(self, seq: int) -> int:
        mv = self._cmv
        for q, i in enumerate(self._peer_idx):
            if mv[i] < seq:
                return q
        return -1

    def _wait(self, seq: int) -> None:
        mv, futex = self._cmv, self._anchor is not None
        start = time.monotonic()
        next_check = start + 0.05
        spin_until = start + self._spin_s
        i = 0
        while True:
            q = self._laggard(seq)
            if q < 0:
                return
            i += 1
            if spin_until and time.monotonic() < spin_until:
                continue  # the peers are usually a few microseconds away
            spin_until = 0.0
            if futex:
                # Sleep in the kernel on the laggard's word; it wakes us when it publishes.
                # (The flag tells it to; a wake lost to store reordering costs one 2 ms timeout.)
                mv[q * 8 + 1] = 1
                v = mv[q * 8]
                if v < seq:
                    _futex.wait(self._base + q * _LINE, _futex.as_int32(v), 0.002)
            else:
                time.sleep(0.00005 if i < 2000 else 0.0002)
            now = time.monotonic()
            if now < next_check:
                continue
            next_check = now + 0.05
            self._check_health(seq, now - start)

    def _check_health(self, seq: int, waited: float) -> None:
        msg = self.aborted()
        if msg is not None:
            raise CollectiveError(msg)
        late = [q for q in range(self.p) if self._cmv[q * 8] < seq]
        dead = [(q, self.peer_gone(q)) for q in late]
        dead = [(q, why) for q, why in dead if why]
        if dead:
            q, why = dead[0]
            msg = (f"rank {self.ranks[q]} {why} during a collective; destroy() this group and "
                   "form a new one")
            self.abort(msg)
            raise CollectiveError(msg)
        if waited > self.timeout:
            msg = (f"ranks {[self.ranks[q] for q in late]} did not reach the collective within "
                   f"{self.timeout}s (raise the group's timeout if they are just slow)")
            self.abort(msg)
            raise CollectiveError(msg)

    def _publish(self, h: int, desc: np.ndarray, msg: bytes = b"") -> None:
        self._meta[self.lr][h][:] = desc
        if msg:
            self._msg[self.lr][h][:len(msg)] = np.frombuffer(msg, np.uint8)
            self._msg[self.lr][h][len(msg):] = 0

    def _check(self, h: int):
        """Every local rank's descriptor of half ``h`` (a sequence of rows), checked alike."""
        raw = self._meta_all[:, h].tobytes()
        row = len(raw) // self.p
        if raw[:row] * self.p == raw and self._meta_all[0, h, D.F_VALID] == D.VALID:
            return np.frombuffer(raw, np.int64).reshape(self.p, -1)  # identical calls: rows
        metas = [self._meta[q][h].copy() for q in range(self.p)]
        if any(m[D.F_VALID] == D.ERROR for m in metas):
            msgs = [bytes(self._msg[q][h]) for q in range(self.p)]
        else:
            msgs = [b""] * self.p
        D.check(metas, msgs, self.ranks)
        return metas

    def fail(self, desc: np.ndarray, msg: bytes) -> None:
        """Join the current collective with an error record (the others raise)."""
        h = self._next_half()
        self._publish(h, desc, msg)
        self.sync()

    def _copy(self, name: str, dst, src, divide=None) -> None:
        """``dst[:] = src`` (``divide``: a Reducer whose avg division rides on the copy)."""
        tl = self.timeline
        t0 = time.perf_counter() if tl is not None else 0.0
        if divide is None:
            np.copyto(dst, src)
        else:
            divide.copy_divided(dst, src)
        if tl is not None:
            tl.phase(name, t0)

    # ---------------------------------------------------------- algorithms
    def allreduce(self, src: np.ndarray, dst: np.ndarray | None, reducer, desc: np.ndarray,
                  small_bytes: int, final: bool = True) -> None:
        """Reduce flat ``src`` of every rank into ``dst`` (None: this rank takes no result).

        ``final=False`` leaves out avg and postscale (a partial reduction).
        """
        n, item = src.size, src.itemsize
        if n * item <= min(small_bytes, self.S):
            self._allreduce_oneshot(src, dst, reducer, desc, final)
        else:
            self._allreduce_two_phase(src, dst, reducer, desc, final)

    def _allreduce_oneshot(self, src, dst, reducer, desc, final) -> None:
        # Latency path: one synchronisation; every rank reduces everything, in rank order.
        h = self._next_half()
        n = src.size
        mine = self.slot(self.lr, h)[:n * src.itemsize].view(src.dtype)
        self._copy("copy_in", mine, src)
        self._publish(h, desc)
        self.sync()
        self._check(h)
        if dst is not None:
            sources = [mine if q == self.lr else self.slot(q, h)[:n * src.itemsize].view(src.dtype)
                       for q in range(self.p)]
            self._reduce(reducer, dst, sources, final)

    def _reduce(self, reducer, out, sources, final=True) -> None:
        tl = self.timeline
        t0 = time.perf_counter() if tl is not None else 0.0
        reducer.reduce(out, sources, final)
        if tl is not None:
            tl.phase("reduce", t0)

    def _chunk_stride(self, item: int) -> int:
        """Elements between the places of consecutive chunks in a slot (cache-line aligned)."""
        cb = self.S // item // self.p
        align = max(1, _LINE // item)
        if cb >= align:
            cb = cb // align * align
        if cb < 1:
            raise CollectiveError(f"segment_bytes={self.S} is too small for {self.p} local ranks and "
                                  f"{item}-byte elements; raise NativeConfig.segment_bytes")
        return cb

    def _chunks(self, m: int, item: int, cb: int) -> list[tuple[int, int]]:
        """Balanced, aligned chunks of a segment of ``m`` elements (each at most ``cb``)."""
        align = max(1, _LINE // item)
        base = -(-m // self.p)
        base = min(cb, -(-base // align) * align)
        return [(min(q * base, m), min((q + 1) * base, m)) for q in range(self.p)]

    def _stage(self, src, a: int, chunks, cb: int, h: int) -> None:
        """Copy the other ranks' chunks of the segment at ``src[a:]`` into chunk places of our slot."""
        mine, r = self.slot(self.lr, h).view(src.dtype), self.lr
        if self.p == 1 or chunks[1][0] == cb:  # a full segment: the places are the offsets
            lo, hi = chunks[r]
            self._copy("copy_in", mine[:lo], src[a:a + lo])
            self._copy("copy_in", mine[hi:chunks[-1][1]], src[a + hi:a + chunks[-1][1]])
            return
        for q, (lo, hi) in enumerate(chunks):
            if q != r and hi > lo:
                self._copy("copy_in", mine[q * cb:q * cb + hi - lo], src[a + lo:a + hi])

    def _allreduce_two_phase(self, src, dst, reducer, desc, final) -> None:
        # Bandwidth path, in segments of p * cb elements; rank r reduces chunk r of each
        # segment from every rank's slot, then every rank copies all reduced chunks out: each
        # rank moves 2(p-1)/p of the data through shared memory, like a ring. Chunk q of a
        # segment always sits at q * cb in a slot, so one synchronisation per segment is
        # enough: before sync k+1 a rank reduces its chunk of segment k and stages segment
        # k+1 (into the other half; it writes only the places of other ranks' chunks, while
        # slower ranks may still copy out chunk places of segment k-1 there - each rank's own
        # place); after it, it copies segment k out.
        n, item, dt, r = src.size, src.itemsize, src.dtype, self.lr
        # an avg is divided while the sums are copied out (every rank decides alike, so the
        # chunks in shared memory hold plain sums for all readers)
        divide = reducer if final and reducer.divides_on_copy() else None
        cb = self._chunk_stride(item)
        seg = self.p * cb
        starts = range(0, n, seg)
        # the later segments' halves are taken once the descriptors agree: ranks whose sizes
        # differ then raise having used one half each, and the group stays in step
        halves = [self._next_half()]
        chunks = [self._chunks(min(a + seg, n) - a, item, cb) for a in starts]
        self._stage(src, 0, chunks[0], cb, halves[0])
        self._publish(halves[0], desc)
        self.sync()
        self._check(halves[0])
        halves += [self._next_half() for _ in starts[1:]]
        for k, a in enumerate(starts):
            h = halves[k]
            lo, hi = chunks[k][r]
            if hi > lo:
                sources = [src[a + lo:a + hi] if q == r else self.slot(q, h).view(dt)[r * cb:r * cb + hi - lo]
                           for q in range(self.p)]
                reduced = self.slot(r, h).view(dt)[r * cb:r * cb + hi - lo]
                self._reduce(reducer, reduced, sources, final and divide is None)
                if dst is not None:  # our own chunk now, while it is in cache (no one reads src's)
                    self._copy("copy_out", dst[a + lo:a + hi], reduced, divide)
            if k + 1 < len(halves):
                self._stage(src, a + seg, chunks[k + 1], cb, halves[k + 1])
            self.sync()
            if dst is not None:
                for q, (qlo, qhi) in enumerate(chunks[k]):
                    if qhi > qlo and q != r:
                        self._copy("copy_out", dst[a + qlo:a + qhi],
                                   self.slot(q, h).view(dt)[q * cb:q * cb + qhi - qlo], divide)

    def reduce_scatter(self, src: np.ndarray, dst: np.ndarray, parts: list[tuple[int, int]],
                       reducer, desc: np.ndarray, final: bool = True) -> None:
        """Rank q receives op over ranks of ``src[parts[q]]`` (flat element ranges) in ``dst``."""
        item, dt, r = src.itemsize, src.dtype, self.lr
        align = max(1, _LINE // item)
        mp = max(align, (self.S // item // self.p) // align * align)
        longest = max((b - a for a, b in parts), default=0)
        rounds = max(1, -(-longest // mp))
        for k in range(rounds):
            h = self._next_half()
            mine = self.slot(r, h).view(dt)
            for q, (a, b) in enumerate(parts):
                lo, hi = a + k * mp, min(a + (k + 1) * mp, b)
                if q != r and hi > lo:
                    self._copy("copy_in", mine[q * mp:q * mp + hi - lo], src[lo:hi])
            if k == 0:
                self._publish(h, desc)
            self.sync()
            if k == 0:
                self._check(h)
            a, b = parts[r]
            lo, hi = a + k * mp, min(a + (k + 1) * mp, b)
            if hi > lo:
                sources = [src[lo:hi] if q == r else self.slot(q, h).view(dt)[r * mp:r * mp + hi - lo]
                           for q in range(self.p)]
                self._reduce(reducer, dst[k * mp:k * mp + hi - lo], sources, final)

    def exchange(self, send: np.ndarray, desc: np.ndarray, ranges, sink) -> list[np.ndarray]:
        """Every rank publishes a byte stream; each copies the ranges it wants.

        ``send`` is this rank's uint8 stream (its length is in ``desc``'s
        NBYTES field). ``ranges(metas, rank)`` lists what ``rank`` wants as
        ``[(producer, offset in its stream, nbytes)]`` and ``sink(metas)``
        gives this rank's uint8 destination view for each of its ranges.
        Returns the descriptors of all ranks.
        """
        S, r = self.S, self.lr
        h = self._next_half()
        first = min(S, send.size)
        self._copy("copy_in", self.slot(r, h)[:first], send[:first])
        self._publish(h, desc)
        self.sync()
        metas = self._check(h)
        wants = [(q, off, view) for (q, off, _), view in zip(ranges(metas, r), sink(metas))]
        longest = max(D.nbytes_of(m) for m in metas)
        rounds = max(1, -(-longest // S))
        for k in range(rounds):
            if k:
                h = self._next_half()
                lo, hi = k * S, min((k + 1) * S, send.size)
                if hi > lo:
                    self._copy("copy_in", self.slot(r, h)[:hi - lo], send[lo:hi])
                self.sync()
            base = k * S
            for q, off, view in wants:
                lo, hi = max(off, base), min(off + view.size, base + S)
                if hi > lo:
                    self._copy("copy_out", view[lo - off:hi - off], self.slot(q, h)[lo - base:hi - base])
        return metas
