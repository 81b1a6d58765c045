"""Fixtures shared by shoal.core's tests: a running cluster on each backend.

``backend`` is module-scoped and parametrized over "local" and "ray", so a
module's tests run first on a local cluster, then on Ray, each started once
(``ray.init`` takes seconds). With SHOAL_TEST_RAY_ADDRESS set, "ray" connects
to that running cluster instead of starting one. Tests that use it must leave the cluster
usable: kill what they start, release what they block.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

import shoal

NUM_CPUS = 2


def _start(name: str):
    if name == "ray" and importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray backend's tests need ray: pip install 'ray' to run them")
    if shoal.is_initialized():
        shoal.shutdown()
    address = os.environ.get("SHOAL_TEST_RAY_ADDRESS")
    if name == "ray" and address:     # a running cluster (tests/multinode runs this module there)
        return shoal.init(address=address, log_to_driver=False)
    return shoal.init(num_cpus=NUM_CPUS, backend=name, **({"log_to_driver": False}
                                                           if name == "ray" else {}))


@pytest.fixture(scope="module",
                params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request):
    """The backend's name, with shoal initialized on it (NUM_CPUS CPUs)."""
    _start(request.param)
    try:
        yield request.param
    finally:
        shoal.shutdown()
