"""Inputs as NumPy views and the reduce kernels (in one process)."""
import numpy as np
import pytest
import torch

from shoal.collective._buffers import Reducer, as_buffer


def test_float16_sum_accumulates_in_float32():
    xs = [np.full(4, 1024.0, np.float16), np.full(4, 0.25, np.float16), np.full(4, 0.25, np.float16),
          np.full(4, 0.25, np.float16)]
    out = np.empty(4, np.float16)
    Reducer("sum", "float16", 4).reduce(out, xs)
    assert out[0] == np.float16(1024.75)  # pairwise float16 sums would round each 0.25 away


def test_bfloat16_rounds_to_nearest_even_like_torch():
    vals = torch.tensor([1.0, 1.00390625, 3.14159, -2.71828, 1e30, 65504.0], dtype=torch.float32)
    parts = [vals.to(torch.bfloat16), (vals * 0.5).to(torch.bfloat16)]
    want = (parts[0].float() + parts[1].float()).to(torch.bfloat16)
    out = np.empty(6, np.uint16)
    Reducer("sum", "bfloat16", 2).reduce(out, [p.view(torch.int16).numpy().view(np.uint16) for p in parts])
    assert np.array_equal(out, want.view(torch.int16).numpy().view(np.uint16))


def test_integer_avg_floors():
    out = np.empty(3, np.int32)
    Reducer("avg", "int32", 2).reduce(out, [np.array([1, -3, 4], np.int32), np.array([2, 0, 4], np.int32)])
    assert out.tolist() == [1, -2, 4]


def test_min_max_of_complex_rejected():
    with pytest.raises(TypeError, match="complex"):
        Reducer("max", "complex64", 2)


def test_unknown_op_rejected():
    with pytest.raises(ValueError, match="unknown reduce op"):
        Reducer("median", "float32", 2)


def test_non_contiguous_numpy_written_back():
    base = np.zeros(10)
    buf = as_buffer(base[::2])
    buf.array[...] = 7
    buf.finish()
    assert base.tolist() == [7, 0] * 5


def test_torch_bfloat16_viewed_as_bits():
    t = torch.ones(3, dtype=torch.bfloat16)
    buf = as_buffer(t)
    assert buf.dtype_name == "bfloat16" and buf.array.dtype == np.uint16
    buf.array[0] = 0x4000  # 2.0
    assert t[0].item() == 2.0


def test_unsupported_input_named():
    with pytest.raises(TypeError, match="tensor must be"):
        as_buffer(object())
    with pytest.raises(TypeError, match="dtype"):
        as_buffer(np.array(["a"]))
