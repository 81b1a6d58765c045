"""shoal.util's tests run on both backends, with the cluster fixture of tests/core."""
from __future__ import annotations

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_shoal_core_conftest", os.path.join(os.path.dirname(__file__), "..", "core", "conftest.py"))
_core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_core)

backend = _core.backend
NUM_CPUS = _core.NUM_CPUS
