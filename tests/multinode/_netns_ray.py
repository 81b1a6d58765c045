"""A real two-node Ray cluster: two network namespaces joined by a veth pair.

The head node runs ``ray start --head`` in one namespace, the worker node
``ray start --address`` in the other, both with Ray's token authentication
on and a temp dir of their own. Each node has its own network stack, so
shoal sees two hosts (TCP between them, shared memory only inside one).
Drivers are child processes run in the head namespace: ``cluster.run(code)``
executes ``code`` after ``shoal.init(address=...)`` and returns what it
passed to ``emit``.

Every process of the cluster lives in one of the two namespaces, so tearing
down kills exactly the processes ``ip netns pids`` lists there (never a
``ray stop``, which would end every Ray on the machine). Needs root and
iproute2, else the tests skip saying why.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
START_TIMEOUT = 240


def _sh(*cmd, timeout=60):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


class RayCluster:
    """Two namespaces (head, worker), a veth pair between them, Ray on each."""

    # 3 CPUs a node: a test needing 2 a node still fits when a finished driver's worker
    # is slow to release its CPU (seen on CI, never here; see wait_for_free_cpus)
    def __init__(self, num_cpus: int = 3):
        tag = os.getpid() % 100000
        self.num_cpus = num_cpus
        self.head_ns, self.worker_ns = f"shoal-mn{tag}-h", f"shoal-mn{tag}-w"
        self.veth = (f"mn{tag}a", f"mn{tag}b")
        net = 1 + tag % 250
        self.head_ip, self.worker_ip = f"10.213.{net}.1", f"10.213.{net}.2"
        self.address = f"{self.head_ip}:6379"
        self.tmp = tempfile.mkdtemp(prefix=f"shoal-mn{tag}-")
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SHOAL_"))}
        self.env.update(PYTHONPATH=ROOT, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                        RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        self._scripts = 0

    # ------------------------------------------------------------ network
    def make_network(self) -> None:
        self.remove_network()
        a, b = self.veth
        _sh("ip", "netns", "add", self.head_ns)
        _sh("ip", "netns", "add", self.worker_ns)
        _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        _sh("ip", "link", "set", a, "netns", self.head_ns)
        _sh("ip", "link", "set", b, "netns", self.worker_ns)
        for ns, dev, ip in ((self.head_ns, a, self.head_ip), (self.worker_ns, b, self.worker_ip)):
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def remove_network(self) -> None:
        for ns in (self.head_ns, self.worker_ns):
            self.kill_namespace(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    @staticmethod
    def kill_namespace(ns: str) -> None:
        """SIGKILL every process in ``ns`` (ours: the namespace is ours) until none is left."""
        for _ in range(50):
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids = [int(p) for p in out.stdout.split()] if out.returncode == 0 else []
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    # ------------------------------------------------------------ ray
    def _ray_start(self, ns: str, *args) -> None:
        cmd = ["ip", "netns", "exec", ns, RAY, "start", "--disable-usage-stats",
               f"--num-cpus={self.num_cpus}", "--object-store-memory=400000000", *args]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, env=self.env,
                           timeout=START_TIMEOUT)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{e.stdout[-3000:]}\n{e.stderr[-3000:]}"
                               ) from None

    def start_head(self) -> None:
        self._ray_start(self.head_ns, "--head", f"--node-ip-address={self.head_ip}", "--port=6379",
                        "--include-dashboard=false", '--resources={"head": 100}',
                        f"--temp-dir={self.tmp}/head")

    def start_worker(self) -> None:
        self._ray_start(self.worker_ns, f"--address={self.address}",
                        f"--node-ip-address={self.worker_ip}", '--resources={"worker": 100}',
                        f"--temp-dir={self.tmp}/worker")
        self.wait_for_nodes(2)

    def stop_worker(self) -> None:
        """The worker node dies: every process of its namespace is killed."""
        self.kill_namespace(self.worker_ns)

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        got = self.run("emit(len([x for x in shoal.nodes() if x['Alive']]))", timeout=timeout)
        deadline = time.monotonic() + timeout
        while got < n and time.monotonic() < deadline:
            time.sleep(1)
            got = self.run("emit(len([x for x in shoal.nodes() if x['Alive']]))", timeout=timeout)
        if got < n:
            raise RuntimeError(f"the cluster has {got} alive nodes after {timeout}s, expected {n}")

    # ------------------------------------------------------------ drivers
    def popen(self, code: str, env: dict | None = None) -> subprocess.Popen:
        """Start a driver in the head namespace running ``code`` after ``shoal.init``."""
        self._scripts += 1
        path = os.path.join(self.tmp, f"driver{self._scripts}.py")
        prelude = textwrap.dedent(f"""\
            import json, os, sys
            import shoal
            def emit(obj):
                sys.stdout.write("SHOAL-RESULT " + json.dumps(obj) + "\\n")
                sys.stdout.flush()
            shoal.init(address={self.address!r})
            """)
        with open(path, "w") as f:
            f.write(prelude + textwrap.dedent(code) + "\nshoal.shutdown()\n")
        return subprocess.Popen(["ip", "netns", "exec", self.head_ns, sys.executable, path],
                                cwd=self.tmp, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, code: str, timeout: float = 180, env: dict | None = None):
        """Run ``code`` in a driver; returns the value it passed to ``emit`` (JSON)."""
        p = self.popen(code, env)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            raise AssertionError(f"the driver ran past {timeout}s:\n{out[-6000:]}\n"
                                 f"ray status then:\n{self.ray_status()}") from None
        results = [ln[len("SHOAL-RESULT "):] for ln in out.splitlines()
                   if ln.startswith("SHOAL-RESULT ")]
        if p.returncode != 0 or not results:
            raise AssertionError(f"the driver exited with {p.returncode}:\n{out[-6000:]}")
        return json.loads(results[-1])

    def ray_status(self) -> str:
        """``ray status`` of the cluster (resources in use, pending demands), for failure messages."""
        try:
            p = subprocess.run(["ip", "netns", "exec", self.head_ns, RAY, "status",
                                f"--address={self.address}"], env=self.env, capture_output=True,
                               text=True, timeout=30)
            return (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            return "(ray status did not answer within 30 s)"

    def wait_for_free_cpus(self, n: int, timeout: float = 90) -> None:
        """Wait until ``n`` CPUs are free: a previous driver's actors are released asynchronously."""
        free = self.run(f"""
            import time
            deadline = time.monotonic() + {timeout}
            while (shoal.available_resources().get("CPU", 0) < {n}
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            emit(shoal.available_resources().get("CPU", 0))
            """, timeout=timeout + 60)
        if free < n:
            raise AssertionError(f"{free} CPUs free after {timeout}s, expected {n}:\n"
                                 f"{self.ray_status()}\nprocesses:\n{self.processes()}")

    def processes(self) -> str:
        """Every process of both namespaces with its command line (Ray names a busy worker's
        task or actor there), for failure messages."""
        lines = []
        for ns in (self.head_ns, self.worker_ns):
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in out.stdout.split():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                lines.append(f"{ns} {pid} {cmd[:200]}")
        return "\n".join(lines)

    def run_program(self, path: str, timeout: float = 240, env: dict | None = None) -> str:
        """Run the program at ``path`` as a Ray job would (RAY_ADDRESS set); returns its output."""
        p = subprocess.run(["ip", "netns", "exec", self.head_ns, sys.executable, path],
                           cwd=self.tmp, env={**self.env, "RAY_ADDRESS": self.address, **(env or {})},
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise AssertionError(f"{path} exited with {p.returncode}:\n{p.stdout[-3000:]}\n"
                                 f"{p.stderr[-3000:]}")
        return p.stdout

    def close(self) -> None:
        self.remove_network()
        shutil.rmtree(self.tmp, ignore_errors=True)


def namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2 (ip)"
    if not os.path.exists(RAY):
        return f"the ray command is not installed next to {sys.executable}"
    return None
