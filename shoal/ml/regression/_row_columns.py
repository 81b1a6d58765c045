"""Per-row inputs beside the features (weights, offsets): carried as X's trailing columns, so
they travel with the rows into the blocks and the map-side kernels split them off."""
from __future__ import annotations

import numpy as np
import scipy.sparse

from shoal.exceptions import InvalidInputError
from shoal.ml._columns import as_frame, is_table, resolve_fit_columns, table_columns
from shoal.ml._executor import _is_dataset


def append_row_columns(estimator, X, y, features, label, named, given):
    """X with the per-row columns last, and fit's arguments to pass on.

    named: [(constructor parameter, column name or None)] (Spark's weightCol, offsetCol),
    read from a table; given: [(fit argument, array or None)] in the same order, for
    in-memory input (arrays, or a DataFrame without such columns). Returns (X, y, features,
    label, present flags per entry, names for messages per entry).
    """
    who = type(estimator).__name__
    n = len(named)
    arrays = [v for _, v in given]
    columns_named = [c for _, c in named]
    if any(v is not None for v in arrays):
        if _is_dataset(X) or any(c is not None for c in columns_named):
            raise InvalidInputError(
                f"{who}: a Dataset's per-row inputs are its columns, named by "
                f"{' / '.join(p + '=' for p, _ in named)}; {' / '.join(a + '=' for a, _ in given)} are for "
                f"in-memory input (and not both ways at once).")
        if is_table(X):
            # an in-memory table: its feature columns, then the arrays as trailing columns
            y, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=estimator,
                                                     supervised=True)
            frame = as_frame(X)
            if label is not None:
                y, frame = frame[label].to_numpy(), frame.drop(columns=[label])
            X = frame[features] if features is not None else frame
            features = label = None
        elif scipy.sparse.issparse(X):
            return X, y, None, None, (False,) * n, (None,) * n    # fit_input rejects it, saying why
        rows = len(as_frame(X)) if is_table(X) else np.asarray(X).shape[0]
        cols = []
        for (arg, v) in given:
            if v is not None:
                v = np.asarray(v, dtype=np.float64).ravel()
                if len(v) != rows:
                    raise InvalidInputError(f"{who}: {arg}= has {len(v)} values for {rows} rows of X")
                cols.append(v)
        if is_table(X):
            frame = as_frame(X).copy()
            for j, v in enumerate(cols):
                frame[f"__shoal_row_column_{j}"] = v     # trailing: trimmed from the names after fit
            X = frame
        else:
            X = np.column_stack([np.asarray(X, dtype=np.float64)] + cols)
        return (X, y, None, None, tuple(v is not None for v in arrays),
                tuple(f"{a}=" for a, _ in given))
    if not is_table(X):
        if any(c is not None for c in columns_named):
            raise InvalidInputError(f"{who}: {' / '.join(p + '=' for p, _ in named)} name table columns; with "
                                    f"array input pass {' / '.join(a + '=' for a, _ in given)} to fit.")
        return X, y, features, label, (False,) * n, (None,) * n
    y, features, label = resolve_fit_columns(X, y, features=features, label=label, estimator=estimator,
                                             supervised=True)
    extra = [c for c in columns_named if c is not None]
    if not extra:
        return X, y, features, label, (False,) * n, (None,) * n
    columns = table_columns(X)
    for param, c in named:
        if c is not None and c not in columns:
            raise InvalidInputError(f"{who}: column {c!r} ({param}=) is missing from X; available columns: "
                                    f"{columns}")
        if c is not None and features is not None and c in features:
            raise InvalidInputError(f"{who}: the {param} column {c!r} is also in features=; remove it.")
    if features is None:
        features = [c for c in columns if c != label and c not in extra]
    return (X, y, features + extra, label, tuple(c is not None for c in columns_named), tuple(columns_named))
