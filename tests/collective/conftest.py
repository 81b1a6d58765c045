import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def rank_pool():
    from _harness import RankPool
    pool = RankPool(4)
    try:
        yield pool
    finally:
        pool.close()
