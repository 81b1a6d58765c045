"""Map-side kernels of shoal.ml.multiclass. NumPy only: they run in worker tasks."""
from __future__ import annotations

import numpy as np


def binary_block(X, y, code):
    """A block of the class-coded design matrix relabelled: 1 where the class is ``code``, else 0."""
    return X, (y == code).astype(np.int64)


def binary_batch(table, label, value, column):
    """A Dataset block (Arrow) with ``column`` appended: 1 where ``label`` equals ``value``."""
    import pyarrow as pa
    y = table.column(label).to_numpy(zero_copy_only=False)
    return table.append_column(column, pa.array((y == value).astype(np.int64)))
