"""shoal.serve on the Ray backend: a deployment behind HTTP and a handle call."""
from __future__ import annotations

import importlib.util
import shutil
import tempfile

import pytest

import shoal

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray backend's tests need ray: pip install 'ray' to run them")
    was_local = shoal.is_initialized()
    if was_local:
        shoal.shutdown()
    tmp = tempfile.mkdtemp(prefix="shoal-serve-ray-", dir="/tmp")
    shoal.init(num_cpus=2, backend="ray", log_to_driver=False, _temp_dir=tmp)
    try:
        yield
    finally:
        shoal.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if was_local:
            shoal.init(num_cpus=4)


def test_deployment_serves_http_and_handle_calls_on_ray(ray_cluster):
    import httpx

    from shoal import serve

    @serve.deployment(num_replicas=2)
    class Echo:
        async def __call__(self, request):
            return {"got": await request.json()}

        def double(self, x):
            return 2 * x

    try:
        h = serve.run(Echo.bind(), port=0)
        assert h.double.remote(21).result(timeout_s=30) == 42
        port = serve.status()["proxy"]["port"]
        with httpx.Client(timeout=30) as c:
            for i in range(5):
                assert c.post(f"http://127.0.0.1:{port}/", json={"i": i}).json() == \
                    {"got": {"i": i}}
    finally:
        serve.shutdown()
