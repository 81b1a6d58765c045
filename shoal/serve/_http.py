"""HTTP inside a replica: the request a deployment sees and the response it returns.

The proxy sends the parts of an HTTP request (method, path, query, headers,
body) as one message; here they become a Starlette ``Request`` for
``__call__`` or an ASGI call into a ``@serve.ingress`` FastAPI app, and the
return value becomes (status, headers, body) or a stream of chunks.
"""
from __future__ import annotations

import inspect
import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

JSON_HEADERS = [(b"content-type", b"application/json")]


class ServeRequest(Request):
    """A Starlette Request whose ``json()`` answers bad JSON with a 400, not a 500."""

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                ctype = self.headers.get("content-type", "none")
                raise HTTPException(400, f"the request body is not valid JSON ({e}; "
                                         f"content-type {ctype}); send a JSON document") from None
        return self._json


def scope_of(req: tuple) -> dict:
    method, path, root_path, query, headers, _body, client = req
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": root_path, "query_string": query, "headers": headers,
            "client": client, "server": None}


def _receive_of(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}
    return receive


def make_request(req: tuple) -> ServeRequest:
    return ServeRequest(scope_of(req), _receive_of(req[5]))


def encode_result(result):
    """A return value as (status, headers, body), or a generator of chunks to stream."""
    if isinstance(result, StreamingResponse):
        return result
    if isinstance(result, Response):
        return result.status_code, [(k, v) for k, v in result.raw_headers], bytes(result.body)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return 200, [(b"content-type", b"application/octet-stream")], bytes(result)
    if isinstance(result, str):
        return 200, [(b"content-type", b"text/plain; charset=utf-8")], result.encode()
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return result
    try:
        return 200, JSON_HEADERS, json.dumps(result).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"the deployment returned {type(result).__name__}, which is not "
                        f"JSON-serializable ({e}); return bytes, str, a dict/list or a "
                        f"starlette Response") from None


def chunk_of(item) -> bytes:
    """One streamed item as bytes: bytes and str as they are, anything else as a JSON line."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item).encode() + b"\n"


def error_response(status: int, message: str, error_id: str = "") -> tuple:
    body = {"error": message}
    if error_id:
        body["error_id"] = error_id
    return status, JSON_HEADERS, json.dumps(body).encode()


async def call_asgi(app, req: tuple, send_item):
    """Run an ASGI app on one request; a single-body response comes back as
    (status, headers, body), a multi-part one through ``send_item`` (None returned)."""
    start: dict = {}
    chunks: list = []
    streaming = False

    async def send(message):
        nonlocal streaming
        t = message["type"]
        if t == "http.response.start":
            start["status"] = message["status"]
            start["headers"] = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif t == "http.response.body":
            body = message.get("body", b"")
            if message.get("more_body", False) or streaming:
                if not streaming:
                    streaming = True
                    send_item((start["status"], start["headers"]))
                    for c in chunks:
                        send_item(c)
                    chunks.clear()
                if body:
                    send_item(bytes(body))
            else:
                chunks.append(bytes(body))

    await app(scope_of(req), _receive_of(req[5]), send)
    if streaming:
        return None
    return start.get("status", 500), start.get("headers", []), b"".join(chunks)


def is_http_exception(e: BaseException) -> bool:
    return isinstance(e, HTTPException)
