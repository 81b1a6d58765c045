"""shoal launch: environment, rank-prefixed output, failure propagation, restarts."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _launch(*args, timeout=90):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SHOAL_SECRET", None)
    return subprocess.run([sys.executable, "-m", "shoal.launch", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, check=False)


def _script(name):
    return os.path.join(HERE, "scripts", name)


def test_each_rank_gets_its_environment_and_a_prefix():
    r = _launch("-n", "2", _script("print_env.py"))
    assert r.returncode == 0, r.stderr
    lines = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\[(\d)\] ENV (.*)", line)
        assert m, line
        lines[int(m.group(1))] = dict(kv.split("=", 1) for kv in m.group(2).split())
    assert sorted(lines) == [0, 1]
    for rank, env in lines.items():
        assert env["RANK"] == env["SHOAL_RANK"] == env["LOCAL_RANK"] == str(rank)
        assert env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] != env["SHOAL_MASTER_PORT"]
        assert len(env["SHOAL_SECRET"]) == 64 and env["SHOAL_RESTART_COUNT"] == "0"
    assert lines[0]["SHOAL_SECRET"] == lines[1]["SHOAL_SECRET"]


def test_failing_rank_stops_the_others_and_sets_the_exit_code():
    t = time.monotonic()
    r = _launch("-n", "2", _script("fail_fast.py"), "exit")
    assert r.returncode == 3
    assert time.monotonic() - t < 50            # rank 0's 60 s sleep was cut short
    assert "rank 1 failed with exit code 3" in r.stderr


def test_torch_distributed_env_init_script_runs_unchanged():
    r = _launch("-n", "2", _script("torch_env_init.py"))
    assert r.returncode == 0, r.stderr
    assert "[0] sum 3 of 2" in r.stdout and "[1] sum 3 of 2" in r.stdout


def _final_weight(stdout):
    m = re.search(r"final weight (.*)", stdout)
    assert m, stdout
    return [float(v) for v in m.group(1).split()]


def _uninterrupted_weight(epochs):
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    for _ in range(epochs):         # the mean of the two equal shards' losses
        loss = (nn.functional.mse_loss(model(X[0::2]), Y[0::2])
                + nn.functional.mse_loss(model(X[1::2]), Y[1::2])) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.weight.detach().reshape(-1).tolist()


@pytest.mark.slow
def test_restart_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path):
    r = _launch("-n", "2", "--max-restarts", "1", "--run-dir", str(tmp_path),
                _script("launched_train.py"), "4", "2")
    assert r.returncode == 0, r.stderr
    assert "restarting all processes" in r.stderr and "resumed at epoch 3" in r.stdout
    assert _final_weight(r.stdout) == pytest.approx(_uninterrupted_weight(4), abs=1e-5)
    assert len((tmp_path / "result.json").read_text().splitlines()) == 4


def test_rank_killed_by_a_signal_fails_the_job_with_128_plus_signal():
    r = _launch("-n", "2", _script("fail_fast.py"), "kill")
    assert r.returncode == 137
    assert "no restarts left" in r.stderr


def test_missing_script_is_rejected():
    r = _launch("-n", "2", "no_such_script.py")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_two_node_job_meets_at_the_rendezvous_store():
    import secrets
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT, SHOAL_SECRET=secrets.token_hex(32))
    procs = [subprocess.Popen([sys.executable, "-m", "shoal.launch", "-n", "1", "--nnodes", "2",
                               "--node-rank", str(node), "--rdzv", f"127.0.0.1:{port}",
                               _script("print_env.py")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
             for node in (0, 1)]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert "RANK=0 WORLD_SIZE=2 LOCAL_RANK=0" in outs[0][0]
    assert "RANK=1 WORLD_SIZE=2 LOCAL_RANK=0" in outs[1][0]
    ports = {re.search(r"SHOAL_MASTER_PORT=(\d+)", o[0]).group(1) for o in outs}
    assert len(ports) == 1                     # both nodes agreed on the job's store


# ------------------------------------------------------------------ horovodrun / mpirun form
def _envs(stdout):
    lines = {}
    for line in stdout.splitlines():
        m = re.match(r"\[(\d)\] ENV (.*)", line)
        if m:
            lines[int(m.group(1))] = dict(kv.split("=", 1) for kv in m.group(2).split())
    return lines


def test_np_with_a_command_sets_horovod_mpi_and_torchrun_variables():
    # `shoal launch -np 2 python script.py`: a command, not only a script
    r = _launch("-np", "2", sys.executable, "-u", _script("print_env.py"))
    assert r.returncode == 0, r.stderr
    envs = _envs(r.stdout)
    assert sorted(envs) == [0, 1]
    for rank, env in envs.items():
        for k in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "LOCAL_RANK",
                  "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
            assert env[k] == str(rank), k
        for k in ("WORLD_SIZE", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                  "LOCAL_WORLD_SIZE", "HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
            assert env[k] == "2", k
        assert env["HOROVOD_CROSS_RANK"] == "0" and env["HOROVOD_CROSS_SIZE"] == "1"
        assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"].isdigit()


def test_hosts_and_hostfile_on_this_host(tmp_path):
    r = _launch("-np", "2", "-H", "localhost:2", _script("print_env.py"))
    assert r.returncode == 0, r.stderr
    assert sorted(_envs(r.stdout)) == [0, 1]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# this machine\nlocalhost slots=4\n")
    r = _launch("-np", "3", "--hostfile", str(hostfile), _script("print_env.py"))
    assert r.returncode == 0, r.stderr
    assert {e["WORLD_SIZE"] for e in _envs(r.stdout).values()} == {"3"}


def test_missing_command_and_too_few_slots_are_rejected():
    r = _launch("-np", "2", "no-such-command-hvd", "x")
    assert r.returncode == 2 and "not found" in r.stderr
    r = _launch("-np", "3", "-H", "localhost:2", _script("print_env.py"))
    assert r.returncode != 0 and "needs more slots" in r.stderr


def test_host_plan_places_processes_in_order_and_finds_this_host():
    from shoal.launch import parse_hosts, plan_hosts
    hosts = parse_hosts("a:2,b:2")
    assert hosts == [("a", 2), ("b", 2)]
    assert plan_hosts(hosts, 4, local_names={"b"}) == (2, 2, 1, "a")
    assert plan_hosts(hosts, 2, local_names={"x"}) == (2, 1, 0, "a")   # fits on the first host
    assert plan_hosts(hosts, 4, node_rank=0, local_names=set()) == (2, 2, 0, "a")
    assert parse_hosts("h1 slots=2\nh2\n") == [("h1", 2), ("h2", 1)]
    with pytest.raises(ValueError, match="same number of processes"):
        plan_hosts(hosts, 3, local_names={"a"})
    with pytest.raises(ValueError, match="cannot tell which"):
        plan_hosts(hosts, 4, local_names={"c"})
    with pytest.raises(ValueError, match="slots must be an integer"):
        parse_hosts("a:x")


def test_two_hosts_from_h_run_as_two_nodes():
    # the same command line on each "host" (both loopback here, so --node-rank says which)
    import secrets
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT, SHOAL_SECRET=secrets.token_hex(32))
    procs = [subprocess.Popen([sys.executable, "-m", "shoal.launch", "-np", "2",
                               "-H", "127.0.0.1:1,127.0.0.1:1", "--node-rank", str(node),
                               "--rdzv", f"127.0.0.1:{port}", _script("print_env.py")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
             for node in (0, 1)]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    for node, (out, _) in enumerate(outs):
        env_of = _envs(out)[node]
        assert env_of["HOROVOD_RANK"] == env_of["OMPI_COMM_WORLD_RANK"] == str(node)
        assert env_of["HOROVOD_SIZE"] == "2" and env_of["HOROVOD_LOCAL_SIZE"] == "1"
        assert env_of["HOROVOD_CROSS_RANK"] == str(node) and env_of["HOROVOD_CROSS_SIZE"] == "2"
