"""The fit signature of shoal.ml: which columns of a table an estimator reads.

Every estimator, transformer and Pipeline takes ``fit(X, y=None, *, features=None,
label=None)``; ``resolve_fit_columns`` is the one place that checks those arguments (the
input layer, ``as_design_matrix``, calls it for every estimator built on it; the
column-reading transformers and Pipeline call it directly).
"""
from __future__ import annotations

from shoal.exceptions import InvalidInputError
from shoal.ml._executor import _is_dataset


def _name_of(estimator) -> str:
    if isinstance(estimator, str):
        return estimator
    return type(estimator).__name__


def is_table(X) -> bool:
    """True for input with named columns: a shoal.data Dataset, pandas DataFrame, pyarrow Table,
    or Polars DataFrame."""
    if _is_dataset(X):
        return True
    mod = type(X).__module__
    return (mod.startswith(("pandas", "polars")) and hasattr(X, "columns")) or \
        (mod.startswith("pyarrow") and hasattr(X, "column_names"))


def as_frame(X):
    """A pyarrow Table or Polars DataFrame as a pandas DataFrame; anything else unchanged."""
    mod = type(X).__module__
    if mod.startswith("pyarrow") and hasattr(X, "column_names"):
        return X.to_pandas()
    if mod.startswith("polars") and hasattr(X, "to_pandas"):
        return X.to_pandas()
    return X


def table_columns(X) -> list[str] | None:
    """The column names of a table (see is_table), or None for unnamed input (arrays)."""
    if _is_dataset(X):
        # a shoal Dataset's own columns(): an error running its plan reaches the caller
        return list(X.columns()) if hasattr(X, "columns") else _dataset_columns(X)
    if not is_table(X):
        return None
    cols = X.column_names if hasattr(X, "column_names") else X.columns
    return [str(c) for c in cols]


def resolve_fit_columns(X, y=None, *, features=None, label=None, estimator="estimator",
                        supervised: bool = False, method: str = "fit", features_param: str = "features="):
    """The one contract of ``fit(X, y=None, *, features=None, label=None)`` for every shoal.ml
    estimator, transformer and Pipeline; returns ``(y, features, label)`` checked against X.

    - X a table (shoal.data Dataset, pandas, Arrow or Polars): ``features=`` names the input
      columns (a list, or one name; default: every column but the label, or the estimator's own
      default such as a ``features`` vector column) and ``label=`` the label column.
      ``y="column"`` is the same as ``label="column"``. Unknown names raise
      InvalidInputError listing the available columns.
    - X an array: ``y`` is the label array; ``features=``/``label=`` are an error (no names).
    - ``supervised``: a label is required (as ``label=``, ``y="column"`` or an array y).
      A Dataset's label must be a column name, never a separate array.

    Returns features as a list of str (or None: the estimator's default) and label as a str
    (or None, y then being the label array or None). ``features_param`` names the argument
    the feature columns came from in messages (a transformer's ``input_cols=``).
    """
    who = f"{_name_of(estimator)}.{method}()"
    if isinstance(y, str):
        if label is not None and label != y:
            raise InvalidInputError(f"{who} got the label twice, y={y!r} and label={label!r}; "
                                    f"pass it once, as label='<column>'.")
        label, y = y, None
    if features is not None:
        if isinstance(features, str):
            features = [features]
        try:
            features = list(features)
        except TypeError:
            raise InvalidInputError(f"features= of {who} must be a list of column names, got "
                                    f"{type(features).__name__}") from None
        bad = [c for c in features if not isinstance(c, str)]
        if bad or not features:
            raise InvalidInputError(f"features= of {who} must be a non-empty list of column names "
                                    f"(str), got {features!r}")
        dup = sorted({c for c in features if features.count(c) > 1})
        if dup:
            raise InvalidInputError(f"features= of {who} names {dup} more than once; name each "
                                    f"column once.")
    if label is not None and not isinstance(label, str):
        raise InvalidInputError(f"label= of {who} must be a column name (str), got "
                                f"{type(label).__name__}; pass an array label as y.")
    columns = table_columns(X)
    if columns is None:
        if features is not None or label is not None:
            raise InvalidInputError(
                f"features= and label= of {who} name columns, but X is an unnamed "
                f"{type(X).__name__}; pass the label array as y, or give a shoal.data Dataset, a "
                f"pandas/Polars DataFrame or an Arrow Table with named columns.")
        return y, None, None
    if _is_dataset(X) and y is not None:
        raise InvalidInputError(
            f"{who}: pass the label of a Dataset as a column name (label='<column>'), not as a "
            f"separate array y; available columns: {columns}")
    if label is not None and y is not None:
        raise InvalidInputError(f"{who} got the label twice, as y and as label={label!r}; pass "
                                f"one of them.")
    unknown = [c for c in ([label] if label is not None else []) + list(features or [])
               if c not in columns]
    if unknown:
        kind = "label=" if unknown[0] == label else features_param
        raise InvalidInputError(
            f"column {unknown[0]!r} is missing from X (given to {who} as {kind}); available "
            f"columns: {columns}. Name columns from that list (check the spelling, or the columns "
            f"an earlier step wrote).")
    if features is not None and label is not None and label in features:
        raise InvalidInputError(f"{who}: the label column {label!r} is also in features=; a model "
                                f"must not read its own label. Remove it from features=.")
    if supervised and label is None and y is None:
        raise InvalidInputError(
            f"{_name_of(estimator)} is supervised: {who} needs the label column, label='<column>' "
            f"(one of {columns}).")
    return y, features, label


def select_table(X, features=None, label=None):
    """An in-memory table (pandas, Arrow, Polars) as a pandas DataFrame of the ``features``
    columns (default: all but ``label``); a Dataset or an array is returned unchanged."""
    if _is_dataset(X) or not is_table(X):
        return X
    X = as_frame(X)
    if features is not None:
        return X[list(features)]
    return X.drop(columns=[label]) if label is not None else X


def merge_input_columns(own, features, estimator, param: str = "input_cols"):
    """The input columns of a transformer that can also name them in its constructor
    (``input_cols=``): ``own`` or fit's ``features=``, which must agree when both are given."""
    if own is None:
        return features
    own = [own] if isinstance(own, str) else list(own)
    if features is not None and list(features) != own:
        raise InvalidInputError(
            f"{_name_of(estimator)} got its input columns twice, {param}={own} and features="
            f"{list(features)}; name them once (either is fine).")
    return own


def _dataset_columns(ds):
    """The column names of a Dataset-like object (columns(), column_names or schema), or None."""
    for attr in ("columns", "column_names"):
        v = getattr(ds, attr, None)
        if v is None:
            continue
        try:
            v = v() if callable(v) else v
            return list(v)
        except Exception:
            continue
    schema = getattr(ds, "schema", None)
    try:
        s = schema() if callable(schema) else schema
        if s is not None and hasattr(s, "names"):
            return list(s.names)
    except Exception:
        pass
    return None
