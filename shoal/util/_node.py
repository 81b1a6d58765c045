"""Where this process runs."""
from __future__ import annotations

from shoal.core import api


def get_node_ip_address() -> str:
    """The IP address of the node this process runs on, as ``ray.util.get_node_ip_address``.

    On the local backend every process shares one node, reached at
    127.0.0.1 (the address ``shoal.nodes()`` reports); on Ray it is the
    address Ray gives the node.
    """
    if api.get_runtime_context().backend == "ray":
        import ray
        return ray.util.get_node_ip_address()
    return "127.0.0.1"
