"""Consuming a stream of blocks: batches in NumPy/pandas/Arrow/torch, rows.

Blocks are fetched ahead on a background thread (``prefetch_batches``)
while the caller works on the current batch, and re-cut into batches of
exactly ``batch_size`` rows across block boundaries.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from shoal.data._block import (check_batch_format, check_columns, column_to_numpy, rebatch,
                               table_to_rows, to_batch)
from shoal.data._plan import Bundle
from shoal.exceptions import MissingDependencyError


def fetch_blocks(bundles: Iterable[Bundle], prefetch_blocks: int = 1) -> Iterator[pa.Table]:
    """The Tables behind ``bundles`` in order, keeping ``prefetch_blocks`` bundles pulled ahead.

    Pulling a bundle ahead lets the executor submit the tasks behind it while
    the caller works on the current batch; fetching itself only maps shared
    memory, so it stays on the caller's thread.
    """
    import shoal

    source = iter(bundles)
    ahead: deque = deque()
    try:
        exhausted = False
        while True:
            while not exhausted and len(ahead) <= max(prefetch_blocks, 0):
                try:
                    ahead.append(next(source)[0])
                except StopIteration:
                    exhausted = True
            if not ahead:
                return
            yield shoal.get(ahead.popleft())
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def local_shuffle(tables: Iterable[pa.Table], buffer_size: int, batch_size: int,
                  seed) -> Iterator[pa.Table]:
    """Mix rows within a buffer of at least ``buffer_size`` rows before batching."""
    rng = np.random.default_rng(seed)
    buffer: list[pa.Table] = []
    rows = 0
    for t in tables:
        buffer.append(t)
        rows += t.num_rows
        if rows >= buffer_size + batch_size:
            joined = pa.concat_tables(buffer, promote_options="permissive")
            joined = joined.take(pa.array(rng.permutation(joined.num_rows)))
            emit = joined.num_rows - buffer_size
            yield joined.slice(0, emit)
            buffer, rows = [joined.slice(emit)], buffer_size
    if rows:
        joined = pa.concat_tables(buffer, promote_options="permissive")
        yield joined.take(pa.array(rng.permutation(joined.num_rows)))


def iter_batches(bundles: Iterable[Bundle], *, batch_size: int | None = 256,
                 batch_format: str = "numpy", drop_last: bool = False,
                 prefetch_batches: int = 1, local_shuffle_buffer_size: int | None = None,
                 local_shuffle_seed: int | None = None) -> Iterator[Any]:
    check_batch_format(batch_format)
    tables = fetch_blocks(bundles, prefetch_batches)
    if local_shuffle_buffer_size:
        tables = local_shuffle(tables, local_shuffle_buffer_size, batch_size or 1,
                               local_shuffle_seed)
    for batch in rebatch(tables, batch_size, drop_last):
        yield to_batch(batch, batch_format)


def to_torch_batch(batch: pa.Table, dtypes=None, device: str | Any = "cpu") -> dict:
    """A dict of torch tensors; non-numeric columns stay NumPy arrays."""
    MissingDependencyError.require("torch batches", "train", "torch")
    import torch

    out = {}
    for name in batch.column_names:
        array = column_to_numpy(batch.column(name))
        if array.dtype == object or array.dtype.kind in "USM":
            out[name] = array
            continue
        if not array.flags.writeable:
            array = array.copy()  # torch wants writable memory; Arrow buffers are read-only
        tensor = torch.from_numpy(array)
        dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
        if dtype is not None or device != "cpu":
            tensor = tensor.to(device=device, dtype=dtype)
        out[name] = tensor
    return out


def iter_torch_batches(bundles: Iterable[Bundle], *, batch_size: int | None = 256, dtypes=None,
                       device: str | Any = "cpu", drop_last: bool = False,
                       prefetch_batches: int = 1, collate_fn=None,
                       local_shuffle_buffer_size: int | None = None,
                       local_shuffle_seed: int | None = None) -> Iterator[Any]:
    for batch in iter_batches(bundles, batch_size=batch_size, batch_format="pyarrow",
                              drop_last=drop_last, prefetch_batches=prefetch_batches,
                              local_shuffle_buffer_size=local_shuffle_buffer_size,
                              local_shuffle_seed=local_shuffle_seed):
        if collate_fn is not None:
            yield collate_fn(to_batch(batch, "numpy"))
        else:
            yield to_torch_batch(batch, dtypes, device)


def to_tf_batch(batch: pa.Table, dtypes=None) -> dict:
    """A dict of tf.Tensors (numeric columns through DLPack where aligned, else a copy)."""
    MissingDependencyError.require("TensorFlow batches", "tf", "tensorflow")
    import tensorflow as tf

    from shoal.collective.tf_tensors import from_numpy

    out = {}
    for name in batch.column_names:
        array = column_to_numpy(batch.column(name))
        if array.dtype == object or array.dtype.kind in "USM":
            tensor = tf.constant(array.astype(str) if array.dtype.kind == "M" else array)
        else:
            tensor = from_numpy(array, array.dtype.name)
        dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
        out[name] = tf.cast(tensor, dtype) if dtype is not None else tensor
    return out


def iter_tf_batches(bundles: Iterable[Bundle], *, batch_size: int | None = 256, dtypes=None,
                    drop_last: bool = False, prefetch_batches: int = 1,
                    local_shuffle_buffer_size: int | None = None,
                    local_shuffle_seed: int | None = None) -> Iterator[dict]:
    for batch in iter_batches(bundles, batch_size=batch_size, batch_format="pyarrow",
                              drop_last=drop_last, prefetch_batches=prefetch_batches,
                              local_shuffle_buffer_size=local_shuffle_buffer_size,
                              local_shuffle_seed=local_shuffle_seed):
        yield to_tf_batch(batch, dtypes)


def to_tf_dataset(make_bundles, feature_columns, label_columns, *, batch_size, drop_last,
                  local_shuffle_buffer_size, local_shuffle_seed, schema):
    """A tf.data.Dataset over ``make_bundles()`` (called once per pass over the data)."""
    MissingDependencyError.require("Dataset.to_tf", "tf", "tensorflow")
    import tensorflow as tf

    def columns(spec):
        return [spec] if isinstance(spec, str) else list(spec)

    wanted = columns(feature_columns) + (columns(label_columns) if label_columns else [])
    check_columns(schema, wanted, "to_tf")

    def spec_of(name):
        field = schema.field(name)
        import pyarrow as pa
        t = field.type
        if pa.types.is_fixed_size_list(t):
            inner = tf.dtypes.as_dtype(t.value_type.to_pandas_dtype())
            return tf.TensorSpec([None, t.list_size], inner)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return tf.TensorSpec([None], tf.string)
        return tf.TensorSpec([None], tf.dtypes.as_dtype(t.to_pandas_dtype()))

    def pick(batch, spec):
        if isinstance(spec, str):
            return batch[spec]
        return {c: batch[c] for c in spec}

    def sig(spec):
        return spec_of(spec) if isinstance(spec, str) else {c: spec_of(c) for c in spec}

    def gen():
        for batch in iter_tf_batches(make_bundles(), batch_size=batch_size,
                                     drop_last=drop_last,
                                     local_shuffle_buffer_size=local_shuffle_buffer_size,
                                     local_shuffle_seed=local_shuffle_seed):
            if label_columns is None:
                yield pick(batch, feature_columns)
            else:
                yield pick(batch, feature_columns), pick(batch, label_columns)

    signature = (sig(feature_columns) if label_columns is None
                 else (sig(feature_columns), sig(label_columns)))
    return tf.data.Dataset.from_generator(gen, output_signature=signature)


def iter_rows(bundles: Iterable[Bundle], prefetch_blocks: int = 1) -> Iterator[dict]:
    for table in fetch_blocks(bundles, prefetch_blocks):
        yield from table_to_rows(table)
