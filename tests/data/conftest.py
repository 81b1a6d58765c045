"""Fixtures for shoal.data's tests: a small local cluster per module."""
from __future__ import annotations

import pytest

import shoal
from shoal.data import DataContext

NUM_CPUS = 2


@pytest.fixture(scope="module")
def cluster():
    """A local shoal cluster with NUM_CPUS CPUs, shut down after the module."""
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=NUM_CPUS)
    try:
        yield
    finally:
        shoal.shutdown()


@pytest.fixture(autouse=True)
def fresh_context():
    """Each test starts from default DataContext settings."""
    DataContext._current = None
    yield
    DataContext._current = None
