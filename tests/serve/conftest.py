"""Fixtures for shoal.serve's tests: one local cluster per module, serve shut down
after each test (its proxy, replicas and sockets gone, pass or fail)."""
from __future__ import annotations

import pytest

import shoal

pytest.importorskip("starlette", reason="shoal.serve's tests need pip install 'shoal[serve]'")
pytest.importorskip("httpx", reason="shoal.serve's tests need httpx: pip install 'shoal[serve]'")


@pytest.fixture(scope="module")
def cluster():
    if shoal.is_initialized():
        shoal.shutdown()
    shoal.init(num_cpus=2)
    try:
        yield
    finally:
        shoal.shutdown()


@pytest.fixture
def serve(cluster):
    """shoal.serve, shut down after the test (port 0: a free loopback port)."""
    from shoal import serve as s
    try:
        yield s
    finally:
        s.shutdown()


@pytest.fixture
def http(serve):
    """A function returning the base URL of the running proxy, and an httpx client."""
    import httpx
    with httpx.Client(timeout=30) as client:
        def url(path: str = "/") -> str:
            return f"http://127.0.0.1:{serve.status()['proxy']['port']}{path}"
        client.url = url
        yield client
