"""shoal.data: partitioned datasets of Arrow blocks, processed by shoal tasks and actors.

    import shoal.data as sd
    ds = sd.read_parquet("data/").map_batches(normalize).filter(expr=pc.field("y") > 0)
    for batch in ds.iter_torch_batches(batch_size=256): ...

Sources are lazy (files, ``range``) or put into the object store at once
(``from_numpy``, ``from_pandas``, ...). Transforms build a plan; consumers
run it, streaming block by block through a bounded window of tasks.
"""
from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.data", "data", "pyarrow", "pandas")

from shoal.data._aggregate import AggregateFn, Count, Max, Mean, Min, Std, Sum
from shoal.data._context import DataContext
from shoal.data._dataset import Dataset
from shoal.data._groupby import GroupedData
from shoal.data._plan import ActorCompute
from shoal.data._sources import (from_arrow, from_block_refs, from_items, from_numpy,
                                 from_pandas, from_polars, from_spark, range, range_tensor,
                                 read_binary_files, read_csv, read_delta, read_images, read_json,
                                 read_libsvm, read_numpy, read_parquet, read_sql, read_text)

__all__ = [
    "ActorCompute", "AggregateFn", "Count", "DataContext", "Dataset", "GroupedData", "Max",
    "Mean", "Min", "Std", "Sum", "from_arrow", "from_block_refs", "from_items", "from_numpy",
    "from_pandas", "from_polars", "from_spark", "range", "range_tensor", "read_binary_files",
    "read_csv", "read_delta", "read_images", "read_json", "read_libsvm", "read_numpy",
    "read_parquet", "read_sql", "read_text",
]
