import pytest


@pytest.fixture(scope="module")
def gang4(gang):
    """Four long-lived ranks (the 2-rank ``gang`` fixture's kind of worker)."""
    g = type(gang)(4)
    yield g
    g.close()
