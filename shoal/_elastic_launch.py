"""``shoal launch``'s elastic form: keep between MIN and MAX processes, shrink and grow.

    shoal launch -n 2:4 train.py                          # 2 to 4 processes on this host
    shoal launch -np 2 --min-np 1 --max-np 4 --host-discovery-script ./hosts.sh python train.py
    shoal launch -n 2 --nnodes 1:3 --node-rank K --rdzv HOST:PORT train.py   # on each node
    shoal launch -np 2 --min-np 1 --host-discovery-script ./hosts.sh \\
        --node-rank K --rdzv HOST:PORT python train.py                        # on each host

The script keeps its state with ``shoal.train.elastic.State`` (or
``hvd.elastic.TorchState``) inside ``elastic.run``: a process that dies
leaves the gang, the survivors restore their last commit and go on; a new
process joins at the next commit and receives the state from a live rank.
The processes never restart together.

Each node's launcher runs its processes (one per slot: ``-n``'s MAX, the
per-node ``-n`` with ``--nnodes``, or the slots the discovery script gives
the hosts that name this machine, read again every second: a slot that
appears starts a process, one that goes away takes the newest process out
at the next commit). Node 0's launcher hosts the job's authenticated store
and owns the membership (shoal.collective.membership): it publishes each
generation, prints each change and records them in ``<run-dir>/membership.json``.
Processes write what happens to them under ``launch/elastic/`` in that store:

    wid                 counter of worker ids
    where/<wid>         pickle (node, pid), set by the process's launcher
    exit/<wid>          its exit code (128 + N when killed by signal N)
    removed/<wid>       its slot went away: it leaves at the next commit
    kill/<wid>          the owner found it hung (alive, not in the group): SIGKILL it
    beat/<node>         a counter each launcher bumps every second (a lost node stops it)
    finishing           a member's script returned: no more changes
    end                 b"<code>\\n<message>": every launcher stops its processes and exits
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

from shoal.collective.membership import Generations, describe_change
from shoal.launch import (_code, _GRACE_S, _local_names, _Prefixer, _say, command,
                          is_this_machine, parse_hosts)

_PREFIX = "launch/elastic"
_TICK_S = 0.05
_BEAT_S = 1.0
_NODE_LOST_S = 10.0
_DISCOVERY_S = 1.0
_RECHECK_S = 30.0      # a host found not to be this machine is asked again after this
_SETTLE_S = 1.0
_EXCESS_S = 1.0        # fewer slots than processes this long: one was not just dying
_LOST = 1000            # the exit "code" of a process whose node was lost


class HostDiscovery:
    """Runs ``--host-discovery-script`` every second; ``slots`` is this machine's share.

    The script prints one host a line (``host:slots``, ``host slots=N`` or
    ``host``, then ``default_slots``), as horovodrun's does. A host is this
    machine when it is one of its names or an address one of its interfaces
    holds (``is_this_machine``; hosts sharing a hostname, as containers do,
    are told apart by address). Lines naming other machines are served by
    ``shoal launch`` running there (shoal does not ssh); they are reported once.
    """

    def __init__(self, script: str, default_slots: int, names: set[str] | None = None):
        self.script, self.default_slots = script, default_slots
        self.names = _local_names() if names is None else names
        self.warned: set[str] = set()
        self.mine: dict[str, tuple[bool, float]] = {}     # host -> (this machine?, when asked)
        self.slots = self._read(first=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shoal-host-discovery",
                                        daemon=True)
        self._thread.start()

    def _read(self, first: bool = False) -> int:
        try:
            out = subprocess.run([self.script], capture_output=True, text=True, timeout=10,
                                 check=True).stdout
            hosts = []
            for line in out.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    hosts += (parse_hosts(line) if ":" in line or "slots=" in line
                              else [(line, self.default_slots)])
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            detail = (getattr(e, "stderr", "") or "").strip()
            msg = (f"--host-discovery-script {self.script!r} failed: {e} {detail}".strip()
                   + "; it must be an executable that prints one 'host:slots' a line")
            if first:
                raise SystemExit(f"shoal launch: {msg}") from None
            _say(msg + "; keeping the last hosts")
            return self.slots
        mine = 0
        for host, slots in hosts:
            if self._is_mine(host):
                mine += slots
            elif host not in self.warned:
                self.warned.add(host)
                _say(f"host {host} (from the discovery script) is not this machine; shoal "
                     "launch does not ssh: run the same shoal launch there with --rdzv and "
                     "--node-rank to use its slots")
        return mine

    def _is_mine(self, host: str) -> bool:
        """``is_this_machine``, remembered: a yes for good, a no for a while (a name that did
        not resolve may resolve later)."""
        known = self.mine.get(host)
        now = time.monotonic()
        if known is None or (not known[0] and now - known[1] > _RECHECK_S):
            known = (is_this_machine(host, self.names), now)
            self.mine[host] = known
        return known[0]

    def _loop(self) -> None:
        while not self._stop.wait(_DISCOVERY_S):
            self.slots = self._read()

    def close(self) -> None:
        self._stop.set()


class ElasticLauncher:
    """One node's launcher of an elastic job (node 0's also owns the membership)."""

    def __init__(self, args, min_np: int, max_np: int | None, slots: int | None,
                 discovery: HostDiscovery | None):
        from shoal.core.kv import TCPStore
        import secrets as _secrets
        self.args, self.min, self.max = args, min_np, max_np
        self.fixed_slots, self.discovery = slots, discovery
        self.node_rank = args.node_rank or 0
        self.node = f"{socket.gethostname()}:{self.node_rank}"
        self.timeout = args.collective_timeout
        # several nodes: --nnodes > 1, or --rdzv with a discovery script (horovodrun's form has
        # no node count: each host's launcher joins node 0's store)
        self.multinode = args.nnodes > 1 or bool(args.rdzv)
        if self.multinode:
            from shoal.launch import rendezvous_store
            self.store = rendezvous_store(args.rdzv, self.node_rank,
                                          "an elastic job on several nodes")
            secret = os.environ["SHOAL_SECRET"]   # rendezvous_store checked it is set
            host, port = args.rdzv.rsplit(":", 1)
            self.store_addr = (host, int(port))
        else:
            secret = os.environ.get("SHOAL_SECRET") or _secrets.token_hex(32)
            self.store = TCPStore("127.0.0.1", 0, secret=bytes.fromhex(secret), is_server=True)
            self.store_addr = ("127.0.0.1", self.store.port)
        self.secret = secret
        job_key = f"{_PREFIX}/job"          # every node's processes name the groups alike
        if self.node_rank == 0:
            self.store.set(job_key, os.environ.get("SHOAL_JOB_NAME")
                           or time.strftime("launch_%Y%m%d_%H%M%S"))
        self.job = self.store.get(job_key, timeout=300).decode()
        self.run_dir = os.path.abspath(args.run_dir) if args.run_dir else None
        self.procs: dict[int, subprocess.Popen] = {}
        self.local_rank: dict[int, int] = {}
        self.removing: dict[int, float] = {}      # wid -> when its slot went away
        self.was_member: set[int] = set()
        self.excess_since: float | None = None
        self.copiers: list[threading.Thread] = []     # copy each process's output to ours
        self.out_lock = threading.Lock()
        self.stopping = False
        self.next_beat = 0.0
        self.owner = _Owner(self) if self.node_rank == 0 else None

    # ------------------------------------------------------------ slots and processes
    def slots(self) -> int:
        n = self.discovery.slots if self.discovery is not None else self.fixed_slots
        return n if self.max is None else min(n, self.max)

    def _spawn(self) -> None:
        wid = self.store.add(f"{_PREFIX}/wid", 1) - 1
        used = set(self.local_rank.values())
        lr = next(i for i in range(len(used) + 1) if i not in used)
        env = dict(os.environ)
        env.update({"SHOAL_ELASTIC_PREFIX": f"{_PREFIX}/m", "SHOAL_ELASTIC_WID": str(wid),
                    "SHOAL_MASTER_ADDR": self.store_addr[0],
                    "SHOAL_MASTER_PORT": str(self.store_addr[1]),
                    "SHOAL_SECRET": self.secret, "SHOAL_JOB_NAME": self.job,
                    "SHOAL_LOCAL_RANK": str(lr), "LOCAL_RANK": str(lr),
                    "SHOAL_LAUNCHER_PID": str(os.getpid()),
                    "SHOAL_NODE_RANK": str(self.node_rank),
                    "SHOAL_COLLECTIVE_TIMEOUT": str(self.timeout),
                    "SHOAL_ELASTIC_JOIN_TIMEOUT": str(self.timeout + self.args.elastic_timeout),
                    "HOROVOD_HOSTNAME": socket.gethostname(), "PYTHONUNBUFFERED": "1"})
        for k in ("RANK", "WORLD_SIZE", "SHOAL_RANK", "SHOAL_WORLD_SIZE"):
            env.pop(k, None)        # a rank is given by the gang's generation, not here
        if self.run_dir:
            env["SHOAL_RUN_DIR"] = self.run_dir
        if self.slots() > 1:
            env.setdefault("OMP_NUM_THREADS", "1")
        # no preexec_fn: forking with this launcher's threads running can deadlock the child
        # before its exec (and Popen with it); the process arms its own parent-death signal
        p = subprocess.Popen(command(self.args), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        self.store.set(f"{_PREFIX}/where/{wid}", pickle.dumps((self.node, p.pid), protocol=5))
        self.procs[wid], self.local_rank[wid] = p, lr
        prefix = b"" if self.args.no_prefix else f"[w{wid}] ".encode()
        for pipe, dst in ((p.stdout, sys.stdout.buffer), (p.stderr, sys.stderr.buffer)):
            t = _Prefixer(pipe, dst, prefix, self.out_lock)
            t.start()
            self.copiers.append(t)

    def _local_tick(self) -> None:
        for wid, p in list(self.procs.items()):
            rc = p.poll()
            if rc is not None:
                self.store.set(f"{_PREFIX}/exit/{wid}", str(_code(rc)))
                del self.procs[wid], self.local_rank[wid]
                self.removing.pop(wid, None)
        for wid in list(self.procs):
            if self.store.check([f"{_PREFIX}/kill/{wid}"]):
                _signal(self.procs[wid], signal.SIGKILL)
        now = time.monotonic()
        members = self._members() if self.removing else []
        for wid, since in self.removing.items():
            if wid not in self.procs:
                continue
            if wid not in self.was_member and wid not in members:
                _signal(self.procs[wid], signal.SIGTERM)    # it holds no state of the gang
            elif now - since > self.timeout + self.args.elastic_timeout:
                _signal(self.procs[wid], signal.SIGKILL)    # it never left: make it
        if self.store.check([f"{_PREFIX}/finishing"]):
            return
        live = sorted(w for w in self.procs if w not in self.removing)
        target = self.slots()
        for _ in range(target - len(live)):
            self._spawn()
        if len(live) <= target:
            self.excess_since = None
        elif (self.excess_since or now) < now - _EXCESS_S:
            # the newest processes give their slots back: a member at the next commit
            # (it leaves gracefully), one still waiting to join at once (it holds nothing)
            self.excess_since = None
            members = self._members()
            for wid in live[target:]:
                if wid in members:
                    self.was_member.add(wid)
                self.store.set(f"{_PREFIX}/removed/{wid}", b"1")
                self.removing[wid] = now
        else:
            self.excess_since = self.excess_since or now

    def _members(self) -> list[int]:
        """The latest generation's members (empty before the first)."""
        key = f"{_PREFIX}/m/gen"
        if not self.store.check([key]):
            return []
        g = int(self.store.get(key, timeout=5))
        return pickle.loads(self.store.get(f"{key}/{g}", timeout=5))["members"]

    def _stop_all(self) -> None:
        for p in self.procs.values():
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + _GRACE_S
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL)
                p.wait()
        deadline = time.monotonic() + 2     # the last lines of every process, then return
        for t in self.copiers:
            t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ the job
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= self.next_beat:
                    self.store.add(f"{_PREFIX}/beat/{self.node_rank}", 1)
                    self.next_beat = now + _BEAT_S
                self._local_tick()
                if self.owner is not None:
                    self.owner.tick()
                if self.store.check([f"{_PREFIX}/end"]):
                    code, message = self.store.get(f"{_PREFIX}/end").decode().split("\n", 1)
                    if message:
                        _say(message)
                    return int(code)
                time.sleep(_TICK_S)
            return 128 + signal.SIGTERM
        except Exception as e:  # noqa: BLE001 - node 0 (the store) is gone: stop here
            if self.node_rank == 0:
                raise
            _say(f"lost the job's store at {self.args.rdzv} ({e}); stopping this node")
            return 1
        finally:
            self._stop_all()
            if self.discovery is not None:
                self.discovery.close()
            if self.owner is not None:
                self.owner.finish()
            self._leave()
            self.store.close()

    def _leave(self) -> None:
        """Node 0 hosts the store: it closes it once every node's launcher left (bounded)."""
        if not self.multinode:
            return
        try:
            self.store.add(f"{_PREFIX}/left", 1)
            if self.node_rank == 0:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    nodes = len(self.store.keys(f"{_PREFIX}/beat/"))
                    if self.store.add(f"{_PREFIX}/left", 0) >= nodes:
                        break
                    time.sleep(0.05)
        except Exception:  # noqa: BLE001, S110 - the store is gone; nothing to wait for
            pass

    def _on_signal(self, signum, frame):
        self.stopping = True
        for p in self.procs.values():
            _signal(p, signum)


class _Owner:
    """Node 0's side: decides each generation from what the launchers recorded."""

    def __init__(self, launcher: ElasticLauncher):
        self.l = launcher
        self.store = launcher.store
        self.gens = Generations(self.store, f"{_PREFIX}/m")
        self.t0 = time.monotonic()
        self.reached_min: float | None = None
        self.below_min_since: float | None = None
        self.counted: set[int] = set()
        self.failures: dict[int, int] = {}
        self.changes: list[dict] = []
        self.beats: dict[str, tuple[int, float]] = {}
        self.first_report: float | None = None
        self.ended = False
        self.finishing: float | None = None
        self.cache: dict[str, dict[int, bytes]] = {}

    def _end(self, code: int, message: str = "") -> None:
        if not self.ended:
            self.ended = True
            self.store.set(f"{_PREFIX}/end", f"{code}\n{message}".encode())

    def _ids(self, what: str) -> dict[int, bytes]:
        """{wid: value} of ``what``'s keys; each is written once, so each is read once."""
        pre = f"{_PREFIX}/{what}/"
        seen = self.cache.setdefault(what, {})
        for k in self.store.keys(pre):
            wid = int(k[len(pre):])
            if wid not in seen:
                seen[wid] = self.store.get(k, timeout=5)
        return seen

    def _lost_nodes(self) -> set[str]:
        """Nodes whose launcher stopped beating for _NODE_LOST_S (a lost machine)."""
        now = time.monotonic()
        lost = set()
        for k in self.store.keys(f"{_PREFIX}/beat/"):
            node = k.rsplit("/", 1)[1]
            n = self.store.add(k, 0)
            last = self.beats.get(node)
            if last is None or last[0] != n:
                self.beats[node] = (n, now)
            elif now - last[1] > _NODE_LOST_S:
                lost.add(node)
        return lost

    def tick(self) -> None:
        if self.ended:
            return
        l = self.l
        exits = {w: int(c) for w, c in self._ids("exit").items()}
        removed = set(self._ids("removed"))
        where = {w: pickle.loads(v) for w, v in self._ids("where").items()}
        lost_nodes = self._lost_nodes()
        for w, (node, _) in where.items():
            if w not in exits and node.rsplit(":", 1)[1] in lost_nodes:
                exits[w] = _LOST
                self.store.set(f"{_PREFIX}/exit/{w}", str(_LOST).encode())
        self._count_failures(exits, removed)
        if self.ended:
            return
        members = self.gens.members
        ready = {w for w in self.gens.ready()
                 if w in where and w not in exits and w not in removed}
        if self.gens.generation < 0:
            self._start(ready)
            return
        done = [w for w in members if exits.get(w) == 0 and w not in removed]
        if done or self.finishing is not None:
            if self.finishing is None:
                self.finishing = time.monotonic()
                self.store.set(f"{_PREFIX}/finishing", b"1")
            running = [w for w in members if w not in exits]
            # members of a generation that never started (joined as the others finished)
            # have nothing left to do; the rest get the collective timeout to finish
            never_started = self.gens.resumed(self.gens.generation) is None
            late = time.monotonic() - self.finishing > l.timeout
            if not running or never_started or late:
                bad = [exits[w] for w in members if exits.get(w, 0) != 0]
                msg = (f"the job finished; stopping {len(running)} worker(s) that had not"
                       if running else "")
                self._end(bad[0] if bad else 0,
                          f"the job finished; a worker exited with code {bad[0]}" if bad else msg)
            return
        self._drop_hung(members, exits)
        alive = [w for w in members if w not in exits and w not in removed]
        left = [w for w in members if w in exits or w in removed]
        room = (l.max if l.max is not None else len(alive) + len(ready)) - len(alive)
        joiners = sorted(w for w in ready if w not in members)[:max(room, 0)]
        if not left and not joiners:
            self.below_min_since = None
            self._collect_resumed()
            return
        new = alive + joiners
        if not alive and joiners:
            # every process holding the committed state is gone: new ones would start from
            # step 0 and silently lose the training so far
            self._end(1, f"every worker of generation {self.gens.generation} (holding the "
                         f"job's committed state) was lost at once ({len(left)} of them); the "
                         "job cannot continue from memory: start it again (a script that "
                         "reports checkpoints resumes from the latest one in --run-dir)")
            return
        if len(new) < l.min:
            now = time.monotonic()
            self.below_min_since = self.below_min_since or now
            if now - self.below_min_since > l.args.elastic_timeout:
                self._end(1, self._missing_text(len(new)))
            return
        self.below_min_since = None
        why = {}
        for w in left:
            why[w] = ("its slot was removed" if w in removed and w not in exits
                      else _exit_text(exits[w]))
        reason = ", ".join(filter(None, [f"{len(left)} left" if left else "",
                                         f"{len(joiners)} joined" if joiners else ""]))
        self._publish(new, where, left, joiners, reason, why)

    def _start(self, ready: set[int]) -> None:
        l = self.l
        now = time.monotonic()
        enough = l.max is not None and len(ready) >= l.max
        if len(ready) >= l.min:
            self.reached_min = self.reached_min or now
            enough = enough or now - self.reached_min >= _SETTLE_S
        elif now - self.t0 > l.args.elastic_timeout:
            self._end(1, self._missing_text(len(ready)))
            return
        if enough:
            members = sorted(ready)[:l.max] if l.max is not None else sorted(ready)
            where = {w: pickle.loads(v) for w, v in self._ids("where").items()}
            self._publish(members, where, [], members, "start", {})

    def _missing_text(self, n: int) -> str:
        src = (f"the discovery script {self.l.args.host_discovery_script!r} gives this host "
               f"{self.l.slots()} slots" if self.l.discovery is not None else
               f"this node runs {self.l.slots()}")
        return (f"only {n} of the minimum {self.l.min} workers were running for more than "
                f"{self.l.args.elastic_timeout:g}s (--elastic-timeout); {src}. Add hosts or "
                "slots, or lower the minimum (-n MIN:MAX, --min-np)")

    def _count_failures(self, exits: dict[int, int], removed: set[int]) -> None:
        """A script that exits on its own with the same error code three times stops the job
        (a death by signal, a lost node or a removed slot is what elastic jobs absorb)."""
        for w, code in exits.items():
            if w in self.counted:
                continue
            self.counted.add(w)
            if w in removed or code == 0 or code > 128:     # signals, lost nodes
                continue
            self.failures[code] = self.failures.get(code, 0) + 1
            if self.failures[code] >= self.l.args.max_repeated_failures:
                self._end(code, f"worker {w} exited with code {code}, the "
                                f"{self.failures[code]}th worker to exit with it "
                                f"(--max-repeated-failures {self.l.args.max_repeated_failures}); "
                                "stopping instead of starting another: see its traceback above")

    def _drop_hung(self, members: list[int], exits: dict[int, int]) -> None:
        """Members others reported broken that did not report it themselves within the
        collective timeout are stuck: their launcher kills them."""
        reports = self.gens.failures()
        if not reports:
            self.first_report = None
            return
        now = time.monotonic()
        self.first_report = self.first_report or now
        if now - self.first_report < self.l.timeout:
            return
        for w in members:
            if w not in reports and w not in exits:
                self.store.set(f"{_PREFIX}/kill/{w}", b"1")
        self.first_report = None

    def _publish(self, members, where, left, joined, reason, why) -> None:
        limit = self.l.args.reset_limit
        if self.gens.generation >= 0 and limit is not None and len(self.changes) > limit:
            self._end(1, f"the job changed membership more than --reset-limit {limit} times; "
                         f"the last change: {reason}")
            return
        old = self.gens.members
        g = self.gens.publish(members, where)
        self.changes.append({
            "generation": g, "time": time.time(), "reason": reason,
            "left": [{"worker": w, "rank": old.index(w), "why": why.get(w, "")}
                     for w in left if w in old],
            "joined": list(joined), "world_size": len(members),
            "previous_world_size": len(old), "resumed_step": None, "took_s": None,
            "_t0": time.monotonic()})

    def _collect_resumed(self) -> None:
        for ch in self.changes:
            if ch["resumed_step"] is not None:
                continue
            rec = self.gens.resumed(ch["generation"])
            if rec is None:
                continue
            ch["resumed_step"] = rec["step"]
            ch["took_s"] = round(time.monotonic() - ch.pop("_t0"), 3)
            _say(describe_change(ch))

    def finish(self) -> None:
        """Print and record the last changes, then clear the protocol's keys."""
        try:
            self._collect_resumed()
        except Exception:  # noqa: BLE001, S110 - the end of a job whose store may be closing
            pass
        if self.l.run_dir:
            os.makedirs(self.l.run_dir, exist_ok=True)
            with open(os.path.join(self.l.run_dir, "membership.json"), "w") as f:
                json.dump([{k: v for k, v in ch.items() if not k.startswith("_")}
                           for ch in self.changes], f, indent=1)


def _exit_text(code: int) -> str:
    if code == _LOST:
        return "its node was lost"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


def _signal(p: subprocess.Popen, signum: int) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signum)
        except OSError:
            pass
