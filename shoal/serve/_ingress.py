"""``@serve.ingress(app)``: a FastAPI (or any ASGI) app as a deployment's HTTP face.

FastAPI routes written on the class's methods take ``self``; here ``self``
becomes a dependency that FastAPI fills with the replica's instance, so
FastAPI never sees it as a query parameter and the OpenAPI docs stay clean.
"""
from __future__ import annotations

import inspect

_instances: dict = {}

# APIRoute attributes carried over when a class route is re-added.
_ROUTE_ATTRS = ("response_model", "status_code", "tags", "dependencies", "summary",
                "description", "response_description", "responses", "deprecated", "methods",
                "operation_id", "response_class", "name", "include_in_schema", "openapi_extra")


def set_instance(cls, instance) -> None:
    """The instance that class routes of ``cls`` run on in this replica."""
    _instances[cls.__qualname__] = instance


def ingress(app):
    """Serve ``app`` (a FastAPI or other ASGI app) as the decorated deployment's HTTP face.

    Routes may be methods of the class (``@app.get("/")`` inside it, taking
    ``self``) or plain functions. Use under ``@serve.deployment``::

        app = FastAPI()

        @serve.deployment
        @serve.ingress(app)
        class Api:
            @app.get("/hello")
            def hello(self, name: str) -> str: ...
    """
    def deco(cls):
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress applies to a class (the deployment)")
        _rebind_class_routes(app, cls)
        cls._shoal_asgi_app = app
        return cls
    return deco


def _rebind_class_routes(app, cls) -> None:
    try:
        from fastapi import Depends
        from fastapi.routing import APIRoute
    except ImportError:   # a plain ASGI app: nothing to rewrite
        return
    prefix = cls.__qualname__ + "."
    key = cls.__qualname__
    for route in list(app.router.routes):
        if not isinstance(route, APIRoute):
            continue
        fn = route.endpoint
        if not getattr(fn, "__qualname__", "").startswith(prefix):
            continue
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params:
            continue

        def current(_key=key):
            return _instances[_key]
        # keyword-only: FastAPI passes every parameter by name, and a default on
        # ``self`` may then precede parameters without one
        kw = inspect.Parameter.KEYWORD_ONLY
        params = [params[0].replace(default=Depends(current), kind=kw)] + \
                 [p.replace(kind=kw) for p in params[1:]]
        fn.__signature__ = sig.replace(parameters=params)
        kwargs = {a: getattr(route, a) for a in _ROUTE_ATTRS if hasattr(route, a)}
        app.router.routes.remove(route)
        app.router.add_api_route(route.path, fn, **kwargs)
