"""shoal's key-value store on Ray: a named async actor per namespace.

Same semantics as ``shoal.core.kv.TCPStore``: values are bytes, ``get`` and
``wait`` block until the keys are set or the timeout passes (then raise
GetTimeoutError), ``add`` counts, ``compare_set`` swaps atomically. The
actor lives on the head node, so losing a worker node loses no rendezvous
state (the Trainer reads its reports there while it restarts a gang).
"""
from __future__ import annotations

import asyncio

import ray
import ray.exceptions as rex

from shoal.core._ray_errors import to_shoal_error
from shoal.core.kv import KVStore, _to_bytes
from shoal.exceptions import GetTimeoutError

KV_ACTOR = "shoal_kv"


class _KVServer:
    """The store's state, in a named async actor: one dict and a condition."""

    def __init__(self):
        self.data: dict = {}
        self.changed = asyncio.Condition()

    async def _wait_for(self, pred, timeout):
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(pred), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    async def _changed(self):
        async with self.changed:
            self.changed.notify_all()

    async def set(self, key, value):
        self.data[key] = value
        await self._changed()

    async def get(self, key, timeout):
        if not await self._wait_for(lambda: key in self.data, timeout):
            return None
        return self.data[key]

    async def add(self, key, amount):
        value = int(self.data.get(key, b"0")) + int(amount)
        self.data[key] = str(value).encode()
        await self._changed()
        return value

    async def wait(self, keys, timeout):
        return await self._wait_for(lambda: all(k in self.data for k in keys), timeout)

    async def delete(self, key):
        return self.data.pop(key, None) is not None

    async def check(self, keys):
        return all(k in self.data for k in keys)

    async def keys(self, prefix):
        return [k for k in self.data if k.startswith(prefix)]

    async def compare_set(self, key, expected, desired):
        current = self.data.get(key)
        if (current is None and expected is None) or (expected is not None and current == expected):
            self.data[key] = desired
            await self._changed()
            return desired
        return current if current is not None else b""


def _head_node_affinity():
    """Pin to the head node: the store must outlive any worker node (it holds no CPU)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    try:
        for node in ray.nodes():
            if node.get("Alive") and "node:__internal_head__" in (node.get("Resources") or {}):
                return NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    except Exception:  # noqa: BLE001 - the head is not known here: let Ray place it
        pass
    return None


def _kv_actor(namespace: str):
    try:
        return ray.get_actor(KV_ACTOR, namespace=namespace)
    except ValueError:
        return ray.remote(_KVServer).options(
            name=KV_ACTOR, namespace=namespace, get_if_exists=True, num_cpus=0,
            lifetime="detached", max_concurrency=10_000, max_restarts=0,
            scheduling_strategy=_head_node_affinity()).remote()


class RayKVStore(KVStore):
    """shoal's KVStore on Ray: a named actor per namespace; picklable into tasks."""

    def __init__(self, namespace: str):
        self._namespace = namespace
        self._actor = _kv_actor(namespace)

    def _call(self, method: str, *args):
        try:
            return ray.get(getattr(self._actor, method).remote(*args))
        except rex.RayActorError:
            # The store was ended (a driver of this namespace shut down): use the
            # namespace's current store, made anew if there is none.
            self._actor = _kv_actor(self._namespace)
            try:
                return ray.get(getattr(self._actor, method).remote(*args))
            except rex.RayError as e:
                raise to_shoal_error(e) from None
        except rex.RayError as e:
            raise to_shoal_error(e) from None

    def set(self, key: str, value) -> None:
        self._call("set", key, _to_bytes(value))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """Value of ``key``, waiting up to ``timeout`` seconds for it to be set."""
        value = self._call("get", key, timeout)
        if value is None:
            raise GetTimeoutError(f"key {key!r} was not set within {timeout}s")
        return value

    def add(self, key: str, amount: int = 1) -> int:
        return self._call("add", key, int(amount))

    def wait(self, keys: list[str], timeout: float | None = None) -> None:
        if not self._call("wait", list(keys), timeout):
            raise GetTimeoutError(f"keys {keys!r} were not all set within {timeout}s")

    def delete(self, key: str) -> bool:
        return self._call("delete", key)

    def check(self, keys: list[str]) -> bool:
        return self._call("check", list(keys))

    def keys(self, prefix: str = "") -> list[str]:
        return self._call("keys", prefix)

    def compare_set(self, key: str, expected: bytes | None, desired) -> bytes:
        """Set ``key`` to ``desired`` if it equals ``expected`` (None: unset); returns the value now."""
        return self._call("compare_set", key, None if expected is None else _to_bytes(expected),
                          _to_bytes(desired))

    def reachable_host(self) -> str | None:
        """The IP address of this process's Ray node, as Ray reports it (other nodes reach it there)."""
        try:
            return ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - not connected to Ray here: the caller falls back
            return None

    def close(self) -> None:
        """Nothing to close: the store lives as long as the Ray job."""
