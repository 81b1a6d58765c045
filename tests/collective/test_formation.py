"""Forming groups: argument checks, launcher environments, secrets."""
import os
import subprocess
import sys

import numpy as np
import pytest

from shoal import collective
from shoal.collective import read_launch_env
from shoal.core.kv import TCPStore
from shoal.exceptions import CollectiveError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("env,launcher,rank,world,local", [
    ({"SHOAL_RANK": "1", "SHOAL_WORLD_SIZE": "4", "SHOAL_LOCAL_RANK": "1", "SHOAL_MASTER_ADDR": "10.0.0.1",
      "SHOAL_MASTER_PORT": "2000"}, "shoal", 1, 4, 1),
    ({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "torchrun", 2, 3, 0),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
      "MASTER_PORT": "5"}, "mpirun", 0, 2, 0),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "MASTER_PORT": "5"}, "slurm", 3, 8, 3),
])
def test_launcher_environments_are_read(env, launcher, rank, world, local):
    le = read_launch_env(env)
    assert (le.launcher, le.rank, le.world_size, le.local_rank) == (launcher, rank, world, local)


def test_missing_launcher_environment_is_rejected():
    with pytest.raises(ValueError, match="no launcher environment"):
        read_launch_env({})


def test_missing_master_port_is_rejected():
    with pytest.raises(ValueError, match="MASTER_PORT"):
        read_launch_env({"RANK": "0", "WORLD_SIZE": "1"})


def test_no_secret_across_hosts_is_refused():
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "10.77.3.1", "MASTER_PORT": "29999"}
    with pytest.raises(CollectiveError, match="SHOAL_SECRET"):
        collective.init_group_from_env(env=env)


def test_bad_secret_hex_is_rejected():
    with pytest.raises(ValueError, match="hex"):
        read_launch_env({"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "1", "SHOAL_SECRET": "zz"})


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 2, "world_size": 2}, "rank"), ({"rank": 0, "world_size": 0}, "world_size"),
    ({"rank": 0, "world_size": 1, "backend": "mpi"}, "backend")])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        collective.init_group(store=object(), **kwargs)


def test_world_of_one_runs_every_op_locally():
    store = TCPStore(is_server=True, secret=b"k")
    try:
        with collective.init_group(0, 1, store, name="solo") as comm:
            x = np.arange(4.0)
            comm.allreduce(x, op="avg", postscale=2.0)
            assert x.tolist() == [0.0, 2.0, 4.0, 6.0]
            assert comm.allgather(np.ones(2))[0].tolist() == [1.0, 1.0]
            assert comm.alltoall(np.arange(3)).tolist() == [0, 1, 2]
    finally:
        store.close()


_RANK_SCRIPT = """
import numpy as np
from shoal import collective
comm = collective.init_group_from_env(timeout=30)
x = np.full(3, comm.rank + 1.0)
comm.allreduce(x)
print(comm.rank, comm.world_size, comm.local_rank, x.sum(), flush=True)
comm.barrier()
comm.destroy()
"""


@pytest.mark.parametrize("secret", [None, "ab" * 16])
def test_torchrun_style_environment_forms_a_group(secret):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    procs = []
    try:
        for r in range(2):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), PYTHONPATH=ROOT)
            env.pop("SHOAL_SECRET", None)
            if secret:
                env["SHOAL_SECRET"] = secret
            procs.append(subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = sorted(o[0].strip() for o in outs)
    assert lines == ["0 2 0 9.0", "1 2 1 9.0"], outs
