"""shoal.serve against Ray Serve and a bare Starlette/uvicorn app, under wrk.

    python benchmarks/serve.py [--quick] [--duration 5] [--rounds 3] [--systems shoal,ray,bare]

Each system serves the same echo: POST a small JSON document, get it back
(2 replicas for shoal.serve and Ray Serve, default max_ongoing_requests 5
per replica in both; the bare app is one uvicorn process with no replicas,
the machine's limit for this stack). Each runs in its own process on a
loopback port; the load comes from ``wrk`` (Debian package ``wrk``, a Lua
script for the POST body) at concurrency 8 and 64, in alternating rounds
(every system once per round, the best round kept), so a burst of load
from other work on the machine hits all of them alike. Prints requests/s,
p50, p99 and errors per system and the ratios; ``--json`` writes them too.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

LUA = """wrk.method = "POST"
wrk.body = '{"user": 42, "text": "hello shoal", "values": [1, 2, 3]}'
wrk.headers["Content-Type"] = "application/json"
"""


# ----------------------------------------------------------------- the servers
def serve_bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request):
        return JSONResponse(await request.json())
    app = Starlette(routes=[Route("/", echo, methods=["POST"])])
    print("READY", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                http="httptools")


def serve_shoal(port: int, replicas: int) -> None:
    import shoal
    from shoal import serve

    @serve.deployment(num_replicas=replicas)
    class Echo:
        async def __call__(self, request):
            return await request.json()

    shoal.init(num_cpus=2)
    serve.run(Echo.bind(), port=port)
    print("READY", flush=True)
    _wait_for_stop()
    serve.shutdown()
    shoal.shutdown()


def serve_ray(port: int, replicas: int) -> None:
    import ray
    from ray import serve

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 0})
    class Echo:
        async def __call__(self, request):
            return await request.json()

    tmp = tempfile.mkdtemp(prefix="rsb-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Echo.bind(), route_prefix="/")
    print("READY", flush=True)
    _wait_for_stop()
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _wait_for_stop() -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop and sys.stdin.readline():
        pass


# ----------------------------------------------------------------- the load
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(system: str, replicas: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--server", system, "--port", str(port),
                             "--replicas", str(replicas)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=_root()))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            break
        if not line and proc.poll() is not None:
            raise RuntimeError(f"the {system} server exited with code {proc.returncode}")
    url = f"http://127.0.0.1:{port}/"
    while time.monotonic() < deadline:   # the port answers a request
        if wrk(url, 1, 1, script=None, check=True):
            return proc, url
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"the {system} server did not answer on {url}")


def stop(proc) -> None:
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_script_path = None


def wrk(url: str, conns: int, seconds: float, script=LUA, check=False):
    """Run wrk; returns {"rps", "p50_ms", "p99_ms", "errors", "requests"}."""
    global _script_path
    if _script_path is None:
        fd, _script_path = tempfile.mkstemp(suffix=".lua", prefix="shoal-serve-bench-")
        with os.fdopen(fd, "w") as f:
            f.write(LUA)
    cmd = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--latency",
           "--timeout", "10s", "-s", _script_path, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    if check:
        return "Requests/sec" in out and "Non-2xx" not in out and "Socket errors" not in out
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"), "errors": errors,
            "requests": reqs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="8,64")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--systems", default="shoal,ray,bare")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        {"bare": lambda: serve_bare(args.port),
         "shoal": lambda: serve_shoal(args.port, args.replicas),
         "ray": lambda: serve_ray(args.port, args.replicas)}[args.server]()
        return 0
    if shutil.which("wrk") is None:
        print("benchmarks/serve.py needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.rounds = 3.0, 2
    systems = [s for s in args.systems.split(",") if s]
    if "ray" in systems:
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            print("Ray Serve is not installed (pip install 'ray[serve]'); leaving it out",
                  file=sys.stderr)
            systems.remove("ray")
    concs = [int(c) for c in args.concurrency.split(",")]
    procs = {}
    best: dict = {}
    try:
        for s in systems:
            procs[s] = start(s, args.replicas)
        for s in systems:        # warm up: connections, code paths
            wrk(procs[s][1], 8, 1)
        for rnd in range(args.rounds):
            for c in concs:
                for s in systems:
                    r = wrk(procs[s][1], c, args.duration)
                    key = (s, c)
                    if key not in best or r["rps"] > best[key]["rps"]:
                        best[key] = r
                    print(f"round {rnd + 1} c={c:3d} {s:6s} {r['rps']:9.0f} req/s "
                          f"p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f} ms "
                          f"errors {r['errors']}", flush=True)
    finally:
        for proc, _ in procs.values():
            stop(proc)
        if _script_path:
            os.unlink(_script_path)
    load = os.getloadavg()
    print(f"\nEcho JSON, {args.replicas} replicas, wrk {args.duration:.0f} s x {args.rounds} "
          f"alternating rounds, best kept; load average after: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'c':>3} {'system':8s} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'vs ray':>7} {'vs bare':>8}")
    for c in concs:
        for s in systems:
            r = best[(s, c)]
            vs = {o: (r["rps"] / best[(o, c)]["rps"] if (o, c) in best else float("nan"))
                  for o in ("ray", "bare")}
            print(f"{c:3d} {s:8s} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{r['errors']:7d} {vs['ray']:6.1f}x {vs['bare']:7.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": load, "results": [
                dict(system=s, concurrency=c, **best[(s, c)]) for (s, c) in best]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
