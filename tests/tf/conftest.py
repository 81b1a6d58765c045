"""tests/tf run only where TensorFlow is installed (``pip install -e '.[tf]'``; CI's
``.ci/run`` does). The rank processes import TensorFlow; this process never does, so
the rest of a pytest session keeps its import path free of it."""
import importlib.util
import os
import sys

import pytest

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("tests/tf need TensorFlow: pip install -e '.[tf]'", allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "collective"))


@pytest.fixture(scope="session")
def tf_pool():
    """Two rank processes shared by every test here (each imports TensorFlow once)."""
    from _harness import RankPool
    pool = RankPool(2)
    try:
        yield pool
    finally:
        pool.close()
