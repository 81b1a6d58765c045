"""DeploymentHandle: call a deployment from Python (the driver or another replica)."""
from __future__ import annotations

import asyncio
import concurrent.futures

from shoal.exceptions import ServeError
from shoal.serve import _wire
from shoal.serve._router import next_item, registry


class DeploymentHandle:
    """Calls a deployment's replicas: ``handle.method.remote(x)`` -> DeploymentResponse.

    Handles pickle by name, so a deployment passes them to its replicas
    (composition) and they follow the deployment across redeploys.
    """

    def __init__(self, deployment_name: str, app_name: str, method_name: str = "__call__",
                 stream: bool = False, idempotent: bool | None = None):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name
        self._stream = stream
        self._idempotent = idempotent

    def options(self, *, method_name: str | None = None, stream: bool | None = None,
                idempotent: bool | None = None) -> "DeploymentHandle":
        """A copy calling another method, streaming (``stream=True``) or marked idempotent."""
        return DeploymentHandle(self.deployment_name, self.app_name,
                                method_name or self._method,
                                self._stream if stream is None else stream,
                                self._idempotent if idempotent is None else idempotent)

    def __getattr__(self, name: str) -> "DeploymentHandle":
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args, **kwargs):
        """Call the method; returns a DeploymentResponse (a DeploymentResponseGenerator
        when the handle streams)."""
        coro = self._call(args, kwargs)
        if self._stream:
            return DeploymentResponseGenerator(_submit(coro))
        return DeploymentResponse(_submit(coro))

    async def _call(self, args, kwargs):
        if any(isinstance(a, DeploymentResponse) for a in args):
            args = tuple([await a if isinstance(a, DeploymentResponse) else a for a in args])
        if any(isinstance(v, DeploymentResponse) for v in kwargs.values()):
            kwargs = {k: (await v if isinstance(v, DeploymentResponse) else v)
                      for k, v in kwargs.items()}
        router = registry.router(self.app_name, self.deployment_name)
        idem = self._idempotent if self._idempotent is not None else \
            self._method in router.idempotent
        return await router.request(_wire.CALL, (self._method, args, kwargs, self._stream),
                                    self._stream, idem)

    def __reduce__(self):
        return (DeploymentHandle, (self.deployment_name, self.app_name, self._method,
                                   self._stream, self._idempotent))

    def __repr__(self):
        return f"DeploymentHandle({self.app_name}/{self.deployment_name}.{self._method})"


def _submit(coro):
    """Run ``coro`` on this process's serve loop: an asyncio task when we are on it,
    else a concurrent future."""
    loop = registry.get_loop()
    if registry.in_loop():
        return loop.create_task(coro)
    return asyncio.run_coroutine_threadsafe(coro, loop)


class DeploymentResponse:
    """The pending result of a handle call: ``await`` it, or ``.result(timeout_s=)``."""

    def __init__(self, fut):
        self._fut = fut

    def __await__(self):
        if isinstance(self._fut, concurrent.futures.Future):
            return asyncio.wrap_future(self._fut).__await__()
        return self._fut.__await__()

    def result(self, timeout_s: float | None = None):
        """Wait for the result (not from the replica's event loop: ``await`` there)."""
        if not isinstance(self._fut, concurrent.futures.Future):
            raise ServeError("DeploymentResponse.result() would block the event loop it runs "
                             "on; use `await response` inside async code")
        try:
            return self._fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no response within {timeout_s}s") from None

    def cancel(self) -> None:
        """Stop waiting for the result."""
        self._fut.cancel()


class DeploymentResponseGenerator:
    """The items a streaming call yields: ``async for`` or ``for`` over it."""

    def __init__(self, fut):
        self._fut = fut
        self._queue = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._queue is None:
            self._queue = await (asyncio.wrap_future(self._fut)
                                 if isinstance(self._fut, concurrent.futures.Future) else self._fut)
        if registry.in_loop():
            return await next_item(self._queue)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(next_item(self._queue), registry.get_loop()))

    def __iter__(self):
        return self

    def __next__(self):
        if registry.in_loop():
            raise ServeError("iterate a streaming response with `async for` on the event loop")
        if self._queue is None:
            self._queue = self._fut.result()
        try:
            return asyncio.run_coroutine_threadsafe(next_item(self._queue),
                                                    registry.get_loop()).result()
        except StopAsyncIteration:
            raise StopIteration from None
