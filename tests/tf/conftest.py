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


@pytest.fixture(scope="session")
def tf2_pool():
    """Two rank processes whose tf.keras is Keras 2 (tf_keras, TF_USE_LEGACY_KERAS=1), the
    Keras Horovod's Keras examples are written for."""
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("Keras 2 tests need tf_keras: pip install --no-deps "
                    "tf-keras==<TensorFlow's version> (`make test` does)")
    from _harness import RankPool
    old = os.environ.get("TF_USE_LEGACY_KERAS")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"      # the spawned ranks inherit it
    try:
        pool = RankPool(2)
    finally:
        if old is None:
            del os.environ["TF_USE_LEGACY_KERAS"]
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = old
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module", params=["keras3", "keras2"])
def keras_pool(request):
    """The rank pool whose tf.keras is Keras 3, then the one whose tf.keras is Keras 2
    (tf_keras under TF_USE_LEGACY_KERAS=1): the Keras faces are tested on both."""
    return request.getfixturevalue("tf_pool" if request.param == "keras3" else "tf2_pool")
