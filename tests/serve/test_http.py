"""The HTTP front: bodies, route prefixes, errors, FastAPI ingress, streaming."""
from __future__ import annotations

import subprocess
import sys

import pytest

try:   # module level: this file's string annotations must resolve in FastAPI
    from pydantic import BaseModel

    class Item(BaseModel):
        name: str
        qty: int
except ImportError:
    pass


def test_json_and_binary_bodies_round_trip(serve, http):
    @serve.deployment
    class Echo:
        async def __call__(self, request):
            if request.headers.get("content-type") == "application/json":
                return {"got": await request.json()}
            return (await request.body())[::-1]

    serve.run(Echo.bind(), port=0)
    r = http.post(http.url("/"), json={"a": [1, 2]})
    assert r.status_code == 200 and r.json() == {"got": {"a": [1, 2]}}
    r = http.post(http.url("/"), content=b"\x00\x01\x02", headers={"content-type": "x/bin"})
    assert r.status_code == 200 and r.content == b"\x02\x01\x00"
    assert r.headers["content-type"] == "application/octet-stream"


def test_each_application_has_its_route_prefix(serve, http):
    @serve.deployment
    def hello(request):
        return f"hello {request.url.path}"

    @serve.deployment
    def bye(request):
        return "bye"

    serve.run(hello.bind(), name="a", route_prefix="/a", port=0)
    serve.run(bye.bind(), name="b", route_prefix="/b/c")
    assert http.get(http.url("/a/x")).text == "hello /a/x"
    assert http.get(http.url("/b/c")).text == "bye"
    r = http.get(http.url("/nowhere"))
    assert r.status_code == 404 and "/a" in r.json()["error"]


def test_bad_input_gets_4xx_with_a_message(serve, http):
    @serve.deployment
    class Echo:
        async def __call__(self, request):
            return await request.json()

    serve.run(Echo.bind(), port=0, max_body_bytes=1000)
    r = http.post(http.url("/"), content=b"{not json", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = http.post(http.url("/"), content=b"x" * 5000)
    assert r.status_code == 413 and "1000" in r.json()["error"]

    def chunks():          # no content-length: the proxy counts as the body arrives
        for _ in range(10):
            yield b"y" * 500
    r = http.post(http.url("/"), content=chunks())
    assert r.status_code == 413


def test_a_whole_response_leaves_in_one_write_and_close_flushes_it():
    from shoal.serve import _front

    class Transport:
        def __init__(self):
            self.writes, self.closed = [], False

        def write(self, data):
            self.writes.append(bytes(data))

        def close(self):
            self.closed = True

        def get_extra_info(self, name):
            return ("127.0.0.1", 1) if name == "peername" else None

    t = Transport()
    c = _front._CorkedTransport(t)
    c.write(b"streamed")                       # not corked: straight through
    c.cork()
    c.write(b"HTTP/1.1 200 OK\r\n\r\n")
    c.write(bytearray(b"body"))
    assert t.writes == [b"streamed"]
    c.uncork()
    assert t.writes == [b"streamed", b"HTTP/1.1 200 OK\r\n\r\nbody"]
    c.cork()
    c.write(b"last")
    c.close()                                  # uvicorn closes before HttpFront uncorks
    c.uncork()
    assert t.writes[-1] == b"last" and len(t.writes) == 3 and t.closed
    assert c.get_extra_info("peername") == ("127.0.0.1", 1)


def test_keep_alive_pipelined_and_connection_close_responses_arrive_whole(serve, http):
    import socket

    @serve.deployment
    class Echo:
        async def __call__(self, request):
            return {"got": await request.json()}

    serve.run(Echo.bind(), port=0)
    port = serve.status()["proxy"]["port"]

    def post(body: bytes, close: bool) -> bytes:
        return (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(post(b"[1]", False) + post(b"[2]", False) + post(b"[3]", True))
        data = b""
        while chunk := s.recv(65536):        # the server closes after the third
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert [data.index(b'{"got": [%d]}' % i) for i in (1, 2, 3)] == sorted(
        data.index(b'{"got": [%d]}' % i) for i in (1, 2, 3))
    assert data.endswith(b'{"got": [3]}')


def test_default_body_limit_is_10_mb(serve, http):
    @serve.deployment
    class Size:
        async def __call__(self, request):
            return len(await request.body())

    serve.run(Size.bind(), port=0)
    assert http.post(http.url("/"), content=b"a" * (9 << 20)).json() == 9 << 20
    assert http.post(http.url("/"), content=b"a" * (11 << 20)).status_code == 413


def test_user_exception_is_a_500_with_an_error_id_in_the_replica_log(serve, http, capfd):
    @serve.deployment
    class Flaky:
        def __init__(self):
            self.n = 0

        async def __call__(self, request):
            self.n += 1
            if (await request.json())["fail"]:
                raise ValueError("boom")
            return self.n

    serve.run(Flaky.bind(), port=0)
    r = http.post(http.url("/"), json={"fail": True})
    assert r.status_code == 500
    body = r.json()
    assert "ValueError" in body["error"] and len(body["error_id"]) == 16
    # the replica stays up, with its state
    assert http.post(http.url("/"), json={"fail": False}).json() == 2
    import time
    deadline = time.time() + 10
    seen = ""
    while time.time() < deadline and body["error_id"] not in seen:
        seen += capfd.readouterr().err
        time.sleep(0.2)
    assert body["error_id"] in seen and "boom" in seen


def test_fastapi_ingress_with_class_routes_and_openapi(serve, http):
    FastAPI = pytest.importorskip("fastapi").FastAPI
    app = FastAPI()

    @app.get("/plain")
    def plain():
        return {"plain": True}

    @serve.deployment
    @serve.ingress(app)
    class Api:
        def __init__(self, greeting):
            self.greeting = greeting

        @app.get("/hello/{name}")
        def hello(self, name: str, punct: str = "!") -> str:
            return f"{self.greeting} {name}{punct}"

        @app.post("/items")
        async def items(self, item: Item) -> dict:
            return {"total": item.qty * 2, "who": self.greeting}

    serve.run(Api.bind("hi"), route_prefix="/api", port=0)
    assert http.get(http.url("/api/hello/bob"), params={"punct": "?"}).json() == "hi bob?"
    assert http.post(http.url("/api/items"), json={"name": "x", "qty": 3}).json() == \
        {"total": 6, "who": "hi"}
    assert http.post(http.url("/api/items"), json={"name": "x"}).status_code == 422
    assert http.get(http.url("/api/plain")).json() == {"plain": True}
    spec = http.get(http.url("/api/openapi.json")).json()
    assert "/hello/{name}" in spec["paths"]
    params = [p["name"] for p in spec["paths"]["/hello/{name}"]["get"]["parameters"]]
    assert "self" not in params and "name" in params
    assert http.get(http.url("/api/docs")).status_code == 200


def test_generator_streams_chunks_over_http_and_handles(serve, http):
    @serve.deployment
    class Counter:
        def __call__(self, request):
            n = int(request.query_params["n"])
            for i in range(n):
                yield f"{i}\n"

        async def numbers(self, n):
            for i in range(n):
                yield {"i": i}

    h = serve.run(Counter.bind(), port=0)
    with http.stream("GET", http.url("/"), params={"n": 5}) as r:
        lines = [ln for ln in r.iter_lines()]
    assert lines == ["0", "1", "2", "3", "4"]
    assert list(h.options(stream=True).numbers.remote(3)) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_proxy_binds_loopback_by_default(serve):
    @serve.deployment
    def f(request):
        return "x"

    serve.run(f.bind(), port=0)
    st = serve.status()
    assert st["proxy"]["host"] == "127.0.0.1"
    port = st["proxy"]["port"]
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout \
        if sys.platform.startswith("linux") else ""
    if out:
        lines = [ln for ln in out.splitlines() if f":{port} " in ln]
        assert lines and all("127.0.0.1" in ln for ln in lines)


def test_metrics_endpoint_counts_requests(serve, http):
    pytest.importorskip("prometheus_client")

    @serve.deployment
    def f(request):
        return "x"

    serve.run(f.bind(), port=0)
    for _ in range(3):
        http.get(http.url("/"))
    text = http.get(http.url("/-/metrics")).text
    assert 'shoal_serve_http_requests_total{application="default",status="200"} 3.0' in text


def test_replicas_answer_http_themselves_within_max_ongoing(serve, http):
    import asyncio
    import concurrent.futures
    import os
    import signal
    import time

    import httpx

    @serve.deployment(num_replicas=2, max_ongoing_requests=2)
    class Who:
        def __init__(self):
            self.now = self.peak = 0

        async def __call__(self, request):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.05)
            self.now -= 1
            return os.getpid()

        def peak_seen(self):
            return self.peak

    @serve.deployment
    class Retried:
        @serve.idempotent
        def __call__(self, request):
            return "via the proxy"

    h = serve.run(Who.bind(), port=0)
    serve.run(Retried.bind(), name="retried", route_prefix="/retried")
    apps = serve.status()["applications"]
    assert all(r["http"] for r in apps["default"]["deployments"]["Who"]["replicas"])
    # an idempotent __call__ is answered through the proxy, which can retry it
    assert not any(r["http"] for r in apps["retried"]["deployments"]["Retried"]["replicas"])
    with concurrent.futures.ThreadPoolExecutor(10) as pool:    # a connection each
        pids = list(pool.map(lambda _: httpx.post(http.url("/"), timeout=30).json(), range(40)))
    assert len(set(pids)) == 2
    assert max(h.peak_seen.remote().result() for _ in range(10)) <= 2
    # a replica routes requests for other applications on
    assert http.get(http.url("/retried")).text == "via the proxy"
    # every replica gone at once: the port still answers once replacements are up
    for pid in set(pids):
        os.kill(pid, signal.SIGKILL)
    deadline, got = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        try:
            got = httpx.post(http.url("/"), timeout=10)
            if got.status_code == 200 and got.json() not in pids:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    assert got is not None and got.status_code == 200 and got.json() not in pids
    # no replica answers any more: the proxy accepts again
    serve.delete("default")
    serve.delete("retried")
    r = httpx.get(http.url("/"), timeout=30)
    assert r.status_code == 404 and "no application" in r.json()["error"]
