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
import shutil
import time
from dataclasses import dataclass

from shoal.collective._shm import _LINE, ShmGroup, shm_dir
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


def listen_host_for(store, configured: str | None, spans_hosts: bool | None = True) -> str:
    """The address this rank listens on and advertises to its peers.

    In order: ``configured`` (NativeConfig.listen_host), SHOAL_COLLECTIVE_HOST,
    127.0.0.1 when every rank is on this host, else the address the store
    says the other hosts reach this process at (the node IP Ray reports on
    the Ray backend, the interface facing the server for a TCPStore).
    ``spans_hosts=None`` (not known): the store's address if it has one, else
    127.0.0.1.
    """
    if configured:
        return configured
    env = os.environ.get("SHOAL_COLLECTIVE_HOST")
    if env:
        return env
    if spans_hosts is False:
        return "127.0.0.1"
    reachable = getattr(store, "reachable_host", None)
    host = reachable() if reachable is not None else None
    if not host and spans_hosts is None:
        return "127.0.0.1"
    if not host:
        raise CollectiveError(
            f"the group spans several hosts but the store ({type(store).__name__}) cannot tell "
            "the address other hosts reach this rank at; set SHOAL_COLLECTIVE_HOST (or "
            "NativeConfig(listen_host=...)) on every rank to its address")
    return host


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
               segment_bytes: int, listen_host: str | None, ring_bytes: int = 0):
    """Returns (prefix, topology, ShmGroup or None, TcpMesh).

    First every rank publishes its host identity, so each knows whether the
    group stays on its host (listen on loopback) or spans hosts (listen on
    the address other hosts reach); then where it listens. A group that
    spans hosts opens its connections now, so an unreachable rank fails the
    formation (on every rank, naming it) instead of the first collective.
    """
    base = f"shoal/collective/{name}"
    gen = store.add(f"{base}/gen/{rank}", 1)
    prefix = f"{base}/{gen}"
    if rank == 0:
        store.set(f"{prefix}/secret", secrets.token_hex(32))
    secret = bytes.fromhex(_get(store, f"{prefix}/secret", timeout, "rank 0").decode())
    store.set(f"{prefix}/host/{rank}", host_identity())
    idents = [_get(store, f"{prefix}/host/{r}", timeout, f"rank {r}").decode()
              for r in range(world_size)]
    order: dict[str, int] = {}
    for i in idents:
        order.setdefault(i, len(order))
    host_of = [order[i] for i in idents]
    hosts = [[r for r in range(world_size) if host_of[r] == h] for h in range(len(order))]
    local = hosts[host_of[rank]]
    topo = Topology(hosts, host_of, local, local.index(rank))
    mesh = TcpMesh(rank, world_size, secret, listen_host_for(store, listen_host, len(hosts) > 1),
                   timeout)
    try:
        store.set(f"{prefix}/rank/{rank}", f"{mesh.address[0]}|{mesh.address[1]}")
        peers = {}
        for r in range(world_size):
            h, p = _get(store, f"{prefix}/rank/{r}", timeout, f"rank {r}").decode().split("|")
            peers[r] = (h, int(p))
        mesh.set_peers(peers)
        if len(hosts) > 1:
            _connect_all(mesh, store, prefix, rank, world_size, timeout)
        shm = _map_segment(store, prefix, topo, rank, name, gen, timeout, segment_bytes,
                           ring_bytes) if len(local) > 1 else None
    except BaseException:
        mesh.close()
        raise
    return prefix, topo, shm, mesh


def _connect_all(mesh: TcpMesh, store, prefix: str, rank: int, world_size: int,
                 timeout: float) -> None:
    """Open the collective connection to every peer; the first failure fails every rank."""
    failed = f"{prefix}/unreachable"
    try:
        for q in range(rank + 1, world_size):
            mesh.conn(q)
    except CollectiveError as e:
        store.compare_set(failed, None, str(e))
        raise
    deadline = time.monotonic() + timeout
    for q in range(rank):
        while not mesh.wait_connected(q, 0.5):
            if store.check([failed]):
                raise CollectiveError(store.get(failed).decode())
            if time.monotonic() > deadline:
                host, port = mesh.address
                raise CollectiveError(
                    f"rank {q} did not connect to rank {rank} at {host}:{port} within "
                    f"{timeout}s; if rank {q} cannot reach that address, set "
                    f"SHOAL_COLLECTIVE_HOST on rank {rank} to one it can reach")


def _rings_that_fit(ring_bytes: int, local: int, segment_bytes: int) -> int:
    """``ring_bytes``, or 0 (send/recv over TCP) where every pair's ring would not fit in /dev/shm.

    tmpfs takes a page when it is first written, and a write past its size
    kills the process (SIGBUS): a container's 64 MB /dev/shm holds the
    staging halves of 8 ranks but not 56 rings of 1 MB beside them.
    """
    if not ring_bytes:
        return 0
    need = local * (local - 1) * (ring_bytes + 2 * _LINE) + 2 * local * segment_bytes
    try:
        free = shutil.disk_usage(shm_dir()).free
    except OSError:
        return 0
    return ring_bytes if need <= free else 0


def _map_segment(store, prefix, topo: Topology, rank, name, gen, timeout, segment_bytes,
                 ring_bytes=0):
    host = topo.host_of[rank]
    leader = topo.local_ranks[0]
    key = f"{prefix}/shm/{host}"
    if rank == leader:
        safe = "".join(c if c.isalnum() else "_" for c in name)[:40]
        path = os.path.join(shm_dir(), f"shoal-coll-{safe}-{gen}-{secrets.token_hex(6)}")
        ring_bytes = _rings_that_fit(ring_bytes, len(topo.local_ranks), segment_bytes)
        shm = ShmGroup(path, 0, len(topo.local_ranks), segment_bytes, True, timeout,
                       topo.local_ranks, ring_bytes)
        try:
            store.set(key, f"{ring_bytes}|{path}")   # the leader's ring size is the host's
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
    ring_bytes, path = _get(store, key, timeout, f"rank {leader}'s shared memory").decode().split("|", 1)
    ring_bytes = int(ring_bytes)
    deadline = time.monotonic() + timeout
    while True:
        try:
            shm = ShmGroup(path, topo.local_rank, len(topo.local_ranks), segment_bytes, False,
                           timeout, topo.local_ranks, ring_bytes)
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise CollectiveError(f"shared memory {path} of rank {leader} vanished") from None
            time.sleep(0.01)
    store.set(f"{prefix}/mapped/{rank}", b"1")
    return shm
