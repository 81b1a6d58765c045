"""shoal: one framework for distributed machine learning.

Tasks, actors and objects (``shoal.remote``, ``shoal.get``...) here;
collectives in ``shoal.collective``; training in ``shoal.train``; datasets
in ``shoal.data``; classic ML in ``shoal.ml``.
"""
from shoal import exceptions, state
from shoal.core import (ActorClass, ActorHandle, DynamicObjectRefGenerator, KVStore, ObjectRef,
                        ObjectRefGenerator, PlacementGroup,
                        PlacementGroupSchedulingStrategy, RemoteFunction, RuntimeContext,
                        TCPStore, available_resources, cancel, cluster_resources, get, get_actor,
                        get_gpu_ids, get_kv_store, get_runtime_context, init, is_initialized,
                        kill, method, nodes, placement_group, put, remote,
                        remove_placement_group, shutdown, wait)
from shoal.core.state import timeline

__version__ = "0.1.0"

__all__ = [
    "ActorClass", "ActorHandle", "DynamicObjectRefGenerator", "KVStore", "ObjectRefGenerator", "ObjectRef", "PlacementGroup",
    "PlacementGroupSchedulingStrategy", "RemoteFunction", "RuntimeContext", "TCPStore",
    "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_kv_store", "get_runtime_context", "init", "is_initialized", "kill",
    "method", "nodes", "placement_group", "put", "remote", "remove_placement_group", "shutdown",
    "state", "timeline", "wait",
]
