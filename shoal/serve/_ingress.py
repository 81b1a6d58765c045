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


class _InstanceOf:
    """FastAPI dependency giving a class route its ``self`` (pickles by reference, so
    the replica reads its own table)."""

    def __init__(self, key: str):
        self.key = key

    async def __call__(self):
        return _instances[self.key]


def set_instance(cls, instance) -> None:
    """The instance that class routes of ``cls`` run on in this replica."""
    _instances[cls._shoal_ingress_key] = instance


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
        # by-value pickling does not keep __qualname__; the key travels with the class
        cls._shoal_ingress_key = f"{cls.__module__}.{cls.__qualname__}"
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
    key = cls._shoal_ingress_key
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
        current = _InstanceOf(key)
        # keyword-only: FastAPI passes every parameter by name, and a default on
        # ``self`` may then precede parameters without one
        kw = inspect.Parameter.KEYWORD_ONLY
        params = [params[0].replace(default=Depends(current), kind=kw)] + \
                 [p.replace(kind=kw) for p in params[1:]]
        fn.__signature__ = sig.replace(parameters=params)
        kwargs = {a: getattr(route, a) for a in _ROUTE_ATTRS if hasattr(route, a)}
        app.router.routes.remove(route)
        app.router.add_api_route(route.path, fn, **kwargs)


def _reduce_state(state):
    return (type(state), (dict(state._state),))


def _register_reducers() -> None:
    """Let Starlette's ``State`` (held by every app) pickle: by default its
    ``__getattr__`` recurses while it is rebuilt, so an app could not travel to replicas."""
    import copyreg
    try:
        from starlette.datastructures import State
    except ImportError:
        return
    copyreg.pickle(State, _reduce_state)


_register_reducers()
