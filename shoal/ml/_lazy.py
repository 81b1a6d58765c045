"""Names of a shoal.ml family package that load from its modules on first use.

Worker processes import a family's map-side kernels only, never its estimators
(and so never scikit-learn): the package's ``__init__`` names what to load,
and this module supplies the package-level ``__getattr__`` and ``__dir__``.
"""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``, loading each name of ``exports`` from its
    module (relative to ``package``, or absolute when it starts with ``shoal.``)."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path = module if module.startswith("shoal.") else f"{package}.{module}"
        value = getattr(importlib.import_module(path), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
