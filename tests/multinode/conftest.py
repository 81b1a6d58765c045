"""The ``cluster`` fixture: a real two-node Ray cluster in two network namespaces (see _netns_ray.py)."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _netns_ray import ROOT, RayCluster, namespaces_unavailable  # noqa: E402,F401


@pytest.fixture(scope="package")
def cluster():
    why = namespaces_unavailable()
    if why:
        pytest.skip(why)
    c = RayCluster()
    try:
        try:
            c.make_network()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"could not create network namespaces: {e.stderr.strip()}")
        c.start_head()
        c.start_worker()
        yield c
    finally:
        c.close()
