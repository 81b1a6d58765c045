"""A shoal cluster for shoal.ml's distributed tests (imported by the test modules that need one)."""
from __future__ import annotations

import pytest

import shoal


@pytest.fixture(scope="module")
def cluster():
    """shoal initialized with 2 CPUs for the module; shut down even when a test fails."""
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2)
    try:
        yield
    finally:
        shoal.shutdown()
