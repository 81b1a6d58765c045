"""An HTTP GET for the dashboard's tests."""
from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str, token: str | None = None, cookie: str | None = None):
    """(status, body bytes, headers) of a GET."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = cookie
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers

SERVE_REQUESTS = 20     # HTTP requests the fixture sends to its echo deployment
