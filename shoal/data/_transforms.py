"""Row-preserving block transforms: the one-to-one operators a stage fuses.

Each transform is a picklable callable ``Table -> Table``. A chain of them
runs in one task (or one actor call) per block, so ``read -> map_batches ->
filter -> select_columns`` costs one task per block.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from shoal.data._block import (callable_name, check_batch_format, check_columns, concat,
                               iter_slices, table_to_rows, to_batch, to_block, array_to_arrow)
from shoal.exceptions import UDFReturnTypeError


class BlockTransform:
    """Base class: ``name`` for plans and stats, ``__call__`` on one block."""

    name = "transform"

    def setup(self) -> None:
        """Build per-process state (a callable class's instance) once."""

    def __call__(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError


def is_callable_class(fn: Any) -> bool:
    return inspect.isclass(fn) and callable(fn)


class MapBatches(BlockTransform):
    """``fn(batch) -> batch`` over batches of ``batch_size`` rows of a block."""

    def __init__(self, fn: Callable, batch_format: str = "numpy", batch_size: int | None = None,
                 fn_args: Sequence = (), fn_kwargs: dict | None = None,
                 fn_constructor_args: Sequence = (), fn_constructor_kwargs: dict | None = None):
        if not callable(fn):
            raise TypeError(f"map_batches needs a function or callable class, got {fn!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
            raise ValueError(f"batch_size={batch_size!r} must be a positive int or None")
        self.fn = fn
        self.batch_format = check_batch_format(batch_format)
        self.batch_size = batch_size
        self.fn_args = tuple(fn_args)
        self.fn_kwargs = dict(fn_kwargs or {})
        self.ctor_args = tuple(fn_constructor_args)
        self.ctor_kwargs = dict(fn_constructor_kwargs or {})
        self.name = f"map_batches({callable_name(fn)})"
        self._call = None if is_callable_class(fn) else fn

    def setup(self) -> None:
        if self._call is None:
            self._call = self.fn(*self.ctor_args, **self.ctor_kwargs)

    def __getstate__(self):
        state = dict(self.__dict__)
        if is_callable_class(self.fn):
            state["_call"] = None  # each process builds its own instance
        return state

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table
        if self._call is None:
            self.setup()
        outs = []
        for piece in iter_slices(table, self.batch_size):
            result = self._call(to_batch(piece, self.batch_format), *self.fn_args, **self.fn_kwargs)
            if inspect.isgenerator(result):
                outs.extend(to_block(r, self.fn) for r in result)
            else:
                outs.append(to_block(result, self.fn))
        return concat(outs)


class MapRows(BlockTransform):
    """``fn(row: dict) -> dict`` for each row."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = f"map({callable_name(fn)})"

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table
        rows = [self.fn(r) for r in table_to_rows(table)]
        if rows and not isinstance(rows[0], dict):
            raise UDFReturnTypeError(f"function {callable_name(self.fn)} passed to map returned "
                                     f"{type(rows[0]).__name__}; it must return a dict per row")
        return pa.Table.from_pylist(rows)


class FlatMap(BlockTransform):
    """``fn(row: dict) -> list[dict]``; the lists are concatenated."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = f"flat_map({callable_name(fn)})"

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table
        rows = []
        for r in table_to_rows(table):
            out = self.fn(r)
            if isinstance(out, dict) or not hasattr(out, "__iter__"):
                raise UDFReturnTypeError(
                    f"function {callable_name(self.fn)} passed to flat_map returned "
                    f"{type(out).__name__}; it must return a list of dicts per row")
            rows.extend(out)
        if not rows:
            return table.schema.empty_table()
        return pa.Table.from_pylist(rows)


class Filter(BlockTransform):
    """Keep rows where ``fn(row)`` is true, or where a pyarrow ``expr`` holds (vectorized)."""

    def __init__(self, fn: Callable | None = None, expr: pc.Expression | None = None):
        if (fn is None) == (expr is None):
            raise ValueError("filter takes exactly one of fn (a row predicate) or expr "
                             "(a pyarrow.compute expression such as pc.field('x') > 0)")
        self.fn = fn
        self.expr = expr
        self.name = f"filter({callable_name(fn) if fn is not None else expr})"

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table
        if self.expr is not None:
            return table.filter(self.expr)
        keep = [self.fn(r) for r in table_to_rows(table)]
        if keep and not isinstance(keep[0], (bool, int)) and type(keep[0]).__name__ != "bool_":
            raise UDFReturnTypeError(f"function {callable_name(self.fn)} passed to filter returned "
                                     f"{type(keep[0]).__name__}; it must return a bool per row")
        return table.filter(pa.array(keep, type=pa.bool_()))


class SelectColumns(BlockTransform):
    def __init__(self, columns: Sequence[str]):
        self.columns = _column_list(columns, "select_columns")
        self.name = f"select_columns({self.columns})"

    def __call__(self, table: pa.Table) -> pa.Table:
        check_columns(table.schema, self.columns, "select_columns")
        return table.select(self.columns)


class DropColumns(BlockTransform):
    def __init__(self, columns: Sequence[str]):
        self.columns = _column_list(columns, "drop_columns")
        self.name = f"drop_columns({self.columns})"

    def __call__(self, table: pa.Table) -> pa.Table:
        check_columns(table.schema, self.columns, "drop_columns")
        return table.drop_columns(self.columns)


class RenameColumns(BlockTransform):
    def __init__(self, names: dict | Sequence[str]):
        self.names = dict(names) if isinstance(names, dict) else list(names)
        self.name = f"rename_columns({self.names})"

    def __call__(self, table: pa.Table) -> pa.Table:
        if isinstance(self.names, list):
            if len(self.names) != table.num_columns:
                raise ValueError(f"rename_columns got {len(self.names)} names for "
                                 f"{table.num_columns} columns {table.column_names}")
            return table.rename_columns(self.names)
        check_columns(table.schema, self.names, "rename_columns")
        return table.rename_columns([self.names.get(c, c) for c in table.column_names])


class AddColumn(BlockTransform):
    """``fn(batch) -> column values``; replaces the column if it exists."""

    def __init__(self, column: str, fn: Callable, batch_format: str = "pandas"):
        self.column = column
        self.fn = fn
        self.batch_format = check_batch_format(batch_format)
        self.name = f"add_column({column!r}, {callable_name(fn)})"

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0 and self.column in table.column_names:
            return table
        values = self.fn(to_batch(table, self.batch_format))
        try:
            col = array_to_arrow(values, self.column)
        except (TypeError, ValueError, pa.ArrowInvalid) as exc:
            raise UDFReturnTypeError(
                f"function {callable_name(self.fn)} passed to add_column({self.column!r}) returned "
                f"{type(values).__name__}, which is not a column of values ({exc})") from exc
        if len(col) != table.num_rows:
            raise UDFReturnTypeError(
                f"function {callable_name(self.fn)} passed to add_column({self.column!r}) returned "
                f"{len(col)} values for a batch of {table.num_rows} rows")
        if self.column in table.column_names:
            return table.set_column(table.column_names.index(self.column), self.column, col)
        return table.append_column(self.column, col)


def _column_list(columns, operation: str) -> list[str]:
    if isinstance(columns, str):
        return [columns]
    columns = list(columns)
    if not all(isinstance(c, str) for c in columns):
        raise TypeError(f"{operation} takes column names (str), got {columns!r}")
    return columns


def apply_chain(chain: Sequence[BlockTransform], table: pa.Table) -> pa.Table:
    for transform in chain:
        table = transform(table)
    return table
