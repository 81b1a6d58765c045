"""Tensors and arrays as NumPy views for the data path, and the reduce kernels.

Every input (NumPy array, torch CPU tensor, anything with the buffer protocol
or DLPack) becomes a contiguous NumPy array that shares memory with it where
possible; ``Buffer.finish()`` copies results back when a copy had to be made
(non-contiguous input). bfloat16 travels as its uint16 bit pattern and is
reduced in float32, float16 is reduced in float32 too, so a sum over ranks is
rounded once, to the dtype's own precision.
"""
from __future__ import annotations

import numpy as np

REDUCE_OPS = ("sum", "avg", "min", "max", "prod")
_UFUNC = {"sum": np.add, "avg": np.add, "min": np.minimum, "max": np.maximum, "prod": np.multiply}

# Dtype codes travel in op descriptors; the index is the code.
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "bfloat16", "float32", "float64", "complex64", "complex128")
_CODE = {name: i for i, name in enumerate(DTYPES)}


def dtype_code(name: str) -> int:
    return _CODE[name]


def _torch():
    import sys
    return sys.modules.get("torch")


def is_torch_tensor(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


class Buffer:
    """A contiguous NumPy view of a user's tensor (``array``) and how to write back.

    ``dtype_name`` is the logical dtype ("bfloat16" for torch bfloat16, whose
    ``array`` holds the uint16 bits).
    """

    __slots__ = ("original", "array", "dtype_name", "_writeback")

    def __init__(self, original, array: np.ndarray, dtype_name: str, writeback):
        self.original = original
        self.array = array
        self.dtype_name = dtype_name
        self._writeback = writeback

    @property
    def flat(self) -> np.ndarray:
        return self.array.reshape(-1)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    def finish(self) -> None:
        """Copy the result back into the original when the data path used a copy."""
        if self._writeback is not None:
            self._writeback(self.array)


def as_buffer(x, *, name: str = "tensor") -> Buffer:
    """Wrap ``x`` (NumPy array, torch CPU tensor, buffer or DLPack object)."""
    if is_torch_tensor(x):
        return _torch_buffer(x, name)
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__dlpack__"):
        arr = np.from_dlpack(x)
    else:
        try:
            arr = np.asarray(memoryview(x))
        except TypeError:
            raise TypeError(f"{name} must be a NumPy array, a torch tensor or an object with the "
                            f"buffer protocol / DLPack, got {type(x).__name__}") from None
    dname = _numpy_dtype_name(arr.dtype, name)
    if dname == "bfloat16":
        arr = arr.view(np.uint16)  # ml_dtypes' bfloat16 (TensorFlow, JAX): carried as its bits
    if arr.flags.c_contiguous:
        return Buffer(x, arr, dname, None)
    work = np.ascontiguousarray(arr)

    def back(result, _dst=arr):
        _dst[...] = result
    return Buffer(x, work, dname, back)


_NAME_OF = {np.dtype(n): n for n in DTYPES if n != "bfloat16"}  # dtype.name is slow


def _numpy_dtype_name(dt: np.dtype, name: str) -> str:
    dname = _NAME_OF.get(dt)
    if dname is not None:
        return dname
    dname = dt.name
    if dname not in _CODE:
        raise TypeError(f"{name} has dtype {dt}, which collectives do not reduce; use one of "
                        f"{', '.join(n for n in DTYPES if n != 'bfloat16')} (bfloat16 via torch)")
    return dname


def _torch_buffer(t, name: str) -> Buffer:
    torch = _torch()
    if t.device.type != "cpu":
        raise TypeError(f"{name} is on {t.device}; the native backend moves CPU memory. Use "
                        "backend='torch' (NCCL) for CUDA tensors, or 'auto' to pick it")
    src = t.detach()
    if src.dtype == torch.bfloat16:
        dname = "bfloat16"
        bits = src.view(torch.int16) if src.is_contiguous() else None
    else:
        dname = str(src.dtype).replace("torch.", "")
        if dname not in _CODE:
            raise TypeError(f"{name} has dtype {src.dtype}, which collectives do not reduce")
        bits = src if src.is_contiguous() else None
    if bits is not None:
        arr = bits.numpy()
        if dname == "bfloat16":
            arr = arr.view(np.uint16)
        return Buffer(t, arr, dname, None)
    work = src.contiguous()
    arr = (work.view(torch.int16).numpy().view(np.uint16) if dname == "bfloat16" else work.numpy())

    def back(result, _dst=src, _work=work):
        _dst.copy_(_work)
    return Buffer(t, arr, dname, back)


def empty_like_buffer(buf: Buffer, shape) -> tuple[object, Buffer]:
    """A new tensor/array of the same kind and dtype as ``buf.original`` with ``shape``."""
    if is_torch_tensor(buf.original):
        torch = _torch()
        t = torch.empty(tuple(shape), dtype=buf.original.dtype, device="cpu")
        return t, as_buffer(t)
    arr = np.empty(tuple(shape), dtype=buf.array.dtype)
    return arr, Buffer(arr, arr, buf.dtype_name, None)


def storage_dtype(dtype_name: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype_name == "bfloat16" else np.dtype(dtype_name)


# ----------------------------------------------------------------------- reduce


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same elements (two views of one buffer)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)



def check_op(op: str, dtype_name: str) -> None:
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduce op {op!r}; use one of {', '.join(REDUCE_OPS)}")
    if dtype_name.startswith("complex") and op in ("min", "max"):
        raise TypeError(f"op {op!r} is not defined for {dtype_name} tensors; use sum, avg or prod")


class Reducer:
    """Reduces same-shaped sources elementwise into ``out``, vectorized, in rank order.

    Sums of float16/bfloat16 accumulate in float32; scale factors and ``avg``
    work in a float type wide enough for the dtype. ``finalize`` applies avg
    and postscale to a fully reduced buffer; ``reduce`` applies prescale to each
    contribution.
    """

    def __init__(self, op: str, dtype_name: str, world_size: int,
                 prescale: float = 1.0, postscale: float = 1.0):
        check_op(op, dtype_name)
        self.op, self.dtype_name, self.world_size = op, dtype_name, world_size
        self.ufunc = _UFUNC[op]
        self.prescale, self.postscale = float(prescale), float(postscale)
        self.store = storage_dtype(dtype_name)
        self.kind = "f" if dtype_name == "bfloat16" else self.store.kind  # the logical kind
        scaled = self.prescale != 1.0 or self.postscale != 1.0
        if dtype_name in ("float16", "bfloat16"):
            self.acc = np.dtype(np.float32)
        elif scaled:
            kind = np.dtype(dtype_name).kind if dtype_name != "bool" else "b"
            self.acc = (np.dtype(dtype_name) if kind in "fc" else np.dtype(np.float64))
        else:
            self.acc = None  # reduce in the storage dtype directly
        self._scratch: dict = {}

    def divides_on_copy(self) -> bool:
        """An avg in a plain float type: its division can ride on the copy that reads the
        sum out (``copy_divided``), one pass over the data fewer than ``finalize``."""
        return self.acc is None and self.op == "avg" and self.store.kind in "fc"

    def copy_divided(self, dst: np.ndarray, src: np.ndarray) -> None:
        self._divide(src, dst)

    def _divide(self, src: np.ndarray, out: np.ndarray) -> None:
        """``out = src / world_size`` for floats: a multiplication by 2**-k when the world size
        is a power of two (bit-identical to the division, and cheaper per element)."""
        n = self.world_size
        if n & (n - 1) == 0:
            np.multiply(src, 1.0 / n, out=out)
        else:
            np.divide(src, n, out=out)

    def _buf(self, key: str, n: int, dtype) -> np.ndarray:
        b = self._scratch.get(key)
        if b is None or b.size < n or b.dtype != dtype:
            b = np.empty(max(n, 1024), dtype=dtype)
            self._scratch[key] = b
        return b[:n]

    def _load(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``src`` (storage dtype) converted into ``out`` (accumulator dtype)."""
        if self.dtype_name == "bfloat16":
            bits = out.view(np.uint32)
            np.copyto(bits, src, casting="unsafe")
            np.left_shift(bits, 16, out=bits)
        else:
            np.copyto(out, src, casting="unsafe")
        if self.prescale != 1.0:
            np.multiply(out, self.prescale, out=out)
        return out

    def _store(self, acc: np.ndarray, out: np.ndarray) -> None:
        if self.dtype_name == "bfloat16":
            bits = acc.view(np.uint32)
            tmp = self._buf("round", acc.size, np.uint32)
            np.right_shift(bits, 16, out=tmp)
            np.bitwise_and(tmp, 1, out=tmp)
            tmp += 0x7FFF
            nan = np.isnan(acc)
            tmp += bits  # round to nearest even, as torch's float->bfloat16
            np.right_shift(tmp, 16, out=tmp)
            np.copyto(out, tmp, casting="unsafe")
            if nan.any():
                out[nan] = 0x7FC0
        elif self.acc.kind in "fc" and self.store.kind in "iub":
            if self.store.kind == "b":
                np.not_equal(acc, 0, out=out)
            else:
                np.copyto(out, np.trunc(acc) if self.acc.kind == "f" else acc, casting="unsafe")
        else:
            np.copyto(out, acc, casting="unsafe")

    def reduce(self, out: np.ndarray, sources: list[np.ndarray], final: bool = True) -> None:
        """``out = op(sources)`` (``final``: also apply avg and postscale)."""
        n = out.size
        if self.acc is None:
            if len(sources) == 1:
                if not _same_memory(sources[0], out):
                    np.copyto(out, sources[0])
            else:
                self.ufunc(sources[0], sources[1], out=out)
                for s in sources[2:]:
                    self.ufunc(out, s, out=out)
            if final:
                self._finalize_plain(out)
            return
        acc = self._load(sources[0], self._buf("acc", n, self.acc))
        if len(sources) > 1:
            tmp = self._buf("tmp", n, self.acc)
            for s in sources[1:]:
                self.ufunc(acc, self._load(s, tmp), out=acc)
        if final:
            self._finalize_acc(acc)
        self._store(acc, out)

    def finalize(self, out: np.ndarray) -> None:
        """Apply avg and postscale to ``out`` that holds a complete, unscaled-after reduction."""
        if self.acc is None:
            self._finalize_plain(out)
            return
        if not self._needs_final():
            return
        acc = self._buf("acc", out.size, self.acc)
        if self.dtype_name == "bfloat16":
            bits = acc.view(np.uint32)
            np.copyto(bits, out, casting="unsafe")
            np.left_shift(bits, 16, out=bits)
        else:
            np.copyto(acc, out, casting="unsafe")
        self._finalize_acc(acc)
        self._store(acc, out)

    def _needs_final(self) -> bool:
        return self.op == "avg" or self.postscale != 1.0

    def _finalize_plain(self, out: np.ndarray) -> None:
        if self.op == "avg":
            if self.store.kind in "iu":
                np.floor_divide(out, self.world_size, out=out)
            elif self.store.kind == "b":
                pass  # the average of booleans, as their sum, is "any"
            else:
                self._divide(out, out)

    def _finalize_acc(self, acc: np.ndarray) -> None:
        if self.op == "avg":
            if self.kind in "iu":
                np.floor_divide(acc, self.world_size, out=acc)
            else:
                self._divide(acc, acc)
        if self.postscale != 1.0:
            np.multiply(acc, self.postscale, out=acc)
