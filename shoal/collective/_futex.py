"""Futex wait/wake on a word of shared memory, through ctypes (Linux; no compiler needed).

A rank waiting for a peer's sequence number sleeps in the kernel on that
word and the peer wakes it right after publishing: no busy waiting, and on
oversubscribed cores the scheduler runs the woken rank at once instead of
after a timer. Where futexes are unavailable ``available`` is False and the
caller falls back to polling.
"""
from __future__ import annotations

import ctypes
import os
import platform

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
_WAIT, _WAKE = 0, 1  # shared (not FUTEX_PRIVATE): the word lives in a file mapping
_INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    available = _SYS_FUTEX is not None and os.name == "posix" and platform.system() == "Linux"
except (OSError, AttributeError):
    available = False


def wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the int32 at ``addr`` equals ``expected`` (at most ``timeout_s``)."""
    ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_WAIT),
             ctypes.c_int(expected), ctypes.byref(ts), None, ctypes.c_int(0))


def wake(addr: int) -> None:
    """Wake every waiter sleeping on the int32 at ``addr``."""
    _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_WAKE),
             ctypes.c_int(_INT_MAX), None, None, ctypes.c_int(0))


def as_int32(value: int) -> int:
    """The low 32 bits of ``value`` as a signed int (what the kernel compares)."""
    v = value & 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v
