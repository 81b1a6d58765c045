"""shoal.core: tasks, actors and objects on a local cluster or on Ray."""
from shoal.core.api import (
                            ActorClass,
                            ActorHandle,
                            PlacementGroup,
                            PlacementGroupSchedulingStrategy,
                            RemoteFunction,
                            RuntimeContext,
                            available_resources,
                            cancel,
                            cluster_resources,
                            get,
                            get_actor,
                            get_gpu_ids,
                            get_kv_store,
                            get_runtime_context,
                            init,
                            is_initialized,
                            kill,
                            method,
                            nodes,
                            placement_group,
                            put,
                            remote,
                            remove_placement_group,
                            shutdown,
                            wait,
)
from shoal.core.generator import DynamicObjectRefGenerator, ObjectRefGenerator
from shoal.core.kv import KVStore, TCPStore
from shoal.core.object_ref import ObjectRef

__all__ = [
    "DynamicObjectRefGenerator", "ObjectRefGenerator",
    "ActorClass", "ActorHandle", "KVStore", "ObjectRef", "PlacementGroup",
    "PlacementGroupSchedulingStrategy", "RemoteFunction", "RuntimeContext", "TCPStore",
    "available_resources", "cancel", "cluster_resources", "get", "get_actor", "get_gpu_ids",
    "get_kv_store", "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes",
    "placement_group", "put", "remote", "remove_placement_group", "shutdown", "wait",
]
