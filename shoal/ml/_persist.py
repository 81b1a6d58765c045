"""save(estimator, path) / load(path): a folder of JSON and .npy files that loads without unpickling.

Layout::

    path/metadata.json   {"format": 1, "class": "shoal.ml.LogisticRegression", "versions": {...},
                          "params": {...}, "state": {...}}
    path/arrays/<n>.npy  every NumPy array (numbers, booleans or strings; np.load(allow_pickle=False))
    path/estimators/<n>/ nested estimators (pipeline steps, tuned models), same layout

Values are JSON with tagged containers ({"__ndarray__": file}, {"__tuple__": [...]},
{"__estimator__": dir}, {"__dataclass__": name}, {"__float__": "nan"}, ...). Only shoal.ml's
own estimator classes (and scikit-learn's Pipeline), by name from an allowlist, and shoal.ml's
plain dataclasses (fitted trees' arrays) are rebuilt; no code comes from the file.

An estimator may name derived attributes not to save in a class attribute ``_persist_skip``
and rebuild them in ``_after_load()``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from shoal.exceptions import InvalidInputError

FORMAT = 1


class PersistenceError(InvalidInputError):
    """A model could not be saved or loaded (unsupported value, unknown class, bad folder)."""


def _allowed_classes() -> dict:
    import sklearn.pipeline

    import shoal.ml as ml
    out = {"sklearn.pipeline.Pipeline": sklearn.pipeline.Pipeline}
    for name in ml._EXPORTS:
        try:
            obj = getattr(ml, name)
        except (AttributeError, ImportError):
            continue
        if isinstance(obj, type) and issubclass(obj, BaseEstimator):
            out[f"shoal.ml.{name}"] = obj
    return out


def _shoal_ml_dataclass(cls) -> bool:
    """Plain data holders of shoal.ml (e.g. a fitted tree's arrays) may be saved and rebuilt."""
    return dataclasses.is_dataclass(cls) and cls.__module__.startswith("shoal.ml.") and "." not in cls.__qualname__


def _resolve_dataclass(name: str):
    module, _, qualname = name.rpartition(".")
    if not module.startswith("shoal.ml.") or not qualname.isidentifier():
        raise PersistenceError(f"{name!r} is not a shoal.ml data class; refusing to load")
    import importlib
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        raise PersistenceError(f"{name!r} is not a shoal.ml data class; refusing to load") from None
    if not (isinstance(cls, type) and _shoal_ml_dataclass(cls)):
        raise PersistenceError(f"{name!r} is not a shoal.ml data class; refusing to load")
    return cls


def _class_key(est) -> str:
    for key, cls in _allowed_classes().items():
        if type(est) is cls:
            return key
    raise PersistenceError(f"cannot save a {type(est).__module__}.{type(est).__name__}: only shoal.ml "
                           f"estimators (and Pipelines of them) can be saved")


class _Writer:
    def __init__(self, root: Path):
        self.root = root
        self.n_arrays = 0
        self.n_estimators = 0

    def encode(self, v, where: str):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, (float, np.floating)):
            f = float(v)
            return f if math.isfinite(f) else {"__float__": repr(f)}
        if isinstance(v, np.ndarray):
            return self._array(v, where)
        if isinstance(v, tuple):
            return {"__tuple__": [self.encode(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.encode(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise PersistenceError(f"{where}: dictionary keys must be strings to save")
            return {"__dict__": {k: self.encode(x, f"{where}[{k!r}]") for k, x in v.items()}}
        if isinstance(v, BaseEstimator):
            self.n_estimators += 1
            sub = f"estimators/{self.n_estimators}"
            _save_into(v, self.root / sub)
            return {"__estimator__": sub}
        if dataclasses.is_dataclass(v) and not isinstance(v, type) and _shoal_ml_dataclass(type(v)):
            cls = type(v)
            return {"__dataclass__": f"{cls.__module__}.{cls.__qualname__}",
                    "fields": {f.name: self.encode(getattr(v, f.name), f"{where}.{f.name}")
                               for f in dataclasses.fields(v)}}
        if isinstance(v, type) and v in (float, int, bool, np.float64, np.float32, np.int64, np.int32):
            return {"__dtype__": np.dtype(v).str}
        raise PersistenceError(f"{where}: cannot save a value of type {type(v).__name__}")

    def _array(self, a: np.ndarray, where: str):
        if a.dtype.kind == "O":
            if all(isinstance(x, str) for x in a.ravel()):
                a = a.astype(str)
                kind = "str_object"
            else:
                try:
                    b = a.astype(np.float64)
                except (TypeError, ValueError):
                    raise PersistenceError(f"{where}: cannot save an object array holding "
                                           f"{type(a.ravel()[0]).__name__} values") from None
                if not np.array_equal(b, a.astype(object).astype(np.float64)):
                    raise PersistenceError(f"{where}: object array does not round-trip")
                a, kind = b, "float_object"
        else:
            kind = "plain"
        if a.dtype.kind not in "biufcUS?":
            raise PersistenceError(f"{where}: cannot save arrays of dtype {a.dtype}")
        self.n_arrays += 1
        name = f"arrays/{self.n_arrays}.npy"
        np.save(self.root / name, a, allow_pickle=False)
        return {"__ndarray__": name, "kind": kind}


def _save_into(est, root: Path):
    root.mkdir(parents=True, exist_ok=True)
    (root / "arrays").mkdir(exist_ok=True)
    w = _Writer(root)
    key = _class_key(est)
    params = est.get_params(deep=False)
    skip = set(getattr(type(est), "_persist_skip", ()))
    state = {k: v for k, v in vars(est).items()
             if k not in params and k not in skip and not k.startswith("__")}
    import sklearn

    import shoal
    meta = {
        "format": FORMAT,
        "class": key,
        "versions": {"shoal": getattr(shoal, "__version__", "unknown"), "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__},
        "params": {k: w.encode(v, f"{type(est).__name__}.{k}") for k, v in params.items()},
        "state": {k: w.encode(v, f"{type(est).__name__}.{k}") for k, v in state.items()},
    }
    (root / "metadata.json").write_text(json.dumps(meta, indent=1, allow_nan=False))


def save(estimator, path) -> None:
    """Write ``estimator`` (fitted or not) to the folder ``path`` (replaced if it holds a saved model)."""
    path = Path(path)
    if path.exists():
        if not (path / "metadata.json").exists() and any(path.iterdir()):
            raise PersistenceError(f"{path} exists and is not a saved shoal.ml model; choose an empty or new folder")
        shutil.rmtree(path)
    tmp = path.with_name(path.name + ".tmp-save")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _save_into(estimator, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class _Reader:
    def __init__(self, root: Path):
        self.root = root

    def decode(self, v):
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__float__" in v:
            return float(v["__float__"])
        if "__tuple__" in v:
            return tuple(self.decode(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {k: self.decode(x) for k, x in v["__dict__"].items()}
        if "__dtype__" in v:
            return np.dtype(v["__dtype__"]).type
        if "__ndarray__" in v:
            file = self._inside(v["__ndarray__"])
            a = np.load(file, allow_pickle=False)
            if v.get("kind") == "str_object":
                a = a.astype(object)
            elif v.get("kind") == "float_object":
                a = a.astype(object)
            return a
        if "__dataclass__" in v:
            cls = _resolve_dataclass(v["__dataclass__"])
            return cls(**{k: self.decode(x) for k, x in v["fields"].items()})
        if "__estimator__" in v:
            return _load_from(self._inside(v["__estimator__"]))
        raise PersistenceError(f"unknown tagged value {sorted(v)} in {self.root / 'metadata.json'}")

    def _inside(self, rel: str) -> Path:
        p = (self.root / rel).resolve()
        if self.root.resolve() not in p.parents:
            raise PersistenceError(f"{rel!r} points outside the model folder {self.root}")
        return p


def _load_from(root: Path):
    meta_file = root / "metadata.json"
    if not meta_file.exists():
        raise PersistenceError(f"{root} holds no metadata.json: not a saved shoal.ml model")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise PersistenceError(f"{root}: unsupported format {meta.get('format')!r} (this shoal reads {FORMAT})")
    classes = _allowed_classes()
    cls = classes.get(meta.get("class"))
    if cls is None:
        raise PersistenceError(f"{root}: class {meta.get('class')!r} is not a shoal.ml estimator; refusing to load")
    r = _Reader(root)
    est = cls(**{k: r.decode(v) for k, v in meta["params"].items()})
    for k, v in meta["state"].items():
        setattr(est, k, r.decode(v))
    if hasattr(est, "_after_load"):
        est._after_load()          # rebuild derived state listed in _persist_skip
    return est


def load(path):
    """Read a model written by ``save``; only JSON and .npy (allow_pickle=False) are read."""
    return _load_from(Path(path))
