"""RFormula: an R model formula ("y ~ a + b + a:c - 1") turned into a feature vector and a label,
as Spark's RFormula does it.

Operators: ``~`` separates the label from the terms; ``+`` adds a term, ``-`` removes one;
``:`` is an interaction (the product of its columns, string columns one-hot encoded with all
their categories); ``.`` is every column but the label; ``+ 0`` or ``- 1`` drops the
intercept (``+ 1`` keeps it). A string column on its own is one-hot encoded with its last
category dropped (categories ordered by ``string_indexer_order_type``), except for the first
string term of a formula without intercept, which keeps every category, as Spark does. Numeric
and boolean columns enter as they are, vector columns element by element. A string label is
indexed (most frequent first), a numeric one cast to float64.

Fit counts the categories of the string columns per block (tasks on a Dataset) and merges
the counts; transform builds the features block by block.
"""
from __future__ import annotations

import re

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shoal.exceptions import InvalidInputError
from shoal.ml._base import ShoalEstimatorMixin, check_fitted
from shoal.ml._feature_kernels import row_kron
from shoal.ml._input import (_is_dataset, as_frame, column_to_matrix, is_table, is_vector_type,
                             map_dataset_blocks)
from shoal.ml._vectors import vector_column

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][\w.]*|`[^`]+`)|(?P<num>\d+)|(?P<op>[~+\-:.]))")
_ORDERS = ("frequencyDesc", "frequencyAsc", "alphabetAsc", "alphabetDesc")


# ---------------------------------------------------------------- parsing

def parse_formula(formula: str):
    """``(label, [(sign, [factor, ...]) ...], intercept)`` of an R formula; a factor is a column
    name or "." and sign is +1 or -1 (a removed term). Raises InvalidInputError naming the spot."""
    if not isinstance(formula, str) or "~" not in formula:
        raise InvalidInputError(f"RFormula formula={formula!r} must be a string 'label ~ terms' "
                                f"(e.g. 'y ~ a + b + a:c')")
    tokens, pos = [], 0
    text = formula.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise InvalidInputError(f"RFormula cannot parse {formula!r} at {text[pos:]!r}: use column "
                                    f"names and the operators ~ + - : . (0 or 1 for the intercept)")
        kind = m.lastgroup
        value = m.group(kind)
        tokens.append((kind, value.strip("`") if kind == "name" else value))
        pos = m.end()
    if not tokens or tokens[0][0] != "name" or len(tokens) < 2 or tokens[1] != ("op", "~"):
        raise InvalidInputError(f"RFormula formula={formula!r} must start with the label column and "
                                f"'~' (e.g. 'y ~ a + b')")
    label, rest = tokens[0][1], tokens[2:]
    if not rest:
        raise InvalidInputError(f"RFormula formula={formula!r} has no terms after '~'")
    terms, intercept, i, sign = [], True, 0, 1
    while i < len(rest):
        if rest[i] in (("op", "+"), ("op", "-")):
            sign = 1 if rest[i][1] == "+" else -1
            i += 1
            if i >= len(rest):
                raise InvalidInputError(f"RFormula formula={formula!r} ends with an operator")
        if rest[i][0] == "num":
            if rest[i][1] not in ("0", "1"):
                raise InvalidInputError(f"RFormula formula={formula!r}: only 0 and 1 (the intercept) "
                                        f"may stand as numbers, got {rest[i][1]}")
            intercept = (rest[i][1] == "1") == (sign == 1)
            i += 1
        else:
            factors = []
            while True:
                kind, value = rest[i]
                if kind == "name" or (kind, value) == ("op", "."):
                    factors.append(value)
                else:
                    raise InvalidInputError(f"RFormula formula={formula!r}: expected a column name or "
                                            f"'.', got {value!r}")
                i += 1
                if i < len(rest) and rest[i] == ("op", ":"):
                    i += 1
                    if i >= len(rest):
                        raise InvalidInputError(f"RFormula formula={formula!r} ends with ':'")
                    continue
                break
            terms.append((sign, factors))
        if i < len(rest) and rest[i] not in (("op", "+"), ("op", "-")):
            raise InvalidInputError(f"RFormula formula={formula!r}: expected + or - before {rest[i][1]!r}")
        sign = 1
    return label, terms, intercept


def resolve_terms(label, terms, columns):
    """The terms as tuples of column names, in Spark's order: "." expanded to every column
    but the label, interactions deduplicated (a:b is b:a, a:a is a), removals applied."""
    dot = [c for c in columns if c != label]
    for _, factors in terms:
        for f in factors:
            if f != "." and f not in columns:
                raise InvalidInputError(f"RFormula names the column {f!r}, which is missing from the input; "
                                        f"available columns: {list(columns)}")

    def expand(factors):
        combos = [()]
        for f in factors:
            combos = [c + (g,) for c in combos for g in (dot if f == "." else [f])]
        out, seen = [], set()
        for c in combos:
            c = tuple(dict.fromkeys(c))          # a:a is a
            if frozenset(c) not in seen:
                seen.add(frozenset(c))
                out.append(c)
        return sorted(out, key=len) if len(factors) > 1 else out

    included = []
    for sign, factors in terms:
        expanded = expand(factors)
        if sign > 0:
            for t in expanded:
                if len(t) == 1 or frozenset(t) not in {frozenset(u) for u in included}:
                    included.append(t)
        elif factors == ["."]:
            included = [t for t in included if not (len(t) == 1 and t[0] in dot)]
        else:
            gone = {frozenset(t) for t in expanded}
            included = [t for t in included if frozenset(t) not in gone]
    return list(dict.fromkeys(included))


# ---------------------------------------------------------------- block functions (tasks)

def _kind(arrow_type):
    import pyarrow as pa
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "numeric"
    if is_vector_type(arrow_type):
        return "vector"
    return None


def _block_counts(table, strings, vectors):
    """Runs in a task: per string column (values, counts) of its non-null values; per vector
    column its width (or -1 for an empty block)."""
    import pyarrow.compute as pc
    counts = []
    for c in strings:
        vc = pc.value_counts(_as_strings(table.column(c)).drop_null())
        counts.append((np.asarray(vc.field("values").to_pylist(), dtype=str),
                       vc.field("counts").to_numpy(zero_copy_only=False).astype(np.int64)))
    widths = [column_to_matrix(table.column(c), c).shape[1] if table.num_rows else -1 for c in vectors]
    return counts, widths, table.num_rows


def _as_strings(col):
    """A string, dictionary or (forced label) numeric column as one Arrow string array."""
    import pyarrow as pa
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col if pa.types.is_string(col.type) else col.cast(pa.string())


def _order(values, counts, how):
    if how == "frequencyDesc":
        idx = np.lexsort((values, -counts))
    elif how == "frequencyAsc":
        idx = np.lexsort((values, counts))
    elif how == "alphabetAsc":
        idx = np.argsort(values, kind="stable")
    else:
        idx = np.argsort(values, kind="stable")[::-1]
    return values[idx]


def _features_table(table, rf):
    """Runs in a task: the block with the features (and, when the label is there, label) columns."""
    import pyarrow as pa
    X, y, keep = rf._build(table)
    if keep is not None and not keep.all():
        table = table.filter(pa.array(keep))
    out = [(rf.features_col, vector_column(X))]
    if y is not None:
        out.append((rf.label_col, pa.array(y)))
    for name, values in out:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


# ---------------------------------------------------------------- the transformer

class RFormula(ShoalEstimatorMixin, TransformerMixin, BaseEstimator):
    """Features and label from an R model formula (Spark's RFormula; see the module docstring
    for the operators and encodings).

    Parameters (Spark's names): formula ("y ~ a + b"), features_col ("features") and label_col
    ("label"): the Dataset columns written. force_index_label: index a numeric label as well.
    handle_invalid: an unseen category or a null/NaN value is an error ("error"), drops the row
    ("skip") or is kept ("keep": an unseen category gets its own index, so a one-hot term keeps
    all the known categories and encodes the unseen one as zeros; NaN stays NaN).
    string_indexer_order_type: the order of a string column's categories, "frequencyDesc"
    (Spark's default), "frequencyAsc", "alphabetAsc", "alphabetDesc".

    ``fit(X)`` takes a Dataset, a pandas or Polars DataFrame or an Arrow Table (the formula
    names the columns; ``features=``/``label=``, if given, must agree with it). ``transform``
    on a Dataset adds ``features_col`` (a vector per row) and ``label_col`` (when the label
    column is present: new data to score need not have it); on a DataFrame it returns the
    feature matrix, and ``transform_xy`` returns ``(features, label)``.

    Fitted: terms_ (tuples of columns), has_intercept_, categories_ (per string column, in
    index order), label_categories_ (an indexed label), feature_names_in_ (the columns read),
    get_feature_names_out() (Spark's names: ``a_x`` for category x of a, ``a:b``).
    """

    def __init__(self, formula=None, *, features_col="features", label_col="label", force_index_label=False,
                 handle_invalid="error", string_indexer_order_type="frequencyDesc"):
        self.formula = formula
        self.features_col = features_col
        self.label_col = label_col
        self.force_index_label = force_index_label
        self.handle_invalid = handle_invalid
        self.string_indexer_order_type = string_indexer_order_type

    def _own_input_columns(self):
        # the formula names the columns: a Pipeline must not route features= here
        return [self.formula]

    def _dataset_columns_io(self):
        return list(self.feature_names_in_), [self.features_col]

    def fit(self, X, y=None, *, features=None, label=None):
        """Parse the formula against X's columns and learn the categories; returns self."""
        if self.handle_invalid not in ("error", "skip", "keep"):
            raise InvalidInputError(f"RFormula handle_invalid={self.handle_invalid!r} must be 'error', "
                                    f"'skip' or 'keep'")
        if self.string_indexer_order_type not in _ORDERS:
            raise InvalidInputError(f"RFormula string_indexer_order_type={self.string_indexer_order_type!r} "
                                    f"must be one of {_ORDERS}")
        f_label, terms, intercept = parse_formula(self.formula)
        if isinstance(y, str):
            y, label = None, y if label is None else label
        if y is not None:
            raise InvalidInputError("RFormula reads its label from the formula's column; do not pass y")
        if label is not None and label not in (f_label, self.label_col):
            raise InvalidInputError(f"RFormula's formula reads the label {f_label!r}, but label={label!r} was "
                                    f"given; name the label in the formula only.")
        if _is_dataset(X):
            X = X.materialize()
            schema = X.schema()
        elif is_table(X):
            X = self._arrow(X)
            schema = X.schema
        else:
            raise InvalidInputError(f"RFormula reads named columns: give a shoal.data Dataset, a pandas or "
                                    f"Polars DataFrame or an Arrow Table, not a {type(X).__name__}")
        columns = list(schema.names)
        resolved = resolve_terms(f_label, terms, columns)
        if not resolved:
            raise InvalidInputError(f"RFormula formula={self.formula!r} leaves no term")
        used = list(dict.fromkeys(c for t in resolved for c in t))
        if features is not None and list(features) != used:
            raise InvalidInputError(f"RFormula's formula reads the columns {used}, but features={list(features)} "
                                    f"was given; name the columns in the formula only.")
        kinds = {}
        for c in used:
            kinds[c] = _kind(schema.field(c).type)
            if kinds[c] is None:
                raise InvalidInputError(f"RFormula cannot encode column {c!r} of type {schema.field(c).type}: "
                                        f"it takes strings, numbers, booleans and vectors")
        label_present = f_label in columns
        index_label = label_present and (_kind(schema.field(f_label).type) == "string" or self.force_index_label)
        strings = [c for c in used if kinds[c] == "string"] + ([f_label] if index_label else [])
        vectors = [c for c in used if kinds[c] == "vector"]
        parts = (map_dataset_blocks(X, _block_counts, strings, vectors) if _is_dataset(X)
                 else [_block_counts(X, strings, vectors)])
        if sum(p[2] for p in parts) == 0:
            raise InvalidInputError("RFormula got an empty input (0 rows)")
        cats = {}
        for j, c in enumerate(strings):
            values = np.concatenate([p[0][j][0] for p in parts]).astype(str)
            counts = np.concatenate([p[0][j][1] for p in parts])
            u, inv = np.unique(values, return_inverse=True)
            total = np.bincount(inv.ravel(), weights=counts, minlength=len(u)).astype(np.int64)
            if len(u) == 0:
                raise InvalidInputError(f"RFormula: column {c!r} holds no value (every row is null)")
            how = "frequencyDesc" if c == f_label and index_label else self.string_indexer_order_type
            cats[c] = _order(u, total, how)
        widths = {}
        for j, c in enumerate(vectors):
            ws = {p[1][j] for p in parts if p[1][j] >= 0}
            if len(ws) != 1:
                raise InvalidInputError(f"RFormula: vector column {c!r} holds vectors of different lengths {sorted(ws)}")
            widths[c] = ws.pop()
        self.label_ = f_label
        self.terms_ = resolved
        self.has_intercept_ = intercept
        self.kinds_ = kinds
        self.categories_ = {c: cats[c] for c in used if c in cats}
        self.label_categories_ = cats.get(f_label) if index_label else None
        self.vector_widths_ = widths
        self.feature_names_in_ = np.asarray(used, dtype=object)
        self.n_features_in_ = len(used)
        self._encodings = self._plan()
        return self

    _persist_skip = ("_encodings",)

    def _after_load(self):
        self._encodings = self._plan()

    def _plan(self):
        """Per term: how each column is encoded ("onehot-drop", "onehot", "value", "vector")."""
        keep_ref = not self.has_intercept_
        plan = []
        for t in self.terms_:
            if len(t) == 1 and self.kinds_[t[0]] == "string":
                plan.append(("onehot" if keep_ref else "onehot-drop",))
                keep_ref = False
            else:
                plan.append(tuple("onehot" if self.kinds_[c] == "string" and len(t) > 1 else
                                  "vector" if self.kinds_[c] == "vector" else "value" for c in t))
        return plan

    # ------------------------------------------------------------ encoding

    def _arrow(self, X):
        import pyarrow as pa
        if type(X).__module__.startswith("pyarrow"):
            return X
        return pa.Table.from_pandas(as_frame(X), preserve_index=False)

    def _indices(self, table, c, keep):
        """Category indices of string column c (unseen/null: len(categories)), the rows kept."""
        cats = self.label_categories_ if c == self.label_ and c not in self.categories_ else self.categories_[c]
        import pyarrow as pa
        import pyarrow.compute as pc
        values = _as_strings(table.column(c))
        # index_in: the category's position, null for an unseen category or a null value
        found = pc.index_in(values, value_set=pa.array(cats.tolist(), type=pa.string()))
        known = found.is_valid().to_numpy(zero_copy_only=False)
        idx = found.fill_null(len(cats)).to_numpy(zero_copy_only=False).astype(np.int64)
        if not known.all():
            if self.handle_invalid == "error":
                bad = values[int(np.flatnonzero(~known)[0])].as_py()
                what = "a null" if bad is None else f"the category {bad!r}, not seen at fit"
                raise InvalidInputError(f"RFormula: column {c!r} holds {what}; set handle_invalid='skip' "
                                        f"or 'keep', or refit on data holding it.")
            if self.handle_invalid == "skip":
                keep &= known
        return idx, keep

    def _build(self, table):
        """(features, label or None, rows kept or None) of one Arrow table."""
        n = table.num_rows
        for c in self.feature_names_in_:
            if c not in table.column_names:
                raise InvalidInputError(f"column {c!r} (read by RFormula) is missing from the input; "
                                        f"available columns: {table.column_names}")
        keep = np.ones(n, dtype=bool)
        keep_extra = self.handle_invalid == "keep"
        blocks = []
        cache = {}
        for t, how in zip(self.terms_, self._encodings):
            parts = []
            for c, h in zip(t, how):
                if h.startswith("onehot"):
                    if c not in cache:
                        cache[c], keep = self._indices(table, c, keep)
                    k = len(self.categories_[c])
                    # "keep": the unseen category has an index of its own (k), dropped last by
                    # the one-hot of a main effect; "error"/"skip": the last category is dropped
                    width = k + (1 if keep_extra else 0) - (1 if h == "onehot-drop" else 0)
                    m = np.zeros((n, max(width, 0)))
                    rows = np.flatnonzero(cache[c] < width)
                    m[rows, cache[c][rows]] = 1.0
                    parts.append(m)
                else:
                    parts.append(self._numeric(table, c))
            blocks.append(row_kron(parts) if len(parts) > 1 else parts[0])
        X = np.hstack(blocks) if blocks else np.empty((n, 0))
        if self.handle_invalid == "skip":
            keep &= ~np.isnan(X).any(axis=1)
        y = self._label(table, keep)
        if keep.all():
            return X, y, None
        return X[keep], (None if y is None else y[keep]), keep

    def _numeric(self, table, c):
        """A numeric, boolean or vector column as a float matrix (null: NaN), checked for NaN."""
        col = table.column(c)
        if col.null_count and self.kinds_.get(c, "numeric") == "numeric":
            import pyarrow.compute as pc
            col = pc.cast(col, "float64").fill_null(float("nan"))
        M = column_to_matrix(col, c)
        if self.handle_invalid == "error" and c != self.label_ and np.isnan(M).any():
            raise InvalidInputError(f"RFormula: column {c!r} holds NaN or null; set handle_invalid='skip' "
                                    f"(drop the row) or 'keep', or impute first.")
        return M

    def _label(self, table, keep):
        if self.label_ not in table.column_names:
            return None
        if self.label_categories_ is not None:
            idx, _ = self._indices(table, self.label_, keep)   # narrows keep in place
            return idx.astype(np.float64)
        values = table.column(self.label_)
        if _kind(values.type) != "numeric":
            raise InvalidInputError(f"RFormula's label column {self.label_!r} is {values.type}; it needs "
                                    f"numbers or strings")
        y = self._numeric(table, self.label_)[:, 0]
        if np.isnan(y).any():
            if self.handle_invalid == "error":
                raise InvalidInputError(f"RFormula's label column {self.label_!r} holds NaN or null; drop "
                                        f"those rows or set handle_invalid='skip'.")
            if self.handle_invalid == "skip":
                keep &= ~np.isnan(y)
        return y

    # ------------------------------------------------------------ public

    def transform(self, X):
        """A Dataset gets ``features_col`` and ``label_col``; a DataFrame or Arrow Table gives the
        feature matrix."""
        check_fitted(self, "terms_")
        if _is_dataset(X):
            return X.map_batches(_features_table, batch_format="pyarrow", fn_args=(self,))
        return self.transform_xy(X)[0]

    def transform_xy(self, X):
        """``(features, label)`` of a DataFrame or Arrow Table; the label is None when its column
        is absent. Rows dropped by handle_invalid='skip' are dropped from both."""
        check_fitted(self, "terms_")
        if not is_table(X) or _is_dataset(X):
            raise InvalidInputError(f"RFormula.transform_xy takes a pandas or Polars DataFrame or an Arrow "
                                    f"Table, got {type(X).__name__}")
        X, y, _ = self._build(self._arrow(X))
        return X, y

    def get_feature_names_out(self, input_features=None):
        """Spark's names of the output features: ``a`` (number), ``a_x`` (category x of a),
        ``v_0`` (element 0 of vector v), ``a_x:b`` (an interaction)."""
        check_fitted(self, "terms_")
        out = []
        for t, how in zip(self.terms_, self._encodings):
            groups = []
            for c, h in zip(t, how):
                if h.startswith("onehot"):
                    cats = list(self.categories_[c])
                    if self.handle_invalid == "keep":
                        cats.append("__unknown")
                    if h == "onehot-drop":
                        cats = cats[:-1]
                    groups.append([f"{c}_{v}" for v in cats])
                elif h == "vector":
                    groups.append([f"{c}_{i}" for i in range(self.vector_widths_[c])])
                else:
                    groups.append([c])
            names = groups[0]
            for g in groups[1:]:
                names = [f"{a}:{b}" for a in names for b in g]
            out.extend(names)
        return np.asarray(out, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
