"""Dataset: an ordered list of Arrow blocks in the object store, built lazily."""
from __future__ import annotations

import os

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from shoal.data import _iterate, _join, _row_ranges, _shuffle
from shoal.data._aggregate import AggregateFn, Max, Mean, Min, Std, Sum
from shoal.data._block import (check_columns, column_to_numpy, concat, table_to_pandas,
                               table_to_rows)
from shoal.data._execution import Executor, StageStats
from shoal.data._plan import (ActorCompute, AllToAllNode, BinaryNode, BlocksNode, Bundle, LimitNode, Node,
                              UnionNode, add_transform, describe, known_num_blocks,
                              known_num_rows, known_schema)
from shoal.data._transforms import (AddColumn, DropColumns, Filter, FlatMap, MapBatches,
                                    MapRows, RenameColumns, SelectColumns, is_callable_class)
from shoal.data._write import write_files

if TYPE_CHECKING:
    from shoal.data._groupby import GroupedData


class Dataset:
    """An ordered list of blocks (pyarrow Tables) processed by shoal tasks and actors.

    Transforms (``map_batches``, ``filter``, ``sort`` ...) return a new
    Dataset and run nothing; consumers (``count``, ``take``,
    ``iter_batches``, ``write_parquet`` ...) execute the plan, streaming
    block by block. Each consumer runs the plan again; call
    ``materialize()`` to keep the blocks for several passes.
    """

    def __init__(self, plan: Node):
        self._plan = plan
        self._stats: list[StageStats] = []

    # ------------------------------------------------------- execution ---

    def _stream(self) -> Iterator[Bundle]:
        if isinstance(self._plan, BlocksNode):  # nothing to run; keep the stats of the run
            return (bundle for bundle in self._plan.bundles)
        executor = Executor()
        self._stats = executor.stats
        return executor.stream(self._plan)

    def _bundles(self) -> list[Bundle]:
        if isinstance(self._plan, BlocksNode):
            return self._plan.bundles
        return list(self._stream())

    def materialize(self) -> "Dataset":
        """Execute the plan and return a Dataset over the resulting blocks."""
        if isinstance(self._plan, BlocksNode):
            return self
        ds = Dataset(BlocksNode(self._bundles(), name=f"materialized({self._plan.name})"))
        ds._stats = self._stats
        return ds

    def _with(self, node: Node) -> "Dataset":
        return Dataset(node)

    # ------------------------------------------------- one-to-one transforms ---

    def map_batches(self, fn: Callable, *, batch_size: int | None = None,
                    batch_format: str = "numpy", fn_args: Sequence = (),
                    fn_kwargs: dict | None = None, fn_constructor_args: Sequence = (),
                    fn_constructor_kwargs: dict | None = None,
                    concurrency: int | tuple | None = None, num_cpus: float | None = None,
                    num_gpus: float | None = None, **remote_args) -> "Dataset":
        """Apply ``fn(batch) -> batch`` to batches of each block.

        ``fn`` is a function (run in tasks, at most ``concurrency`` at once if
        given) or a callable class (run on a pool of ``concurrency`` actors,
        constructed once each with ``fn_constructor_args``, e.g. to load a
        model once; a ``(min, max)`` tuple gives a pool of ``max``). A batch is a dict
        of NumPy arrays, a pandas DataFrame or a pyarrow Table
        (``batch_format``); ``fn`` returns any of these. ``batch_size=N``: blocks
        are sliced, and small ones joined (zero-copy where a batch lies in one
        block), so every call of a task but its last gets exactly N rows;
        ``batch_size=None`` passes whole blocks, one call per block.
        """
        transform = MapBatches(fn, batch_format, batch_size, fn_args, fn_kwargs,
                               fn_constructor_args, fn_constructor_kwargs)
        options = dict(remote_args)
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if num_gpus is not None:
            options["num_gpus"] = num_gpus
        compute = None
        if is_callable_class(fn):
            size = concurrency[-1] if isinstance(concurrency, tuple) else concurrency
            compute = ActorCompute(size if size is not None else _cluster_cpus())
        elif concurrency is not None:
            if not isinstance(concurrency, int) or concurrency < 1:
                raise ValueError(f"concurrency={concurrency!r} must be a positive int for a "
                                 "function (the most tasks of this stage at once)")
            options["concurrency"] = concurrency
        if compute is None and (fn_constructor_args or fn_constructor_kwargs):
            raise ValueError(f"fn_constructor_args are for callable classes; {fn!r} is a function")
        return self._with(add_transform(self._plan, transform, compute, options))

    def map(self, fn: Callable[[dict], dict], **remote_args) -> "Dataset":
        """Apply ``fn(row) -> row`` to every row (prefer map_batches for speed)."""
        return self._with(add_transform(self._plan, MapRows(fn), None, remote_args))

    def flat_map(self, fn: Callable[[dict], list], **remote_args) -> "Dataset":
        """Apply ``fn(row) -> list of rows`` and concatenate the results."""
        return self._with(add_transform(self._plan, FlatMap(fn), None, remote_args))

    def filter(self, fn: Callable[[dict], bool] | None = None, *, expr=None,
               **remote_args) -> "Dataset":
        """Keep rows where ``fn(row)`` is true, or where the pyarrow expression ``expr`` holds."""
        return self._with(add_transform(self._plan, Filter(fn, expr), None, remote_args))

    def select_columns(self, cols: str | Sequence[str]) -> "Dataset":
        """Only the columns ``cols``, in that order (ColumnNotFoundError names a missing one)."""
        self._check_columns(cols, "select_columns")
        return self._with(add_transform(self._plan, SelectColumns(cols)))

    def drop_columns(self, cols: str | Sequence[str]) -> "Dataset":
        """Every column but ``cols``."""
        self._check_columns(cols, "drop_columns")
        return self._with(add_transform(self._plan, DropColumns(cols)))

    def rename_columns(self, names: dict | Sequence[str]) -> "Dataset":
        """Columns renamed by a ``{old: new}`` dict, or a list of new names for all columns."""
        if isinstance(names, dict):
            self._check_columns(list(names), "rename_columns")
        return self._with(add_transform(self._plan, RenameColumns(names)))

    def add_column(self, col: str, fn: Callable, *, batch_format: str = "pandas") -> "Dataset":
        """Add (or replace) column ``col`` with ``fn(batch) -> values``."""
        return self._with(add_transform(self._plan, AddColumn(col, fn, batch_format)))

    def _check_columns(self, cols, operation: str) -> None:
        schema = known_schema(self._plan)
        if schema is not None:
            check_columns(schema, [cols] if isinstance(cols, str) else list(cols), operation)

    # ------------------------------------------------- all-to-all transforms ---

    def repartition(self, num_blocks: int, *, shuffle: bool = False) -> "Dataset":
        """``num_blocks`` blocks of about equal rows, keeping order (or shuffled)."""
        _check_positive(num_blocks, "repartition(num_blocks)")
        if shuffle:
            fn = partial(_shuffle.random_shuffle, seed=None, n=num_blocks)
        else:
            fn = partial(_repartition_rows, n=num_blocks)
        return self._with(AllToAllNode(self._plan, fn, f"repartition({num_blocks})"))

    def random_shuffle(self, *, seed: int | None = None,
                       num_blocks: int | None = None) -> "Dataset":
        """Rows in a uniformly random order (reproducible with ``seed``)."""
        fn = partial(_shuffle.random_shuffle, seed=seed, n=num_blocks)
        return self._with(AllToAllNode(self._plan, fn, "random_shuffle"))

    def randomize_block_order(self, *, seed: int | None = None) -> "Dataset":
        """Blocks in a random order; rows within a block keep theirs (no data moves)."""
        def shuffle_blocks(bundles, ex):
            order = np.random.default_rng(seed).permutation(len(bundles))
            return [bundles[i] for i in order]
        return self._with(AllToAllNode(self._plan, shuffle_blocks, "randomize_block_order"))

    def sort(self, key: str | Sequence[str], descending: bool | Sequence[bool] = False
             ) -> "Dataset":
        """Rows sorted by ``key`` (one or several columns); nulls last."""
        keys = [key] if isinstance(key, str) else list(key)
        if not keys:
            raise ValueError("sort needs at least one column name")
        if not isinstance(descending, bool) and len(descending) != len(keys):
            raise ValueError(f"sort got {len(descending)} descending flags for {len(keys)} keys")
        self._check_columns(keys, "sort")
        fn = partial(_shuffle.sort, keys=keys, descending=descending)
        return self._with(AllToAllNode(self._plan, fn, f"sort({keys})"))

    def groupby(self, key: str | Sequence[str] | None) -> "GroupedData":
        """Group rows by ``key``; aggregate with ``.count() .sum() .mean() .aggregate(...)``."""
        from shoal.data._groupby import GroupedData

        keys = [] if key is None else [key] if isinstance(key, str) else list(key)
        self._check_columns(keys, "groupby")
        return GroupedData(self, keys)

    def union(self, *others: "Dataset") -> "Dataset":
        """This dataset's blocks followed by the others'; columns must match."""
        for o in others:
            if not isinstance(o, Dataset):
                raise TypeError(f"union takes Datasets, got {type(o).__name__}")
        return self._with(UnionNode([self._plan] + [o._plan for o in others]))

    def join(self, other: "Dataset", on: str | Sequence[str], how: str = "inner", *,
             suffixes: tuple[str, str] = ("_x", "_y"),
             num_partitions: int | None = None) -> "Dataset":
        """Rows of this dataset joined with ``other``'s on equal values of the ``on`` columns.

        how: "inner", "left", "right", "outer" (rows of both sides, nulls where
        a side has no match), "semi" (rows of this dataset that have a match,
        its columns only) or "anti" (rows that have none). Both sides are
        hash-partitioned on the keys into ``num_partitions`` parts (default:
        the larger block count) by tasks, and each part joined in its own
        task, so no process holds either side whole. Key columns are
        coalesced into one; other columns both sides have get ``suffixes``
        (pandas.merge's rule and column order). As in SQL and Spark, a null
        key matches nothing. Keys of comparable types (int32/int64, int/float,
        string/large_string) are cast to one; SchemaMismatchError names a key
        column whose types cannot be compared, ColumnNotFoundError one that
        is missing. The order of the output rows is not defined.
        """
        if not isinstance(other, Dataset):
            raise TypeError(f"join takes a Dataset as other, got {type(other).__name__}")
        if how not in _join.JOIN_TYPES:
            raise ValueError(f"join how={how!r} is not one of {list(_join.JOIN_TYPES)}")
        keys = [on] if isinstance(on, str) else list(on)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"join on={on!r} needs one column name or a list of them")
        if len(suffixes) != 2 or suffixes[0] == suffixes[1]:
            raise ValueError(f"join suffixes={suffixes!r} must be two different strings")
        if num_partitions is not None:
            _check_positive(num_partitions, "join(num_partitions)")
        self._check_columns(keys, "join (left side)")
        other._check_columns(keys, "join (right side)")
        fn = partial(_join.join, keys=keys, how=how, suffixes=tuple(suffixes),
                     num_partitions=num_partitions)
        return self._with(BinaryNode(self._plan, other._plan, fn, f"join({keys}, how={how!r})"))

    def zip(self, other: "Dataset") -> "Dataset":
        """This dataset's columns and ``other``'s side by side, row by row (same row counts).

        The result keeps this dataset's blocks; ``other`` is re-cut to match.
        A column name both have gets ``_1`` appended on ``other``'s side (Ray
        Data's rule). ValueError when the row counts differ.
        """
        if not isinstance(other, Dataset):
            raise TypeError(f"zip takes a Dataset, got {type(other).__name__}")
        return self._with(BinaryNode(self._plan, other._plan, _join.zip_datasets, "zip"))

    def random_sample(self, fraction: float, *, seed: int | None = None) -> "Dataset":
        """Each row kept with probability ``fraction`` (about ``fraction * count()`` rows).

        With ``seed`` the sample is the same on every run over the same blocks.
        """
        if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"random_sample fraction={fraction!r} must be in [0, 1]")
        fn = partial(_join.random_sample, fraction=float(fraction), seed=seed)
        return self._with(AllToAllNode(self._plan, fn, f"random_sample({fraction})"))

    def limit(self, n: int) -> "Dataset":
        """The first ``n`` rows (streaming: stops upstream work once it has them)."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"limit({n!r}) needs a non-negative int")
        return self._with(LimitNode(self._plan, int(n)))

    # ------------------------------------------------------------ consumers ---

    def count(self) -> int:
        """The number of rows (from metadata when known; blocks are not fetched)."""
        rows = known_num_rows(self._plan)
        if rows is not None:
            return rows
        return sum(meta.num_rows for _, meta in self._stream())

    def schema(self) -> pa.Schema:
        """The Arrow schema (runs the plan up to the first non-empty block if needed)."""
        schema = known_schema(self._plan)
        if schema is not None:
            return schema
        first = None
        stream = self._stream()
        try:
            for _, meta in stream:
                first = first or meta.schema
                if meta.num_rows:
                    return meta.schema
        finally:
            stream.close()
        return first if first is not None else pa.schema([])

    def columns(self) -> list[str]:
        """The column names (from the schema)."""
        return self.schema().names

    def num_blocks(self) -> int:
        """The number of blocks (from the plan when known, else by running it)."""
        known = known_num_blocks(self._plan)
        return known if known is not None else len(self._bundles())

    def size_bytes(self) -> int:
        """Bytes of the blocks in memory (runs the plan if not materialized)."""
        return sum(meta.size_bytes for _, meta in self._bundles())

    def take(self, limit: int = 20) -> list[dict]:
        """The first ``limit`` rows as dicts (only the blocks needed are computed)."""
        return self.limit(limit).take_all()

    def take_all(self, limit: int | None = None) -> list[dict]:
        """Every row as a dict; ValueError when there are more than ``limit``."""
        rows = table_to_rows(self.to_arrow())
        if limit is not None and len(rows) > limit:
            raise ValueError(f"the dataset has more than {limit} rows; use take({limit})")
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format: str = "numpy") -> Any:
        """The first ``batch_size`` rows as one batch of ``batch_format`` (numpy, pandas, pyarrow)."""
        return _iterate.to_batch(self.limit(batch_size).to_arrow(), batch_format)

    def show(self, limit: int = 20) -> None:
        """Print the first ``limit`` rows."""
        for row in self.take(limit):
            print(row)

    def to_arrow(self) -> pa.Table:
        """All rows as one pyarrow Table."""
        tables = list(_iterate.fetch_blocks(self._stream(), prefetch_blocks=2))
        if not tables:
            return pa.table({})
        return concat(tables)

    def to_pandas(self) -> pd.DataFrame:
        """All rows as one pandas DataFrame in the driver."""
        return table_to_pandas(self.to_arrow())

    def to_spark(self, spark):
        """A Spark DataFrame of all rows, handed to the session ``spark`` as Arrow (no
        row-by-row conversion); 1-D tensor columns become Spark arrays."""
        from shoal.data._spark import arrow_to_spark

        return arrow_to_spark(self.to_arrow(), spark)

    def to_numpy(self, column: str | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """All rows as a dict of NumPy arrays, or one array for ``column``."""
        table = self.to_arrow()
        if column is not None:
            check_columns(table.schema, [column], "to_numpy")
            return column_to_numpy(table.column(column))
        return {name: column_to_numpy(table.column(name)) for name in table.column_names}

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "numpy",
                     drop_last: bool = False, prefetch_batches: int = 1,
                     local_shuffle_buffer_size: int | None = None,
                     local_shuffle_seed: int | None = None) -> Iterator[Any]:
        """Batches of exactly ``batch_size`` rows (the last may be short unless ``drop_last``)."""
        return _iterate.iter_batches(
            self._stream(), batch_size=batch_size, batch_format=batch_format,
            drop_last=drop_last, prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed)

    def iter_torch_batches(self, *, batch_size: int | None = 256, dtypes=None,
                           device: Any = "cpu", drop_last: bool = False,
                           prefetch_batches: int = 1, collate_fn=None,
                           local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None) -> Iterator[Any]:
        """Batches as dicts of torch tensors (``dtypes``: one dtype or a dict per column)."""
        return _iterate.iter_torch_batches(
            self._stream(), batch_size=batch_size, dtypes=dtypes, device=device,
            drop_last=drop_last, prefetch_batches=prefetch_batches, collate_fn=collate_fn,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed)

    def iter_tf_batches(self, *, batch_size: int | None = 256, dtypes=None,
                        drop_last: bool = False, prefetch_batches: int = 1,
                        local_shuffle_buffer_size: int | None = None,
                        local_shuffle_seed: int | None = None) -> Iterator[Any]:
        """Batches as dicts of ``tf.Tensor`` (``dtypes``: one tf dtype or a dict per column;
        needs the ``tf`` extra). Numeric columns pass to TensorFlow without a copy where
        their buffers allow."""
        return _iterate.iter_tf_batches(
            self._stream(), batch_size=batch_size, dtypes=dtypes, drop_last=drop_last,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed)

    def to_tf(self, feature_columns, label_columns=None, *, batch_size: int = 256,
              drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
              local_shuffle_buffer_size: int | None = None,
              local_shuffle_seed: int | None = None):
        """A ``tf.data.Dataset`` of ``(features, labels)`` batches (Ray Data's ``to_tf``).

        ``feature_columns``/``label_columns`` are a column name (that column's
        tensor) or a list (a dict of tensors). With ``rank`` and ``world_size``
        (e.g. ``shoal.train.get_context()``'s) the rows are split into
        ``world_size`` equal parts (``split(world_size, equal=True)``) and this
        rank's is used, so every rank sees the same number of batches. Needs
        the ``tf`` extra.
        """
        if (rank is None) != (world_size is None):
            raise ValueError("to_tf needs both rank and world_size, or neither")
        ds = self
        if world_size is not None:
            if not 0 <= int(rank) < int(world_size):
                raise ValueError(f"rank={rank} is not in 0..{world_size - 1}")
            ds = self.split(int(world_size), equal=True)[int(rank)]
        return _iterate.to_tf_dataset(
            lambda: ds._stream(), feature_columns, label_columns, batch_size=batch_size,
            drop_last=drop_last, local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed, schema=ds.schema())

    def iter_rows(self) -> Iterator[dict]:
        """Every row as a dict, streaming block by block."""
        return _iterate.iter_rows(self._stream())

    # --------------------------------------------------------------- splits ---

    def split(self, n: int, *, equal: bool = False) -> list["Dataset"]:
        """``n`` materialized datasets, e.g. one per training worker.

        ``equal=False`` hands out whole blocks (no data moves), balancing
        rows. ``equal=True`` gives every split exactly ``count() // n`` rows,
        dropping the remainder.
        """
        _check_positive(n, "split(n)")
        bundles = self._bundles()
        total = sum(m.num_rows for _, m in bundles)
        if equal:
            size = total // n
            return [Dataset(BlocksNode(_row_ranges.slice_rows(bundles, i * size, (i + 1) * size)))
                    for i in range(n)]
        if len(bundles) >= n:
            groups = _row_ranges.group_blocks(bundles, n)
            return [Dataset(BlocksNode(g)) for g in groups]
        return [Dataset(BlocksNode(_row_ranges.slice_rows(bundles, a, b)))
                for a, b in _row_ranges.even_ranges(total, n)]

    def streaming_split(self, n: int, *, equal: bool = False) -> list:
        """``n`` iterators sharing one streaming execution (nothing materialized up front).

        Blocks go to whichever split asks first, so faster consumers take
        more. Every split must iterate each epoch. ``equal=True`` is not
        offered on a stream; use ``split(n, equal=True)`` for equal rows.
        """
        from shoal.data._streaming_split import streaming_split

        _check_positive(n, "streaming_split(n)")
        if equal:
            raise ValueError("streaming_split hands out whole blocks as they are produced and "
                             "cannot promise equal rows; use split(n, equal=True), which "
                             "materializes the dataset and cuts it into equal parts")
        return streaming_split(self._plan, n)

    def split_at_indices(self, indices: Sequence[int]) -> list["Dataset"]:
        """Datasets of rows ``[0, i0)``, ``[i0, i1)``, ..., ``[ik, count())``."""
        indices = list(indices)
        if any(b < a for a, b in zip(indices, indices[1:])) or any(i < 0 for i in indices):
            raise ValueError(f"split_at_indices needs sorted non-negative indices, got {indices}")
        bundles = self._bundles()
        total = sum(m.num_rows for _, m in bundles)
        bounds = [0] + [min(i, total) for i in indices] + [total]
        return [Dataset(BlocksNode(_row_ranges.slice_rows(bundles, a, b)))
                for a, b in zip(bounds[:-1], bounds[1:])]

    def train_test_split(self, test_size: float | int, *, shuffle: bool = False,
                         seed: int | None = None) -> tuple["Dataset", "Dataset"]:
        """(train, test): the last ``test_size`` (fraction or row count) rows are the test set."""
        ds = self.random_shuffle(seed=seed) if shuffle else self
        ds = ds.materialize()
        total = ds.count()
        if isinstance(test_size, float):
            if not 0.0 < test_size < 1.0:
                raise ValueError(f"test_size={test_size} must be in (0, 1) as a fraction")
            train_rows = int(total * (1 - test_size))
        elif isinstance(test_size, (int, np.integer)) and 0 < test_size < total:
            train_rows = total - int(test_size)
        else:
            raise ValueError(f"test_size={test_size!r} must be a fraction in (0, 1) or a row "
                             f"count in (0, {total})")
        train, test = ds.split_at_indices([train_rows])
        return train, test

    # -------------------------------------------------------------- writers ---

    def write_parquet(self, path: str, **arrow_parquet_args) -> list[str]:
        """Write one Parquet file per non-empty block into folder ``path``; return the files."""
        return self._write(path, "parquet", arrow_parquet_args)

    def write_csv(self, path: str, **arrow_csv_args) -> list[str]:
        """Write one CSV file per non-empty block into folder ``path``; return the files."""
        return self._write(path, "csv", arrow_csv_args)

    def write_json(self, path: str, **pandas_json_args) -> list[str]:
        """Write newline-delimited JSON files."""
        return self._write(path, "json", pandas_json_args)

    def write_numpy(self, path: str, *, column: str = "data") -> list[str]:
        """Write ``column`` of each non-empty block as one ``.npy`` file into folder ``path``."""
        return self._write(path, "numpy", {"column": column})

    def write_delta(self, path: str, *, mode: str = "append", partition_by=None,
                    storage_options: dict | None = None) -> None:
        """Write the rows to the Delta Lake table at ``path`` (created if absent) in one commit.

        ``mode`` is "append", "overwrite", "error" or "ignore", as in
        ``deltalake.write_deltalake``. The blocks stream through the driver into a
        single transaction, so readers see all of the write or none of it. Needs
        the ``delta`` extra.
        """
        import shoal

        from shoal.data._formats import write_delta_table

        if mode not in ("append", "overwrite", "error", "ignore"):
            raise ValueError(f"write_delta(mode={mode!r}): use append, overwrite, error or ignore")
        executor = Executor()
        self._stats = executor.stats
        tables = (shoal.get(ref) for ref, meta in executor.stream(self._plan) if meta.num_rows)
        write_delta_table(os.fspath(path), tables, mode, partition_by, storage_options)

    def _write(self, path, file_format: str, options: dict) -> list[str]:
        executor = Executor()
        self._stats = executor.stats
        return write_files(executor.stream(self._plan), path, file_format, options,
                           executor.window)

    # ---------------------------------------------------- global aggregates ---

    def aggregate(self, *aggs: AggregateFn) -> dict:
        """Aggregates over all rows, as ``{name: value}``."""
        result = self.groupby(None).aggregate(*aggs).take_all()
        return result[0] if result else {a.name: None for a in aggs}

    def _global(self, agg_type, on, **kwargs):
        cols = [on] if isinstance(on, str) else list(on)
        result = self.aggregate(*[agg_type(c, **kwargs) for c in cols])
        values = list(result.values())
        return values[0] if isinstance(on, str) else result

    def sum(self, on: str | Sequence[str]):
        """Sum of column ``on`` (a value), or of each column of a list (a ``{name: value}`` dict)."""
        return self._global(Sum, on)

    def min(self, on: str | Sequence[str]):
        """Smallest value of ``on`` (one column: a value; a list: a dict), as ``sum``."""
        return self._global(Min, on)

    def max(self, on: str | Sequence[str]):
        """Largest value of ``on`` (one column: a value; a list: a dict), as ``sum``."""
        return self._global(Max, on)

    def mean(self, on: str | Sequence[str]):
        """Mean of ``on`` (one column: a value; a list: a dict), as ``sum``."""
        return self._global(Mean, on)

    def std(self, on: str | Sequence[str], ddof: int = 1):
        """Standard deviation of ``on`` (``ddof=1``: the sample's, as pandas), as ``sum``."""
        return self._global(Std, on, ddof=ddof)

    def unique(self, column: str) -> list:
        """The distinct values of ``column``, sorted (nulls last)."""
        return [r[column] for r in self.groupby(column).count().take_all()]

    # ------------------------------------------------- internal block access ---

    def get_internal_block_refs(self) -> list:
        """ObjectRefs of the materialized Arrow blocks, in order (runs the plan if needed)."""
        return [ref for ref, _ in self._bundles()]

    _block_refs = get_internal_block_refs

    def _block_bundles(self) -> list[Bundle]:
        """(ObjectRef, BlockMeta) pairs of the materialized blocks."""
        return self._bundles()

    @staticmethod
    def from_block_refs(refs: Sequence) -> "Dataset":
        """A Dataset over ObjectRefs of pyarrow Tables already in the object store."""
        from shoal.data._sources import from_block_refs

        return from_block_refs(refs)

    # ------------------------------------------------------------- display ---

    def stats(self) -> str:
        """Per-stage blocks, rows, bytes and times of the last execution."""
        if not self._stats:
            return "not executed yet; plan:\n" + describe(self._plan)
        return "\n".join(s.line() for s in self._stats)

    def __repr__(self) -> str:
        rows = known_num_rows(self._plan)
        schema = known_schema(self._plan)
        blocks = known_num_blocks(self._plan)
        cols = "?" if schema is None else ", ".join(f"{f.name}: {f.type}" for f in schema)
        return (f"Dataset(num_blocks={blocks if blocks is not None else '?'}, "
                f"num_rows={rows if rows is not None else '?'}, schema={{{cols}}})")


def _repartition_rows(bundles: list[Bundle], ex, n: int) -> list[Bundle]:
    total = sum(m.num_rows for _, m in bundles)
    return _row_ranges.take_row_ranges(bundles, _row_ranges.even_ranges(total, n))


def _check_positive(n, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} needs a positive int, got {n!r}")


def _cluster_cpus() -> int:
    import shoal

    return max(1, int(shoal.cluster_resources().get("CPU", 1)))
