"""shoal.serve: online serving with replicas, batching, autoscaling and composition.

    from shoal import serve

    @serve.deployment(num_replicas=2)
    class Echo:
        async def __call__(self, request):
            return await request.json()

    handle = serve.run(Echo.bind(), port=8000)     # HTTP on 127.0.0.1:8000 too
    handle.remote(...).result()

Replicas are shoal actors. The replicas of an application's ingress
deployment answer HTTP themselves (uvicorn on one shared port, lent by the
proxy actor, which answers while none does); handle calls go straight to a
replica over an authenticated local socket. Needs ``pip install 'shoal[serve]'``.
"""
from shoal.exceptions import MissingDependencyError

MissingDependencyError.require("shoal.serve", "serve", "starlette", "uvicorn")

from shoal.exceptions import (BackPressureError, DeploymentUnavailableError,  # noqa: E402
                              RequestError, ServeError)
from shoal.serve._api import (delete, get_app_handle, get_deployment_handle,  # noqa: E402
                              idempotent, run, shutdown, start, status)
from shoal.serve._batching import batch  # noqa: E402
from shoal.serve._config import AutoscalingConfig, DeploymentConfig  # noqa: E402
from shoal.serve._deployment import Application, Deployment, deployment  # noqa: E402
from shoal.serve._handle import (DeploymentHandle, DeploymentResponse,  # noqa: E402
                                 DeploymentResponseGenerator)
from shoal.serve._ingress import ingress  # noqa: E402

__all__ = [
    "Application", "AutoscalingConfig", "BackPressureError", "Deployment", "DeploymentConfig",
    "DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator",
    "DeploymentUnavailableError", "RequestError", "ServeError", "batch", "delete", "deployment",
    "get_app_handle", "get_deployment_handle", "idempotent", "ingress", "run", "shutdown",
    "start", "status",
]
