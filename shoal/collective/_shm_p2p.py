"""Point-to-point between ranks of one host: a byte stream per ordered pair through shared memory.

Each (src, dst) pair of local ranks owns a ring in the host's segment
(_shm): a head line (bytes written so far, and "the reader sleeps"), a tail
line (bytes read so far, and "the writer sleeps") and ``ring_bytes`` of
data. Only src writes and only dst reads, so a send is a copy into the ring
and a store of the new head, a receive a copy out and a store of the new
tail: no system call while neither side waits. A side that must wait (the
ring empty, or full) polls briefly when every local rank has a core of its
own, then sleeps on the other side's word with a futex, which that side
wakes after it moves its word; every wait checks for an aborted group, a
dead peer and the group's timeout.

``ShmP2P`` offers the TCP mesh's interface for channel-1 streams (``send``,
``send_async``, ``recv_into``), so the native backend's point-to-point code
is the same over either. Over loopback TCP a 1 MB message takes longer than
Gloo's (the rest of a partial write goes to a thread, and the receiver wakes
for each segment the kernel passes on); through a ring it is two copies.
"""
from __future__ import annotations

import queue
import threading
import time

from shoal.collective import _futex
from shoal.collective._shm import _LINE, ShmGroup
from shoal.collective._tcp import _Pending, run_send_queue
from shoal.exceptions import CollectiveError

_HEAD, _READER_SLEEPS, _TAIL, _WRITER_SLEEPS = 0, 1, _LINE // 8, _LINE // 8 + 1
_NAP_S = 0.002           # a futex sleep's bound: a wake lost to store reordering costs this
_CHECK_S = 0.05          # how often a waiting side checks the peer and the group


class _Ring:
    """One direction of one pair: local rank ``src`` writes, local rank ``dst`` reads."""

    def __init__(self, group: ShmGroup, src: int, dst: int, owner: "ShmP2P"):
        off = group.ring_offset(src, dst)
        self.g, self.src, self.dst, self.R, self.owner = group, src, dst, group.R, owner
        self.ctl = memoryview(group._mm)[off:off + 2 * _LINE].cast("q")
        self.data = memoryview(group._mm)[off + 2 * _LINE:off + 2 * _LINE + group.R]
        base = group._base + off if group._base else 0
        self.addr = {_HEAD: base, _TAIL: base + _LINE} if base else None

    def release(self) -> None:
        try:
            self.ctl.release()
            self.data.release()
        except BufferError:
            pass    # a sender thread that did not stop still copies: the mapping goes with the process

    # -- waiting for the other side to move its word
    def _wait(self, word: int, seen: int, sleeps: int, peer: int, what: str) -> None:
        """Return once ``ctl[word]`` differs from ``seen`` (peer: the local rank that moves it)."""
        ctl, g = self.ctl, self.g
        start = time.monotonic()
        spin_until = start + g._spin_s
        next_check = start + _CHECK_S
        while ctl[word] == seen:
            now = time.monotonic()
            if now < spin_until:
                continue
            if self.addr is not None:
                ctl[sleeps] = 1                 # the peer wakes us after it moves the word
                if ctl[word] == seen:
                    _futex.wait(self.addr[word], _futex.as_int32(seen), _NAP_S)
            else:
                time.sleep(0.00005)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _CHECK_S
                self._check(peer, now - start, what)

    def _check(self, peer: int, waited: float, what: str) -> None:
        g = self.g
        if self.owner.closed:
            raise CollectiveError(f"the group was destroyed while this rank waited to {what} rank "
                                  f"{g.ranks[peer]}")
        msg = g.aborted()
        if msg is not None:
            raise CollectiveError(msg)
        rank = g.ranks[peer]
        why = g.peer_gone(peer)
        if why:
            raise CollectiveError(f"rank {rank} {why} while this rank waited to {what} it; "
                                  "destroy() this group and form a new one")
        if waited > g.timeout:
            raise CollectiveError(f"rank {rank} did not {'receive' if what == 'send to' else 'send'}"
                                  f" within {g.timeout}s while this rank waited to {what} it (is it "
                                  "calling the matching recv/send? raise the group's timeout if it "
                                  "is just slow)")

    def _wake(self, word: int, sleeps: int) -> None:
        ctl = self.ctl
        if ctl[sleeps]:
            ctl[sleeps] = 0
            if self.addr is not None:
                _futex.wake(self.addr[word])

    # -- the writer (local rank src)
    def write(self, view: memoryview, block: bool) -> int:
        """Copy ``view`` into the ring; without ``block`` only what fits now. Returns bytes written."""
        ctl, R, data = self.ctl, self.R, self.data
        done, n = 0, view.nbytes
        head = ctl[_HEAD]
        while done < n:
            tail = ctl[_TAIL]
            free = R - (head - tail)
            if free == 0:
                if not block:
                    break
                self._wait(_TAIL, tail, _WRITER_SLEEPS, self.dst, "send to")
                continue
            at = head % R
            k = min(free, n - done, R - at)
            data[at:at + k] = view[done:done + k]
            head += k
            done += k
            ctl[_HEAD] = head
            self._wake(_HEAD, _READER_SLEEPS)
        return done

    # -- the reader (local rank dst)
    def read_into(self, view: memoryview) -> None:
        ctl, R, data = self.ctl, self.R, self.data
        got, n = 0, view.nbytes
        tail = ctl[_TAIL]
        while got < n:
            head = ctl[_HEAD]
            if head == tail:
                self._wait(_HEAD, head, _READER_SLEEPS, self.src, "receive from")
                continue
            at = tail % R
            k = min(head - tail, n - got, R - at)
            view[got:got + k] = data[at:at + k]
            tail += k
            got += k
            ctl[_TAIL] = tail
            self._wake(_TAIL, _WRITER_SLEEPS)


class ShmP2P:
    """Channel-1 streams to and from the other ranks of this host (``TcpMesh``'s interface)."""

    def __init__(self, group: ShmGroup):
        self.g = group
        self.local = {r: i for i, r in enumerate(group.ranks)}
        self._rings: dict[tuple[int, int], _Ring] = {}
        self._lock = threading.Lock()
        self._queued: dict[int, int] = {}      # dst -> sends waiting for the sender thread
        self._q: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self.closed = False

    def has(self, peer: int) -> bool:
        return peer in self.local

    def _ring(self, src: int, dst: int) -> _Ring:
        key = (src, dst)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self.g, src, dst, self)
        return ring

    def send(self, peer: int, data, channel: int = 1) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes:
            self._ring(self.g.lr, self.local[peer]).write(view, block=True)

    def recv_into(self, peer: int, out, channel: int = 1) -> None:
        view = memoryview(out).cast("B")
        if view.nbytes:
            self._ring(self.local[peer], self.g.lr).read_into(view)

    def send_async(self, peer: int, data, channel: int = 1, inline_bytes: int = 0,
                   head=None) -> _Pending:
        """Write what the ring takes now; the rest goes to the sender thread, after earlier sends."""
        p = _Pending()
        parts = [memoryview(data).cast("B")]
        if head is not None:
            parts.insert(0, memoryview(head).cast("B"))
        ring = self._ring(self.g.lr, self.local[peer])
        with self._lock:
            if not self._queued.get(peer):
                while parts:
                    wrote = ring.write(parts[0], block=False)
                    if wrote < parts[0].nbytes:
                        parts[0] = parts[0][wrote:]
                        break
                    parts.pop(0)
                if not parts:
                    p.done(None)
                    return p
            self._queued[peer] = self._queued.get(peer, 0) + 1
            if self._thread is None:
                self._q = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._send_loop, daemon=True,
                                                name=f"shoal-p2p-send-{self.g.ranks[self.g.lr]}")
                self._thread.start()
            self._q.put((peer, parts, channel, p))
        return p

    def _send_loop(self) -> None:
        run_send_queue(self._q, self.send, self._sent)

    def _sent(self, peer: int) -> None:
        with self._lock:
            self._queued[peer] -= 1

    def close(self) -> None:
        self.closed = True          # a send still waiting for room gives up within _CHECK_S
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=1.0)
        for ring in self._rings.values():
            ring.release()
        self._rings.clear()
