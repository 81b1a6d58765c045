"""Forming groups: from a rank, a world size and a key-value store, or from the environment.

``init_group_from_env`` understands, in this order:

- ``shoal launch``: SHOAL_RANK, SHOAL_WORLD_SIZE, SHOAL_LOCAL_RANK,
  SHOAL_MASTER_ADDR, SHOAL_MASTER_PORT, SHOAL_SECRET (hex);
- torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
- mpirun (Open MPI): OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE,
  OMPI_COMM_WORLD_LOCAL_RANK (+ MASTER_ADDR / MASTER_PORT);
- Slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (+ MASTER_ADDR / MASTER_PORT).

Rank 0 hosts a TCPStore on MASTER_ADDR:MASTER_PORT (binding that address;
127.0.0.1 by default) and the others connect to it. The store is
authenticated with the secret from SHOAL_SECRET (hex). When SHOAL_SECRET is
not set, the group refuses to form across hosts (MASTER_ADDR not a loopback
address): an unauthenticated rendezvous would let anyone who can reach the
port join the group and feed it data, and a secret derived from public
values (port, job id) would protect nothing. On one host (loopback only) it
falls back to a secret derived from the user id, the master port and the
launcher's job id; only local processes can reach a loopback port, and the
per-group secret that authenticates the data connections is still random.
Set SHOAL_SECRET (``shoal launch`` does; with torchrun/mpirun/Slurm export
``SHOAL_SECRET=$(python -c 'import secrets; print(secrets.token_hex(32))')``
to every rank) to form a group across hosts.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass

from shoal.collective._buffers import is_torch_tensor
from shoal.collective.config import NativeConfig
from shoal.exceptions import CollectiveError, MissingDependencyError

BACKENDS = ("auto", "native", "torch")


def init_group(rank: int, world_size: int, store, backend: str = "auto", name: str = "default",
               timeout: float = 300.0, config: NativeConfig | None = None, device: str | None = None):
    """Form a communicator of ``world_size`` ranks; every rank calls this.

    Args:
        rank: this process's rank, 0..world_size-1.
        world_size: number of ranks.
        store: a ``shoal.core.KVStore`` (``shoal.get_kv_store()``, or a
            ``TCPStore`` hosted by rank 0) that every rank reaches.
        backend: "native" (shared memory + TCP, CPU), "torch"
            (torch.distributed: Gloo on CPU, NCCL on CUDA), or "auto": native,
            which hands CUDA tensors to a torch NCCL group formed on first use.
        name: groups with different names are independent.
        timeout: seconds a collective (and the formation) waits for the other
            ranks before raising CollectiveError.
        config: native backend settings (NativeConfig).
        device: torch backend only: "cpu" (Gloo) or "cuda" (NCCL); default:
            CUDA when available.

    Raises:
        ValueError: bad rank, world_size or backend.
        CollectiveError: the other ranks did not join within ``timeout``.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not name or "/" in name and name.startswith("/"):
        raise ValueError(f"name must be a non-empty string not starting with '/', got {name!r}")
    if store is None or not hasattr(store, "get"):
        raise TypeError("store must be a shoal.core.KVStore (shoal.get_kv_store() or a TCPStore)")
    if backend == "torch":
        MissingDependencyError.require("shoal.collective's torch backend", "train", "torch")
        from shoal.collective._torch_backend import TorchCommunicator
        return TorchCommunicator(rank, world_size, store, name=name, timeout=timeout, device=device)
    from shoal.collective._native import NativeCommunicator
    return NativeCommunicator(rank, world_size, store, name=name, timeout=timeout, config=config)


@dataclass
class LaunchEnv:
    """What a launcher told this process: its place in the job and the rendezvous point."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    secret: bytes | None


_LAUNCHERS = (
    ("shoal", "SHOAL_RANK", "SHOAL_WORLD_SIZE", "SHOAL_LOCAL_RANK"),
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


def read_launch_env(env=None) -> LaunchEnv:
    """Parse the environment of shoal launch / torchrun / mpirun / Slurm (see module doc)."""
    env = os.environ if env is None else env
    for launcher, rk, ws, lr in _LAUNCHERS:
        if rk in env and ws in env:
            try:
                rank, world = int(env[rk]), int(env[ws])
                local = int(env.get(lr, 0))
            except ValueError:
                raise ValueError(f"{rk}/{ws} must be integers, got {env[rk]!r}/{env[ws]!r}") from None
            pre = "SHOAL_" if launcher == "shoal" else ""
            addr = env.get(f"{pre}MASTER_ADDR") or env.get("MASTER_ADDR") or "127.0.0.1"
            port = env.get(f"{pre}MASTER_PORT") or env.get("MASTER_PORT")
            if not port:
                raise ValueError(f"{launcher} environment found ({rk}={rank}) but no MASTER_PORT; "
                                 "export MASTER_ADDR and MASTER_PORT (rank 0 hosts the store there)")
            secret = env.get("SHOAL_SECRET")
            if secret:
                try:
                    secret_b = bytes.fromhex(secret)
                except ValueError:
                    raise ValueError("SHOAL_SECRET must be hex (e.g. secrets.token_hex(32))") from None
            else:
                secret_b = None
            return LaunchEnv(rank, world, local, addr, int(port), launcher, secret_b)
    raise ValueError("no launcher environment found: expected SHOAL_RANK/SHOAL_WORLD_SIZE "
                     "(shoal launch), RANK/WORLD_SIZE (torchrun), OMPI_COMM_WORLD_RANK (mpirun) "
                     "or SLURM_PROCID/SLURM_NTASKS (Slurm)")


def _is_loopback(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _fallback_secret(le: LaunchEnv, env) -> bytes:
    job = env.get("TORCHELASTIC_RUN_ID") or env.get("OMPI_MCA_ess_base_jobid") or \
        env.get("SLURM_JOB_ID") or ""
    return hashlib.sha256(f"shoal-local|{os.getuid()}|{le.master_port}|{job}".encode()).digest()


def init_group_from_env(backend: str = "auto", name: str = "default", timeout: float = 300.0,
                        config: NativeConfig | None = None, env=None):
    """Form the job's group from the launcher's environment (see the module docstring).

    Rank 0 hosts the store; the communicator owns it and closes it on
    ``destroy()``.

    Raises:
        ValueError: no launcher environment, or a bad one.
        CollectiveError: SHOAL_SECRET is missing for a group across hosts.
    """
    env = os.environ if env is None else env
    le = read_launch_env(env)
    secret = le.secret
    if secret is None:
        if not _is_loopback(le.master_addr):
            raise CollectiveError(
                f"SHOAL_SECRET is not set and MASTER_ADDR={le.master_addr} is not a loopback address: "
                "refusing an unauthenticated rendezvous across hosts. Export the same "
                "SHOAL_SECRET=<hex> (e.g. secrets.token_hex(32)) to every rank")
        secret = _fallback_secret(le, env)
    from shoal.core.kv import TCPStore
    store = TCPStore(le.master_addr, le.master_port, secret=secret, is_server=le.rank == 0,
                     timeout=timeout)
    try:
        comm = init_group(le.rank, le.world_size, store, backend=backend, name=name,
                          timeout=timeout, config=config)
    except BaseException:
        store.close()
        raise
    comm.local_rank = le.local_rank
    comm._owned_store = store
    return comm


def backend_for(tensor) -> str:
    """The backend "auto" routes ``tensor`` to: "torch" for CUDA tensors, else "native"."""
    return "torch" if is_torch_tensor(tensor) and tensor.device.type == "cuda" else "native"
