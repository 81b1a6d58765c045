"""Fixtures of shoal.rl's tests: one local cluster for the whole package."""
from __future__ import annotations

import pytest

import shoal

pytest.importorskip("gymnasium", reason="shoal.rl's tests need gymnasium: pip install 'shoal[rl]'")


@pytest.fixture(scope="session")
def cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=4)
    yield
    shoal.shutdown()
