"""Op descriptors: the cheap metadata every rank publishes with each collective.

Each rank writes a small int64 record (op, reduce op, dtype, shape, root,
sizes) beside its data; after the first synchronisation every rank checks all
records the same way, so a mismatch raises the same CollectiveError on every
rank instead of hanging or producing a wrong answer (as Horovod's coordinator
does). A rank whose input was rejected locally publishes an error record so
that the others raise too.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

from shoal.collective._buffers import DTYPES, REDUCE_OPS
from shoal.exceptions import CollectiveError

KINDS = ("barrier", "allreduce", "reduce", "reduce_scatter", "broadcast", "allgather",
         "gather", "scatter", "alltoall", "fused_allreduce")
FIELDS = 17
MSG_BYTES = 256
MAX_DIMS = 8
VALID, ERROR = 1, 2
# field positions
F_VALID, F_KIND, F_ROP, F_DTYPE, F_ROOT, F_NELEM, F_NBYTES, F_NDIM, F_DIMS = range(9)
F_GROUP = 16  # signature of the whole tensor list of a grouped op (0 for single-tensor ops)

# Set while a grouped op runs its packed collective(s): every descriptor made then carries
# it, so ranks whose lists differ (count, dtypes, shapes) fail the first check together.
_GROUP_SIG: contextvars.ContextVar[int] = contextvars.ContextVar("shoal_group_sig", default=0)


_SIG_MASK = 0x3FFFFFFFFFFFFFFF


@contextlib.contextmanager
def group_signature(sig: int, mix: bool = True):
    """Descriptors made inside carry ``sig`` (see ``F_GROUP``), mixed with the signature
    already set (a grouped op run under ``Communicator.tagged`` carries both); ``mix=False``
    sets exactly ``sig`` (an op taking its caller's signature to another thread)."""
    outer = _GROUP_SIG.get() if mix else 0
    sig = int(sig) & _SIG_MASK
    if outer:
        sig = ((outer * 0x100000001B3) ^ sig) & _SIG_MASK or 1
    token = _GROUP_SIG.set(sig)
    try:
        yield
    finally:
        _GROUP_SIG.reset(token)

def current_group_signature() -> int:
    """The signature descriptors made now carry (0 outside a grouped op)."""
    return _GROUP_SIG.get()


# which properties must agree across ranks, per op
_MUST_MATCH = {
    "barrier": (),
    "allreduce": ("rop", "dtype", "shape"),
    "fused_allreduce": ("rop", "dtype", "nelem"),
    "reduce": ("rop", "dtype", "shape", "root"),
    "reduce_scatter": ("rop", "dtype", "shape"),
    "broadcast": ("dtype", "shape", "root"),
    "allgather": ("dtype", "row"),
    "gather": ("dtype", "row", "root"),
    "scatter": ("root",),
    "alltoall": ("dtype", "row"),
}


_KIND = {k: i for i, k in enumerate(KINDS)}
_ROP = {k: i for i, k in enumerate(REDUCE_OPS)}
_DT = {k: i for i, k in enumerate(DTYPES)}


def meta_bytes(world: int) -> int:
    n = FIELDS * 8 + world * 8 + MSG_BYTES
    return (n + 63) // 64 * 64


def make(kind: str, *, rop: str | None = None, dtype: str | None = None, shape=(),
         root: int = -1, nbytes: int = 0, world: int = 1, splits=None) -> np.ndarray:
    """A descriptor (int64 array of FIELDS + world entries)."""
    shape = tuple(int(s) for s in shape)
    nelem = math.prod(shape) if shape else (1 if dtype else 0)
    dims = list(shape[:MAX_DIMS - 1])
    if len(shape) >= MAX_DIMS:  # fold the tail so longer shapes still compare
        dims.append(hash(shape[MAX_DIMS - 1:]) & 0x7FFFFFFFFFFF)
    fields = [VALID, _KIND[kind], -1 if rop is None else _ROP[rop], -1 if dtype is None else _DT[dtype],
              root, nelem, nbytes, len(shape)] + dims
    fields += [0] * (FIELDS - len(fields))
    fields[F_GROUP] = _GROUP_SIG.get()
    if splits is not None:
        fields += [int(x) for x in splits]
    fields += [0] * (FIELDS + world - len(fields))
    return np.array(fields, dtype=np.int64)


def error(kind: str, message: str, world: int) -> tuple[np.ndarray, bytes]:
    d = make(kind, world=world)
    d[F_VALID] = ERROR
    return d, message.encode()[:MSG_BYTES]


def _shape(d: np.ndarray) -> tuple:
    nd = int(d[F_NDIM])
    return tuple(int(x) for x in d[F_DIMS:F_DIMS + min(nd, MAX_DIMS)])


def _describe(prop: str, d: np.ndarray):
    if prop == "rop":
        return REDUCE_OPS[d[F_ROP]] if d[F_ROP] >= 0 else None
    if prop == "dtype":
        return DTYPES[d[F_DTYPE]] if d[F_DTYPE] >= 0 else None
    if prop == "shape":
        return _shape(d)
    if prop == "row":
        return _shape(d)[1:]
    if prop == "root":
        return int(d[F_ROOT])
    if prop == "nelem":
        return int(d[F_NELEM])
    if prop == "group":
        return int(d[F_GROUP])
    raise KeyError(prop)


def _mismatch(message: str) -> CollectiveError:
    err = CollectiveError(message)
    err.mismatch = True  # the group stays usable: every rank raised at the same step
    return err


def check(metas: list[np.ndarray], messages: list[bytes], ranks: list[int] | None = None) -> None:
    """Raise CollectiveError (identically on every rank) unless all descriptors agree."""
    first = metas[0].tobytes()
    if metas[0][F_VALID] == VALID and all(m.tobytes() == first for m in metas[1:]):
        return  # the common case: identical calls
    ranks = ranks if ranks is not None else list(range(len(metas)))
    for i, d in enumerate(metas):
        if d[F_VALID] == ERROR:
            msg = messages[i].rstrip(b"\0").decode(errors="replace")
            raise _mismatch(f"rank {ranks[i]} rejected its input to {KINDS[d[F_KIND]]}: {msg}")
        if d[F_VALID] != VALID:
            raise CollectiveError(f"rank {ranks[i]} published no valid op descriptor; the group's "
                                  "shared state is corrupt; destroy() it and form a new group")
    kinds = [KINDS[d[F_KIND]] for d in metas]
    if len(set(kinds)) > 1:
        calls = ", ".join(f"rank {r}: {k}" for r, k in zip(ranks, kinds))
        raise _mismatch(f"ranks called different collectives at the same step ({calls}); "
                              "every rank must issue the same sequence of collective calls")
    for prop in _MUST_MATCH[kinds[0]] + ("group",):
        vals = [_describe(prop, d) for d in metas]
        if any(v != vals[0] for v in vals[1:]):
            what = {"rop": "reduce op", "row": "shape after the first dimension",
                    "group": "tensor list (count, dtypes or shapes of a grouped op) or "
                             "Communicator.tagged tag"}.get(prop, prop)
            calls = ", ".join(f"rank {r}: {v}" for r, v in zip(ranks, vals))
            raise _mismatch(f"{kinds[0]} called with mismatched {what} across ranks "
                                  f"({calls}); every rank must pass the same {what}")


def nbytes_of(d: np.ndarray) -> int:
    return int(d[F_NBYTES])


def splits_of(d: np.ndarray, world: int) -> np.ndarray:
    return d[FIELDS:FIELDS + world]


def shape_of(d: np.ndarray) -> tuple:
    return _shape(d)
