"""``shoal launch``: run a script on N processes (what torchrun, horovodrun and mpirun do).

    shoal launch -n 4 train.py --lr 0.1                 # torchrun's form
    shoal launch -np 4 python train.py --lr 0.1         # horovodrun's / mpirun's: any command
    shoal launch -n 2 --nnodes 2 --node-rank 0 --rdzv 10.0.0.1:29400 train.py   # on each node
    shoal launch -np 4 -H host1:2,host2:2 python train.py   # on each host (or --hostfile)

A script ending in ``.py`` runs with this Python; anything else is a command
(``python train.py``, ``./run.sh``). With ``-H``/``--hostfile``, ``-np`` is
the job's total, hosts are filled in order up to their slots, and the same
command line is run on every listed host (shoal does not ssh): each finds its
place by its host name or address (or ``--node-rank``) and the launchers meet
at ``--rdzv`` (default: the first host, port 29400).

Every process gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT (torch.distributed's env:// init), Horovod's
HOROVOD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE/CROSS_RANK/CROSS_SIZE, MPI-style
OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE and PMI_RANK/PMI_SIZE, and
the SHOAL_* twins plus a per-job SHOAL_SECRET (shoal.collective.init_group_from_env,
shoal.train, shoal.horovod: rank 0 hosts an authenticated TCPStore on
SHOAL_MASTER_ADDR:SHOAL_MASTER_PORT). Output lines are prefixed with the
rank. When a process fails the others are stopped; with --max-restarts the
whole group starts again (SHOAL_RESTART_COUNT counts up; a script resumes
from its checkpoint) and the launcher exits with the failing process's code.

The launchers of a multi-node job meet in an authenticated TCPStore at
--rdzv (hosted by node 0's launcher) to agree on ports and on restarts; they
need the same SHOAL_SECRET exported on every node.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

_GRACE_S = 5.0
_RDZV_PORT = 29400


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal launch", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nproc", "--nproc-per-node", "-np", "--num-proc", dest="nproc",
                   required=True,
                   help="processes on this node (with -H/--hostfile: in the whole job); "
                        "MIN:MAX runs an elastic job of MIN to MAX processes")
    p.add_argument("-H", "--hosts", default=None,
                   help="host1:slots,host2:slots (horovodrun/mpirun form); run the same "
                        "command on every listed host")
    p.add_argument("--hostfile", default=None,
                   help="a file of hosts, one a line: 'host slots=N', 'host:N' or 'host'")
    p.add_argument("--nnodes", default="1",
                   help="nodes in the job (default 1); MIN:MAX (torchrun's form) runs an "
                        "elastic job of MIN to MAX nodes of -n processes each")
    p.add_argument("--node-rank", type=int, default=None,
                   help="this node's rank (0..nnodes-1; default 0, or found in -H)")
    p.add_argument("--rdzv", default=None,
                   help="HOST:PORT where node 0's launcher hosts the launchers' store "
                        "(needed with --nnodes > 1)")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="restart the whole group this many times after a failure")
    e = p.add_argument_group("elastic jobs (the script uses shoal.train.elastic / hvd.elastic)")
    e.add_argument("--min-np", type=int, default=None,
                   help="horovodrun's: the fewest processes the job runs with (default -np)")
    e.add_argument("--max-np", type=int, default=None,
                   help="horovodrun's: the most processes (default: every discovered slot)")
    e.add_argument("--host-discovery-script", default=None,
                   help="an executable printing the job's hosts, one 'host:slots' a line; read "
                        "every second: slots that appear on this host add processes, slots "
                        "that go away remove them at the next commit")
    e.add_argument("--slots", type=int, default=1,
                   help="slots of a host the discovery script lists without a count")
    e.add_argument("--elastic-timeout", type=float, default=600,
                   help="seconds the job may have fewer than the minimum of processes before "
                        "it fails (default 600)")
    e.add_argument("--reset-limit", type=int, default=None,
                   help="membership changes allowed before the job fails (default: no limit)")
    e.add_argument("--max-repeated-failures", type=int, default=3,
                   help="processes exiting with the same error code this many times stop the "
                        "job (deaths by signal do not count; default 3)")
    e.add_argument("--collective-timeout", type=float, default=60,
                   help="seconds a collective may wait for a peer before the group is "
                        "declared broken (default 60)")
    p.add_argument("--run-dir", default=None,
                   help="directory for shoal.train reports and checkpoints (SHOAL_RUN_DIR)")
    p.add_argument("--no-prefix", action="store_true", help="do not prefix output with ranks")
    p.add_argument("-m", dest="module", action="store_true",
                   help="run the script argument as a module (python -m)")
    p.add_argument("script", help="the Python script (or module with -m), or a command")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script or command")
    return p


def parse_hosts(spec: str) -> list[tuple[str, int]]:
    """``"h1:2,h2"`` (or a hostfile's lines) as [(host, slots)]; a host without slots has 1."""
    out = []
    for item in spec.replace("\n", ",").split(","):
        item = item.split("#", 1)[0].strip()
        if not item:
            continue
        host, slots = item, "1"
        if "slots=" in item:
            host, slots = item.split()[0], item.split("slots=", 1)[1].split()[0]
        elif ":" in item:
            host, slots = item.rsplit(":", 1)
        try:
            n = int(slots)
        except ValueError:
            raise ValueError(f"bad host entry {item!r}: slots must be an integer "
                             "(host:N or 'host slots=N')") from None
        if n < 1 or not host:
            raise ValueError(f"bad host entry {item!r}: need a host name and slots >= 1")
        out.append((host.strip(), n))
    if not out:
        raise ValueError("no hosts given; pass -H host1:2,host2:2 or a --hostfile")
    return out


def _local_names() -> set[str]:
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


def is_this_machine(host: str, names: set[str] | None = None) -> bool:
    """Whether ``host`` (a name or an address from -H, a hostfile or a discovery script)
    is this machine: one of its names, or an address one of its interfaces holds.

    The address test binds a socket to each address ``host`` resolves to, which
    only succeeds for an address of this machine's network stack (so a container
    or network namespace with its own addresses is told apart from its neighbours
    even when they share a hostname).
    """
    if host in (_local_names() if names is None else names):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for family, _, _, _, addr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
            return True
        except OSError:
            continue
    return False


def plan_hosts(hosts: list[tuple[str, int]], total: int, node_rank: int | None = None,
               local_names: set[str] | None = None) -> tuple[int, int, int, str]:
    """Place ``total`` processes on ``hosts`` in order, up to each host's slots.

    Returns (processes per node, number of nodes, this node's rank, first host).
    Every node runs the same number of processes (the launchers number ranks
    node by node); this node is ``node_rank`` or the host that names this machine.

    Raises:
        ValueError: more processes than slots, uneven placement, or this machine
            is not among the hosts.
    """
    if total < 1:
        raise ValueError(f"-np must be >= 1, got {total}")
    left, counts = total, []
    for host, slots in hosts:
        take = min(slots, left)
        if take:
            counts.append((host, take))
        left -= take
    if left:
        raise ValueError(f"-np {total} needs more slots than the hosts give "
                         f"({sum(s for _, s in hosts)}: {', '.join(f'{h}:{s}' for h, s in hosts)})")
    per = {c for _, c in counts}
    if len(per) > 1:
        raise ValueError("shoal launch runs the same number of processes on every host; "
                         f"-np {total} on these hosts gives {', '.join(f'{h}:{c}' for h, c in counts)}; "
                         "change -np or the slots")
    if node_rank is None:
        if len(counts) == 1:
            node_rank = 0
        else:
            local = _local_names() if local_names is None else local_names
            mine = [i for i, (h, _) in enumerate(counts)
                    if (h in local if local_names is not None else is_this_machine(h, local))]
            if len(mine) != 1:
                raise ValueError(
                    f"cannot tell which of the hosts {[h for h, _ in counts]} this machine is "
                    f"(its names: {sorted(local)}); run shoal launch on each host with "
                    "--node-rank, or name the hosts as they resolve here")
            node_rank = mine[0]
    if not 0 <= node_rank < len(counts):
        raise ValueError(f"--node-rank {node_rank} is not one of the {len(counts)} hosts")
    return per.pop(), len(counts), node_rank, counts[0][0]


def _count_range(value: str, flag: str) -> tuple[int, int | None]:
    """``"4"`` -> (4, 4); ``"2:4"`` -> (2, 4); ``"2:"`` -> (2, None) (no maximum)."""
    lo, sep, hi = str(value).partition(":")
    try:
        a = int(lo)
        b = (int(hi) if hi else None) if sep else a
    except ValueError:
        raise SystemExit(f"shoal launch: {flag} takes N or MIN:MAX (integers), got "
                         f"{value!r}") from None
    if a < 1 or (b is not None and b < a):
        raise SystemExit(f"shoal launch: {flag} {value}: need 1 <= MIN <= MAX")
    return a, b


def _elastic_plan(args):
    """None for a fixed-size job; else (min processes, max or None, this node's slots)."""
    nlo, nhi = _count_range(args.nproc, "-n")
    klo, khi = _count_range(args.nnodes, "--nnodes")
    elastic = (nlo != nhi or klo != khi or args.min_np is not None or args.max_np is not None
               or args.host_discovery_script is not None)
    args.nnodes = khi if khi is not None else 1 << 16
    if not elastic:
        args.nproc = nlo
        return None
    if args.hosts or args.hostfile:
        raise SystemExit("shoal launch: an elastic job takes its hosts from "
                         "--host-discovery-script, not -H/--hostfile")
    if args.max_restarts:
        raise SystemExit("shoal launch: --max-restarts restarts a fixed-size job; an elastic "
                         "job replaces lost processes without restarting the others")
    if klo != khi:                  # torchrun's form: MIN:MAX nodes of -n processes each
        if nlo != nhi:
            raise SystemExit("shoal launch: give a range to -n or to --nnodes, not both")
        lo, hi, slots = klo * nlo, (khi * nlo if khi is not None else None), nlo
    else:
        lo, hi = nlo, nhi
        if args.min_np is not None:
            lo = args.min_np
        if args.max_np is not None:
            hi = args.max_np
        elif args.host_discovery_script is not None and nlo == nhi:
            hi = None               # horovodrun: up to every discovered slot
        slots = hi if hi is not None else nlo
        if args.nnodes > 1:
            slots = nlo
    if hi is not None and lo > hi:
        raise SystemExit(f"shoal launch: the minimum {lo} is above the maximum {hi}")
    if args.node_rank is None:
        args.node_rank = 0
    return lo, hi, slots


def _apply_hosts(args) -> None:
    """-H/--hostfile: turn the job's total and its hosts into this node's arguments."""
    if not (args.hosts or args.hostfile):
        if args.node_rank is None:
            args.node_rank = 0
        return
    if args.hosts and args.hostfile:
        raise SystemExit("shoal launch: pass -H or --hostfile, not both")
    if args.hostfile:
        try:
            with open(args.hostfile) as f:
                spec = f.read()
        except OSError as e:
            raise SystemExit(f"shoal launch: cannot read --hostfile {args.hostfile!r}: {e}") from None
    else:
        spec = args.hosts
    try:
        per, nnodes, node_rank, first = plan_hosts(parse_hosts(spec), args.nproc, args.node_rank)
    except ValueError as e:
        raise SystemExit(f"shoal launch: {e}") from None
    args.nproc, args.nnodes, args.node_rank = per, nnodes, node_rank
    if nnodes > 1 and not args.rdzv:
        args.rdzv = f"{first}:{_RDZV_PORT}"


def command(args) -> list[str]:
    """The command each process runs: a ``.py`` script (or ``-m`` module) with this
    Python, anything else as a command found on PATH."""
    if args.module:
        return [sys.executable, "-u", "-m", args.script] + list(args.args)
    if args.script.endswith(".py"):
        return [sys.executable, "-u", args.script] + list(args.args)
    return [args.script] + list(args.args)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]



def rendezvous_store(rdzv: str | None, node_rank: int, flag: str):
    """The job's store across nodes: served by node 0 at ``rdzv`` (HOST:PORT), authenticated
    with SHOAL_SECRET, which every node must share."""
    from shoal.core.kv import TCPStore

    if not rdzv or ":" not in rdzv:
        raise SystemExit(f"shoal launch: {flag} needs --rdzv HOST:PORT (node 0's address and a "
                         "free port)")
    secret = os.environ.get("SHOAL_SECRET")
    if not secret:
        raise SystemExit("shoal launch: a multi-node job needs the same SHOAL_SECRET on "
                         "every node: export SHOAL_SECRET=$(python -c 'import secrets; "
                         "print(secrets.token_hex(32))')")
    host, port = rdzv.rsplit(":", 1)
    return TCPStore(host, int(port), secret=bytes.fromhex(secret), is_server=node_rank == 0,
                    timeout=300)

class _Prefixer(threading.Thread):
    """Copies a child's output to ours, one whole line at a time, with its rank in front."""

    def __init__(self, pipe, out, prefix: bytes, lock: threading.Lock):
        super().__init__(daemon=True)
        self.pipe, self.out, self.prefix, self.lock = pipe, out, prefix, lock

    def run(self):
        for line in iter(self.pipe.readline, b""):
            with self.lock:
                self.out.write(self.prefix + line if self.prefix else line)
                if not line.endswith(b"\n"):
                    self.out.write(b"\n")
                self.out.flush()
        self.pipe.close()


class Launcher:
    """Starts, watches and restarts the local processes of a job."""

    def __init__(self, args):
        self.args = args
        if args.nproc < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
            raise SystemExit(f"shoal launch: need -n >= 1, --nnodes >= 1 and 0 <= --node-rank < "
                             f"--nnodes (got -n {args.nproc}, --nnodes {args.nnodes}, "
                             f"--node-rank {args.node_rank})")
        if args.max_restarts < 0:
            raise SystemExit("shoal launch: --max-restarts must be >= 0")
        self.world = args.nproc * args.nnodes
        self.procs: list[subprocess.Popen] = []
        self.copiers: list[threading.Thread] = []     # copy each process's output to ours
        self.out_lock = threading.Lock()
        self.stopping = False
        from shoal.core.kv import TCPStore
        if args.nnodes > 1:
            self.master_addr = args.rdzv.rsplit(":", 1)[0] if args.rdzv else None
            self.store = rendezvous_store(args.rdzv, args.node_rank, "--nnodes > 1")
            secret = os.environ["SHOAL_SECRET"]   # rendezvous_store checked it is set
        else:
            secret = os.environ.get("SHOAL_SECRET") or secrets.token_hex(32)
            self.master_addr = "127.0.0.1"
            self.store = TCPStore("127.0.0.1", 0, secret=bytes.fromhex(secret), is_server=True)
        self.secret = secret
        self.job = os.environ.get("SHOAL_JOB_NAME") or time.strftime("launch_%Y%m%d_%H%M%S")
        self.run_dir = os.path.abspath(args.run_dir) if args.run_dir else None

    # ---------------------------------------------------------------- rounds
    def _ports(self, round_: int) -> tuple[int, int]:
        key = f"launch/{round_}/ports"
        if self.args.node_rank == 0:
            bind = self.master_addr if self.args.nnodes > 1 else "127.0.0.1"
            self.store.set(key, f"{_free_port(bind)},{_free_port(bind)}")
        shoal_port, torch_port = self.store.get(key, timeout=300).decode().split(",")
        return int(shoal_port), int(torch_port)

    def _env(self, local_rank: int, round_: int, shoal_port: int, torch_port: int) -> dict:
        a = self.args
        rank = a.node_rank * a.nproc + local_rank
        env = dict(os.environ)
        common = {"RANK": rank, "WORLD_SIZE": self.world, "LOCAL_RANK": local_rank,
                  "LOCAL_WORLD_SIZE": a.nproc, "NODE_RANK": a.node_rank,
                  "MASTER_ADDR": self.master_addr, "MASTER_PORT": torch_port}
        for k, v in common.items():
            env[k] = str(v)
            env["SHOAL_" + k] = str(v)
        # what Horovod, MPI-style (Open MPI, PMI) programs read
        place = {"RANK": rank, "SIZE": self.world, "LOCAL_RANK": local_rank, "LOCAL_SIZE": a.nproc}
        for k, v in place.items():
            env["HOROVOD_" + k] = env["OMPI_COMM_WORLD_" + k] = str(v)
        env.update({"HOROVOD_CROSS_RANK": str(a.node_rank), "HOROVOD_CROSS_SIZE": str(a.nnodes),
                    "HOROVOD_HOSTNAME": socket.gethostname(), "PMI_RANK": str(rank),
                    "PMI_SIZE": str(self.world)})
        env.update({"GROUP_RANK": str(a.node_rank), "SHOAL_MASTER_PORT": str(shoal_port),
                    "SHOAL_SECRET": self.secret, "SHOAL_RESTART_COUNT": str(round_),
                    "TORCHELASTIC_RESTART_COUNT": str(round_), "SHOAL_JOB_NAME": self.job,
                    "PYTHONUNBUFFERED": "1"})
        if self.run_dir:
            env["SHOAL_RUN_DIR"] = self.run_dir
        if a.nproc > 1:
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _start(self, round_: int) -> None:
        shoal_port, torch_port = self._ports(round_)
        cmd = command(self.args)
        self.procs = []
        for lr in range(self.args.nproc):
            env = self._env(lr, round_, shoal_port, torch_port)
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
            self.procs.append(p)
            prefix = b"" if self.args.no_prefix else f"[{env['RANK']}] ".encode()
            for pipe, dst in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
                t = _Prefixer(pipe, dst, prefix, self.out_lock)
                t.start()
                self.copiers.append(t)

    def _stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + _GRACE_S
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        deadline = time.monotonic() + 2     # the last lines of every process, then go on
        for t in self.copiers:
            t.join(max(0.0, deadline - time.monotonic()))
        self.copiers = []

    def _watch(self, round_: int) -> tuple[int, int | None]:
        """Wait for the round to end: (exit code, failing rank or None)."""
        failed_key = f"launch/{round_}/failed"
        done_key = f"launch/{round_}/done"
        counted = False
        while True:
            codes = [p.poll() for p in self.procs]
            for lr, c in enumerate(codes):
                if c not in (None, 0):
                    rank = self.args.node_rank * self.args.nproc + lr
                    if self.args.nnodes > 1:
                        self.store.compare_set(failed_key, None, f"{rank},{_code(c)}".encode())
                    return _code(c), rank
            if all(c == 0 for c in codes):
                if self.args.nnodes == 1:
                    return 0, None
                if not counted:
                    self.store.add(done_key, 1)
                    counted = True
                if self.store.add(done_key, 0) >= self.args.nnodes:
                    return 0, None
            if self.args.nnodes > 1 and self.store.check([failed_key]):
                rank, code = self.store.get(failed_key).decode().split(",")
                return int(code), int(rank)
            time.sleep(0.05)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        round_ = 0
        try:
            while True:
                self._start(round_)
                code, rank = self._watch(round_)
                self._stop_all()
                if rank is None:
                    return 0
                if self.stopping:
                    return code
                if round_ >= self.args.max_restarts:
                    _say(f"rank {rank} failed with exit code {code}; no restarts left "
                         f"(--max-restarts {self.args.max_restarts})")
                    return code
                round_ += 1
                _say(f"rank {rank} failed with exit code {code}; restarting all processes "
                     f"(restart {round_}/{self.args.max_restarts})")
        finally:
            self._stop_all()
            self._leave()
            self.store.close()

    def _leave(self) -> None:
        """Multi-node: node 0 hosts the store, so it closes it only after every node left."""
        if self.args.nnodes == 1:
            return
        try:
            self.store.add("launch/left", 1)
            if self.args.node_rank == 0:
                deadline = time.monotonic() + 30
                while (self.store.add("launch/left", 0) < self.args.nnodes
                       and time.monotonic() < deadline):
                    time.sleep(0.05)
        except Exception:  # noqa: BLE001, S110 - the host node is gone; nothing to wait for
            pass

    def _on_signal(self, signum, frame):
        self.stopping = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signum)
                except OSError:
                    pass


def _code(returncode: int) -> int:
    """A process's exit code; killed by signal N gives 128 + N, as shells report it."""
    return 128 - returncode if returncode < 0 else returncode


def _say(msg: str) -> None:
    sys.stderr.write(f"[shoal launch] {msg}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``shoal launch``; returns the exit code (the failing process's)."""
    args = _parser().parse_args(argv)
    if not args.module:
        if args.script.endswith(".py"):
            if not os.path.exists(args.script):
                _parser().error(f"script {args.script!r} does not exist")
        elif shutil.which(args.script) is None:
            _parser().error(f"command {args.script!r} not found (not an executable file, nor on "
                            "PATH); pass a .py script or a command such as 'python train.py'")
    plan = _elastic_plan(args)
    if plan is not None:
        from shoal._elastic_launch import ElasticLauncher, HostDiscovery
        lo, hi, slots = plan
        disc = (HostDiscovery(args.host_discovery_script, args.slots)
                if args.host_discovery_script else None)
        return ElasticLauncher(args, lo, hi, slots, disc).run()
    _apply_hosts(args)
    return Launcher(args).run()


if __name__ == "__main__":
    sys.exit(main())
