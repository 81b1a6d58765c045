"""Forming a native group through a key-value store.

Every rank publishes where it listens and which host it is on; ranks that
share a host (same boot, same mount and network namespace) share one
shared-memory segment, created by the lowest of them and unlinked as soon as
all have mapped it. The group's secret (for the TCP connections) is chosen by
rank 0 and travels through the store, which is itself authenticated.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

from shoal.collective._shm import ShmGroup, shm_dir
from shoal.collective._tcp import TcpMesh
from shoal.exceptions import CollectiveError, GetTimeoutError


def host_identity() -> str:
    """Ranks with equal identities share memory: one kernel boot, one /dev/shm, one network namespace."""
    override = os.environ.get("SHOAL_COLLECTIVE_HOST_ID")
    if override:
        return override
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        import socket
        parts.append(socket.gethostname())
    try:  # the same shared-memory filesystem (mount namespaces may differ and still share it)
        st = os.stat(shm_dir())
        parts.append(f"{st.st_dev}.{st.st_ino}")
    except OSError:
        pass
    try:  # a network namespace is a host of its own (containers, the multi-host tests)
        parts.append(str(os.stat("/proc/self/ns/net").st_ino))
    except OSError:
        pass
    return ":".join(parts)


def listen_host_for(store, configured: str | None) -> str:
    """The address peers can reach this rank at: configured, or the one facing the store."""
    if configured:
        return configured
    env = os.environ.get("SHOAL_COLLECTIVE_HOST")
    if env:
        return env
    sock = getattr(store, "_sock", None)
    try:
        if sock is not None:
            return sock.getsockname()[0]
    except OSError:
        pass
    return "127.0.0.1"


@dataclass
class Topology:
    hosts: list[list[int]]      # global ranks of each host, host order by lowest rank
    host_of: list[int]          # host index of each rank
    local_ranks: list[int]      # ranks on this rank's host
    local_rank: int

    @property
    def leaders(self) -> list[int]:
        return [h[0] for h in self.hosts]

    @property
    def single_host(self) -> bool:
        return len(self.hosts) == 1


def _get(store, key: str, timeout: float, what: str) -> bytes:
    try:
        return store.get(key, timeout=timeout)
    except GetTimeoutError:
        raise CollectiveError(f"group formation timed out after {timeout}s waiting for {what}; "
                              "did every rank call init_group with the same name and world_size?"
                              ) from None


def rendezvous(rank: int, world_size: int, store, name: str, timeout: float,
               segment_bytes: int, listen_host: str | None):
    """Returns (prefix, topology, ShmGroup or None, TcpMesh)."""
    base = f"shoal/collective/{name}"
    gen = store.add(f"{base}/gen/{rank}", 1)
    prefix = f"{base}/{gen}"
    if rank == 0:
        store.set(f"{prefix}/secret", secrets.token_hex(32))
    secret = bytes.fromhex(_get(store, f"{prefix}/secret", timeout, "rank 0").decode())
    mesh = TcpMesh(rank, world_size, secret, listen_host_for(store, listen_host), timeout)
    try:
        ident = host_identity()
        store.set(f"{prefix}/rank/{rank}", f"{mesh.address[0]}|{mesh.address[1]}|{ident}")
        peers, idents = {}, []
        for r in range(world_size):
            h, p, i = _get(store, f"{prefix}/rank/{r}", timeout, f"rank {r}").decode().split("|", 2)
            peers[r] = (h, int(p))
            idents.append(i)
        mesh.set_peers(peers)
        order: dict[str, int] = {}
        for i in idents:
            order.setdefault(i, len(order))
        host_of = [order[i] for i in idents]
        hosts = [[r for r in range(world_size) if host_of[r] == h] for h in range(len(order))]
        local = hosts[host_of[rank]]
        topo = Topology(hosts, host_of, local, local.index(rank))
        shm = _map_segment(store, prefix, topo, rank, name, gen, timeout, segment_bytes) \
            if len(local) > 1 else None
    except BaseException:
        mesh.close()
        raise
    return prefix, topo, shm, mesh


def _map_segment(store, prefix, topo: Topology, rank, name, gen, timeout, segment_bytes):
    host = topo.host_of[rank]
    leader = topo.local_ranks[0]
    key = f"{prefix}/shm/{host}"
    if rank == leader:
        safe = "".join(c if c.isalnum() else "_" for c in name)[:40]
        path = os.path.join(shm_dir(), f"shoal-coll-{safe}-{gen}-{secrets.token_hex(6)}")
        shm = ShmGroup(path, 0, len(topo.local_ranks), segment_bytes, True, timeout,
                       topo.local_ranks)
        try:
            store.set(key, path)
            # Unlink once every local rank mapped it: the kernel frees it with the last rank.
            keys = [f"{prefix}/mapped/{r}" for r in topo.local_ranks if r != rank]
            try:
                store.wait(keys, timeout=timeout)
            except GetTimeoutError:
                shm.close()
                raise CollectiveError(f"local ranks {topo.local_ranks} did not all map the shared "
                                      f"memory within {timeout}s") from None
        finally:
            shm.unlink()
        return shm
    path = _get(store, key, timeout, f"rank {leader}'s shared memory").decode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            shm = ShmGroup(path, topo.local_rank, len(topo.local_ranks), segment_bytes, False,
                           timeout, topo.local_ranks)
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise CollectiveError(f"shared memory {path} of rank {leader} vanished") from None
            time.sleep(0.01)
    store.set(f"{prefix}/mapped/{rank}", b"1")
    return shm
