"""Elastic training: recovery from a killed rank, lost steps, commit cost; shoal vs torchrun.

    python benchmarks/elastic.py [--rounds 3] [--steps 30] [--kill-at 10] [--batch 128]
    python benchmarks/elastic.py --chaos --steps 300 [--kill-every 20] [--slot-back 10]
    python benchmarks/elastic.py --commit-cost-only

The MLP of benchmarks/train.py (784-1024-1024-10, SGD with momentum) trains
data-parallel on 2 ranks, one thread each, in alternating rounds of
  - shoal: ``Trainer(num_workers=(1, 2))`` with ``elastic.State`` committed
    every step; on a dead rank the survivor restores the last commit and
    continues alone, and the replacement rank rejoins when its CPU is free;
  - torchrun: ``torchrun --nproc-per-node 2 --max-restarts 3`` (c10d rendezvous)
    running torch DDP (Gloo) on the same model and data, saving a
    checkpoint (model + optimizer, to /dev/shm) every step so that it too
    loses at most one step; on a dead rank torchrun stops every worker and
    starts them all again, and they load the checkpoint.
In each run, once step ``--kill-at`` is done, rank 1's process gets SIGKILL.
Reported per system (best and median over rounds):
  - recovery: from the SIGKILL to the next step completed by the job;
  - lost steps: steps completed before the kill that were computed again;
  - step time before the kill, and the time per step spent keeping state
    (shoal: the ``State.commit()`` call; torchrun: ``torch.save`` of the
    checkpoint and the barrier after it) as a share of the step;
  - and, in this process, the MLP's step time with and without a commit
    after every step (alternating windows), and the ``commit()`` call's own
    time as a share of the step.

``--chaos``: the same MLP for ``--steps`` steps under ``shoal launch -np 3
--min-np 1 --host-discovery-script``: every ``--kill-every`` s a random rank
gets SIGKILL and its slot leaves the discovery output, coming back
``--slot-back`` s later (a new process starts there and joins). Reported:
whether the job finished; each complete epoch's samples missing or repeated,
counted from the batches of the committed steps (each rank logs its batch
before the step, tagged with the step and the gang's generation); and the
final loss on the whole data set against an uninterrupted run with the same
effective batch schedule (one process replaying the committed global
batches in order, each step's gradient the mean of the ranks' means).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
N_SAMPLES = 4096


def _data():
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randn(N_SAMPLES, 784, generator=g), torch.randint(0, 10, (N_SAMPLES,), generator=g)


def _model():
    import torch
    from torch import nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def _log(path: str, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------ shoal
def shoal_loop(config):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import shoal.train as st
    from shoal.train import elastic
    torch.set_num_threads(1)
    x, y = _data()
    model = st.prepare_model(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = st.prepare_data_loader(DataLoader(TensorDataset(x, y), batch_size=config["batch"],
                                               shuffle=True))
    state = elastic.State(model=model, optimizer=opt, loader=loader, epoch=0, step=0)
    pid = os.getpid()

    @elastic.run
    def train(state):
        _log(config["log"], {"event": "resume", "step": state.step, "t": time.time(), "pid": pid,
                             "world": st.get_context().world_size})
        for state.epoch in range(state.epoch, 1000):
            loader.set_epoch(state.epoch)
            t0 = time.perf_counter()
            for xb, yb in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
                t1 = time.perf_counter()
                state.step += 1
                state.commit()
                t2 = time.perf_counter()
                _log(config["log"], {"event": "step", "step": state.step, "t": time.time(),
                                     "pid": pid, "rank": st.get_context().rank,
                                     "world": st.get_context().world_size,
                                     "step_s": t1 - t0, "keep_s": t2 - t1})
                if state.step >= config["steps"]:
                    return
                t0 = time.perf_counter()
    train(state)


def run_shoal(args, log: str) -> None:
    import shoal
    import shoal.train as st
    shoal.init(num_cpus=2)
    storage = tempfile.mkdtemp(prefix="shoal-elastic-run-")
    try:
        st.Trainer(shoal_loop, num_workers=(1, 2),
                   config={"batch": args.batch, "steps": args.steps, "log": log},
                   collective_timeout=60,
                   run_config=st.RunConfig(storage_path=storage, verbose=0)).fit()
    finally:
        shoal.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


# ------------------------------------------------------------------ torchrun
def torch_worker(args) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = _data()
    model = DistributedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(ds, world, rank, shuffle=True)
    step, epoch, skip = 0, 0, 0
    if os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, weights_only=False)
        model.module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, epoch, skip = ck["step"], ck["epoch"], ck["batch"]
    pid = os.getpid()
    _log(args.log, {"event": "resume", "step": step, "t": time.time(), "pid": pid,
                    "world": world})
    loader = DataLoader(ds, batch_size=args.batch, sampler=sampler)
    while True:
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for b, (xb, yb) in enumerate(loader):
            if b < skip:
                continue
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            t1 = time.perf_counter()
            step += 1
            if rank == 0:
                tmp = args.ckpt + ".tmp"
                torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                            "step": step, "epoch": epoch, "batch": b + 1}, tmp)
                os.replace(tmp, args.ckpt)
            dist.barrier()      # the checkpoint is complete before anyone goes on
            t2 = time.perf_counter()
            _log(args.log, {"event": "step", "step": step, "t": time.time(), "pid": pid,
                            "rank": rank, "world": world, "step_s": t1 - t0, "keep_s": t2 - t1})
            if step >= args.steps:
                dist.destroy_process_group()
                return
            t0 = time.perf_counter()
        epoch, skip = epoch + 1, 0


def run_torchrun(args, log: str):
    ckpt = f"/dev/shm/shoal-elastic-bench-{os.getpid()}.pt"
    if os.path.exists(ckpt):
        os.remove(ckpt)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "3",
           "--monitor-interval", "0.1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"bench{port}",
           os.path.abspath(__file__), "--torch-worker", "--steps", str(args.steps),
           "--batch", str(args.batch), "--bench-log", log, "--bench-ckpt", ckpt]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # its own session: the agent and its workers are stopped together (killpg) at the end
    err = open(log + ".stderr", "wb")   # noqa: SIM115 - closed with the run's directory
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True), ckpt


# ------------------------------------------------------------------ chaos run
def chaos_worker(args) -> None:
    """One process of the chaos run (under ``shoal launch``'s elastic form)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import shoal.train as st
    from shoal.train import elastic
    torch.set_num_threads(1)
    x, y = _data()
    model = st.prepare_model(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = st.prepare_data_loader(DataLoader(TensorDataset(x, y, torch.arange(N_SAMPLES)),
                                               batch_size=args.batch, shuffle=True))
    state = elastic.State(model=model, optimizer=opt, loader=loader, epoch=0, step=0)
    log = f"{args.log}-{os.getpid()}"

    @elastic.run
    def train(state):
        for state.epoch in range(state.epoch, 10 ** 6):
            loader.set_epoch(state.epoch)
            for xb, yb, ib in loader:
                ctx = st.get_context()      # the batch, before the step: see _committed_batches
                _log(log, {"step": state.step + 1, "gen": ctx.attempt, "rank": ctx.rank,
                           "world": ctx.world_size, "epoch": state.epoch, "idx": ib.tolist(),
                           "t": time.time(), "pid": os.getpid()})
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
                state.step += 1
                state.commit()
                if state.step >= args.steps:
                    return
    train(state)
    if st.get_context().rank == 0:
        torch.save(getattr(model, "module", model).state_dict(), args.ckpt)


def _committed_batches(log_glob: str) -> dict:
    """step -> [(rank, epoch, indices)] of the generation whose step was committed.

    Every rank logs its batch before each step with the step's number and the
    gang's generation. A step cut short by a death is done again by the next
    generation, whose rows replace it; a step whose gradient sum completed
    keeps the batch of a rank that died just after (it is in the committed state).
    """
    by_step: dict = {}
    for path in glob.glob(log_glob):
        for r in _records(path):
            by_step.setdefault(r["step"], {}).setdefault(r["gen"], []).append(
                (r["rank"], r["epoch"], r["idx"]))
    return {s: sorted(gens[max(gens)]) for s, gens in sorted(by_step.items())}


def _replay(batches: dict):
    """The uninterrupted run with the same effective batch schedule: one process, the same
    committed global batches in order, each step's gradient the mean of the ranks' means."""
    import torch
    torch.set_num_threads(1)
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for rows in batches.values():
        opt.zero_grad()
        loss = sum(torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                   for _, _, idx in rows) / len(rows)
        loss.backward()
        opt.step()
    return model


def _full_loss(model) -> float:
    import torch
    x, y = _data()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def chaos(args) -> dict:
    """``--steps`` steps on 3 slots under ``shoal launch -np 3 --min-np 1`` with a host
    discovery script; every ``--kill-every`` s a random rank gets SIGKILL and its slot goes
    away, coming back ``--slot-back`` s later."""
    import random

    import torch
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="shoal-elastic-chaos-")
    hosts = os.path.join(work, "hosts")
    disc = os.path.join(work, "discover.sh")
    with open(hosts, "w") as f:
        f.write("localhost:3\n")
    with open(disc, "w") as f:
        f.write(f"#!/bin/sh\ncat {hosts}\n")
    os.chmod(disc, 0o755)
    log, ckpt = os.path.join(work, "log"), os.path.join(work, "final.pt")
    cmd = [sys.executable, "-m", "shoal.launch", "-np", "3", "--min-np", "1", "--max-np", "3",
           "--host-discovery-script", disc, "--collective-timeout", "30", "--run-dir",
           os.path.join(work, "run"), sys.executable, "-u", os.path.abspath(__file__),
           "--chaos-worker", "--steps", str(args.steps), "--batch", str(args.batch),
           "--bench-log", log, "--bench-ckpt", ckpt]
    out = open(os.path.join(work, "launch.out"), "wb")     # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    kills, slot_back, next_kill = [], None, None
    t_start = time.time()
    try:
        while proc.poll() is None and time.time() - t_start < args.give_up:
            rows = [r for p in glob.glob(log + "-*") for r in _records(p)[-3:]]
            now = time.time()
            if rows and next_kill is None:
                next_kill = now + args.kill_every       # the clock starts at the first step
            if rows and now >= next_kill:
                gen = max(r["gen"] for r in rows)
                pids = sorted({r["pid"] for r in rows if r["gen"] == gen})
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    with open(hosts, "w") as f:
                        f.write("localhost:2\n")       # its slot goes away...
                    kills.append({"t": now, "pid": victim,
                                  "step": max(r["step"] for r in rows)})
                    slot_back = now + args.slot_back
                except ProcessLookupError:
                    pass
                next_kill = now + args.kill_every
            if slot_back is not None and now >= slot_back:
                with open(hosts, "w") as f:
                    f.write("localhost:3\n")           # ...and comes back
                slot_back = None
            time.sleep(0.1)
        finished = proc.poll() == 0
        wall = time.time() - t_start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out.close()
    with open(os.path.join(work, "launch.out"), "rb") as f:
        launch_out = f.read().decode(errors="replace")
    changes = [line for line in launch_out.splitlines() if "membership change" in line]
    batches = _committed_batches(log + "-*")
    # each epoch's samples: used once, missing, or repeated (DistributedSampler-style
    # padding repeats up to world-1 items at an epoch's end)
    per_epoch: dict = {}
    for rows in batches.values():
        for _, epoch, idx in rows:
            per_epoch.setdefault(epoch, []).extend(idx)
    complete = sorted(per_epoch)[:-1]
    missing = repeated = 0
    for e in complete:
        counts = torch.bincount(torch.tensor(per_epoch[e]), minlength=N_SAMPLES)
        missing += int((counts == 0).sum())
        repeated += int((counts - 1).clamp(min=0).sum())
    res = {"finished": finished, "wall_s": wall, "kills": len(kills),
           "changes": len(changes), "steps": len(batches),
           "steps_in_order": list(batches) == list(range(1, len(batches) + 1)),
           "epochs": len(complete), "missing": missing, "repeated": repeated,
           "worlds": sorted({len(r) for r in batches.values()}), "tail": launch_out[-1500:]}
    if finished and os.path.exists(ckpt):
        model = _model()
        model.load_state_dict(torch.load(ckpt))
        res["loss"] = _full_loss(model)
        res["ref_loss"] = _full_loss(_replay(batches))
    if args.keep:
        res["work"] = work
    else:
        shutil.rmtree(work, ignore_errors=True)
    return res


# ------------------------------------------------------------------ commit cost
def commit_cost(args, rounds: int = 7, window: int = 12) -> dict:
    """Step time of the MLP with and without ``State.commit()`` after each step, in one
    process, alternating windows; the commit's whole cost (its background copy included,
    which the next optimizer.step() waits for) shows in the difference."""
    import torch

    from shoal.train import elastic
    torch.set_num_threads(1)
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = elastic.State(model=model, optimizer=opt, step=0)
    b = args.batch

    calls: list[float] = []     # the commit() call itself, per step
    steps: list[float] = []     # the step without it

    def window_time(commit: bool) -> float:
        t0 = time.perf_counter()
        for i in range(window):
            j = (i * b) % (N_SAMPLES - b)
            ts = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[j:j + b]), y[j:j + b]).backward()
            opt.step()
            if commit:
                tc = time.perf_counter()
                steps.append(tc - ts)
                state.step += 1
                state.commit()
                calls.append(time.perf_counter() - tc)
        state._join_copy()
        return (time.perf_counter() - t0) / window
    window_time(True)           # warm-up
    with_c, without = [], []
    for _ in range(rounds):
        without.append(window_time(False))
        with_c.append(window_time(True))
    best = (min(with_c) - min(without)) / min(without)
    med = (statistics.median(with_c) - statistics.median(without)) / statistics.median(without)
    share = [c / (st + c) for c, st in zip(calls, steps)]
    return {"step_ms": min(without) * 1e3, "with_ms": min(with_c) * 1e3, "best": best,
            "median": med, "call_ms": statistics.median(calls) * 1e3,
            "call_min_ms": min(calls) * 1e3, "call_share": statistics.median(share)}


def _print_commit_cost(cc: dict, batch: int) -> None:
    print(f"commit every step, MLP batch {batch} on one thread: the commit() call takes "
          f"{cc['call_ms']:.2f} ms (median; best {cc['call_min_ms']:.2f} ms), "
          f"{cc['call_share']:.1%} of the step (median); step {cc['step_ms']:.1f} ms without, "
          f"{cc['with_ms']:.1f} ms with (best windows): difference {cc['best']:.1%} (median "
          f"windows {cc['median']:.1%})")


def _kill_workers_of(log: str) -> None:
    """torchrun starts its workers in sessions of their own: stop those of this run (their
    command line names this run's unique log path) when the agent was killed."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"--torch-worker" in args and log.encode() in args:
            try:
                os.kill(int(d), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------ measuring
def _records(log: str) -> list[dict]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def _kill_when_ready(log: str, kill_at: int, timeout: float = 300) -> tuple[float, int, int]:
    """SIGKILL rank 1 once step ``kill_at`` is done; (time, pid, last step done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = [r for r in _records(log) if r["event"] == "step"]
        if recs and max(r["step"] for r in recs) >= kill_at:
            victim = next((r["pid"] for r in reversed(recs) if r.get("rank") == 1), None)
            if victim is not None:
                last = max(r["step"] for r in recs)
                t = time.time()
                os.kill(victim, signal.SIGKILL)
                return t, victim, last
        time.sleep(0.01)
    raise TimeoutError(f"step {kill_at} not reached within {timeout}s")


def _measure(log: str, t_kill: float, last_before: int) -> dict:
    recs = _records(log)
    before = [r for r in recs if r["event"] == "step" and r["t"] < t_kill]
    resumes = [r for r in recs if r["event"] == "resume" and r["t"] > t_kill]
    if not resumes or not any(r["event"] == "step" and r["t"] > min(x["t"] for x in resumes)
                              for r in recs):
        return None         # the job did not resume (a hang, or past --give-up seconds)
    t_resumed = min(r["t"] for r in resumes)
    # a step already past its allreduce when the rank died may still end after the kill:
    # recovery counts to the first step of the job that resumed
    after = [r for r in recs if r["event"] == "step" and r["t"] > t_resumed]
    first_after = min(after, key=lambda r: r["t"])
    resumed_from = min(r["step"] for r in resumes) if resumes else last_before
    warm = [r for r in before if r["step"] > 3 and r.get("rank") == 0]
    step_s = statistics.median(r["step_s"] for r in warm)
    keep_s = statistics.median(r["keep_s"] for r in warm)
    step_min = min(r["step_s"] for r in warm)
    keep_min = min(r["keep_s"] for r in warm)
    return {"recovery_s": first_after["t"] - t_kill,
            "lost_steps": max(last_before - resumed_from, 0),
            "step_s": step_s, "keep_s": keep_s, "keep_share": keep_s / (step_s + keep_s),
            "step_min": step_min, "keep_min": keep_min,
            "keep_share_min": keep_min / (step_min + keep_min)}


def one_round(system: str, args) -> dict:
    work = tempfile.mkdtemp(prefix=f"shoal-elastic-{system}-")
    log = os.path.join(work, "log.jsonl")
    try:
        if system == "torchrun":
            proc, ckpt = run_torchrun(args, log)
            try:
                t_kill, _, last = _kill_when_ready(log, args.kill_at)
                try:
                    proc.wait(timeout=args.give_up)
                except subprocess.TimeoutExpired:
                    pass            # counted below if no step followed the kill
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                _kill_workers_of(log)
                if os.path.exists(ckpt):
                    os.remove(ckpt)
        else:
            import threading
            box = {}

            def killer():
                try:
                    box["kill"] = _kill_when_ready(log, args.kill_at)
                except Exception as e:  # noqa: BLE001 - reported below
                    box["error"] = e
            th = threading.Thread(target=killer, daemon=True)
            th.start()
            run_shoal(args, log)
            th.join(timeout=10)
            if "error" in box:
                raise box["error"]
            t_kill, _, last = box["kill"]
        m = _measure(log, t_kill, last)
        if m is None and os.path.exists(log + ".stderr"):
            with open(log + ".stderr", "rb") as f:
                tail = f.read()[-1500:].decode(errors="replace")
            print(f"--- {system} did not resume; the end of its stderr:\n{tail}", flush=True)
        return m
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--kill-at", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128, help="per-rank batch (train.py's MLP: 128)")
    ap.add_argument("--systems", default="shoal,torchrun")
    ap.add_argument("--verbose", action="store_true", help="print the chaos run's launcher log")
    ap.add_argument("--commit-cost-only", action="store_true",
                    help="only the with/without commit() step times")
    ap.add_argument("--give-up", type=float, default=300,
                    help="seconds a job may take to finish after the kill")
    ap.add_argument("--chaos", action="store_true",
                    help="only the chaos run: --steps (use 300) with a rank killed every "
                         "--kill-every s and its slot back --slot-back s later")
    ap.add_argument("--kill-every", type=float, default=20)
    ap.add_argument("--slot-back", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the chaos run's logs")
    ap.add_argument("--chaos-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bench-log", dest="log", help=argparse.SUPPRESS)
    ap.add_argument("--bench-ckpt", dest="ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args)
        return
    if args.chaos_worker:
        chaos_worker(args)
        return
    if args.chaos:
        print(f"load average before: {os.getloadavg()}", flush=True)
        r = chaos(args)
        print(f"load average after: {os.getloadavg()}")
        if not r["finished"]:
            print("the chaos run did not finish; the end of its output:\n" + r["tail"])
        print(r["tail"] if args.verbose else "", end="")
        if "work" in r:
            print(f"logs kept in {r['work']}")
        print("\n| chaos run | figure |\n|---|---|")
        print(f"| finished | {r['finished']} in {r['wall_s']:.0f} s |")
        print(f"| ranks killed / membership changes | {r['kills']} / {r['changes']} |")
        print(f"| committed steps (numbered 1..N, none twice) | {r['steps']} "
              f"({r['steps_in_order']}) |")
        print(f"| world sizes of committed steps | {r['worlds']} |")
        print(f"| complete epochs: samples missing / repeated | {r['missing']} / "
              f"{r['repeated']} over {r['epochs']} epochs (repeats: the end-of-epoch padding) |")
        if "loss" in r:
            print(f"| final loss: chaos / uninterrupted, same batches | {r['loss']:.5f} / "
                  f"{r['ref_loss']:.5f} ({abs(r['loss'] / r['ref_loss'] - 1):.3%} apart) |")
        return
    if args.commit_cost_only:
        print(f"load average before: {os.getloadavg()}")
        cc = commit_cost(args)
        _print_commit_cost(cc, args.batch)
        print(f"load average after: {os.getloadavg()}")
        return
    systems = args.systems.split(",")
    results: dict = {s: [] for s in systems}
    failed: dict = {}
    print(f"load average before: {os.getloadavg()}", flush=True)
    for r in range(args.rounds):
        for s in systems:
            m = one_round(s, args)
            if m is None:
                failed[s] = failed.get(s, 0) + 1
                print(f"round {r + 1} {s:8s} did not resume within {args.give_up:.0f}s",
                      flush=True)
                continue
            results[s].append(m)
            print(f"round {r + 1} {s:8s} recovery {m['recovery_s']:.2f}s  lost steps "
                  f"{m['lost_steps']}  step {m['step_s'] * 1e3:.1f} ms (best "
                  f"{m['step_min'] * 1e3:.1f})  keeping state {m['keep_s'] * 1e3:.2f} ms "
                  f"({m['keep_share']:.1%}; best {m['keep_min'] * 1e3:.2f} ms, "
                  f"{m['keep_share_min']:.1%})", flush=True)
    cc = commit_cost(args)
    _print_commit_cost(cc, args.batch)
    print(f"load average after: {os.getloadavg()}")
    print("\n| system | recovery best / median (s) | lost steps (max) | step best / median "
          "(ms) | keeping state per step, best / median (share of the step) |")
    print("|---|---|---|---|---|")
    for s in systems:
        ms = results[s]
        if not ms:
            print(f"| {s} | no round resumed | | | |")
            continue
        rec = sorted(m["recovery_s"] for m in ms)
        kb = min(m["keep_min"] for m in ms)
        sb = min(m["step_min"] for m in ms)
        print(f"| {s} | {rec[0]:.2f} / {statistics.median(rec):.2f} | "
              f"{max(m['lost_steps'] for m in ms)} | {sb * 1e3:.1f} / "
              f"{statistics.median(m['step_s'] for m in ms) * 1e3:.1f} | "
              f"{kb * 1e3:.2f} ms ({kb / (kb + sb):.1%}) / "
              f"{statistics.median(m['keep_s'] for m in ms) * 1e3:.2f} ms "
              f"({statistics.median(m['keep_share'] for m in ms):.1%}) |")
    if failed:
        print(f"\nrounds that did not resume: {failed}")
    if results.get("shoal") and results.get("torchrun"):
        a = sorted(m["recovery_s"] for m in results["torchrun"])
        b = sorted(m["recovery_s"] for m in results["shoal"])
        print(f"\nrecovery, torchrun / shoal: best {a[0] / b[0]:.1f}x, median "
              f"{statistics.median(a) / statistics.median(b):.1f}x")


if __name__ == "__main__":
    main()
