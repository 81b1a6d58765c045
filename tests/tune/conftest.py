"""Fixtures of shoal.tune's tests: one local cluster for the session."""
from __future__ import annotations

import pytest

import shoal


@pytest.fixture(scope="session")
def cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=4)
    yield
    shoal.shutdown()
