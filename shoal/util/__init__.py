"""Ray-compatible utilities on shoal's core: ``ActorPool``, ``queue.Queue``,
``multiprocessing.Pool`` and node helpers.

They are built from shoal's tasks and actors only, so they behave the same
on the local backend and on Ray; ``shoal.util.X`` stands where a Ray
program has ``ray.util.X``.
"""
from __future__ import annotations

from shoal.util._actor_pool import ActorPool
from shoal.util._node import get_node_ip_address

__all__ = ["ActorPool", "get_node_ip_address"]
