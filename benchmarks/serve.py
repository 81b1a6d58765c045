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
p50, p99, errors and CPU microseconds per request (server processes, wrk)
per system and the ratios; ``--json`` writes them too.

The digits part serves the CNN of examples/train_digits.py with and
without ``@serve.batch``, with the same code and settings for both systems
(one torch thread per replica; --max-batch-size, --batch-wait-s,
--digits-max-ongoing), and prints where a request's CPU goes and the
batched/unbatched ratio the CPU allows.
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

ECHO_BODY = '{"user": 42, "text": "hello shoal", "values": [1, 2, 3]}'
DIGIT_BODY = '{"image": [%s]}' % ", ".join(["[" + ", ".join(["0.5"] * 8) + "]"] * 8)
LUA = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""


# Settings of the digits workload (--max-batch-size, --batch-wait-s, --digits-max-ongoing),
# the same for shoal.serve and Ray Serve, batched and not
BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0, "max_ongoing_requests": 64}


def app_of(serve, workload: str, replicas: int, **actor_options):
    """The same deployment code for shoal.serve and Ray Serve (their APIs match); the
    digits workload is two applications, {"batch": ..., "single": ...}."""
    if workload == "echo":
        @serve.deployment(num_replicas=replicas, **actor_options)
        class Echo:
            async def __call__(self, request):
                return await request.json()
        return Echo.bind()
    sys.path.insert(0, os.path.join(_root(), "examples"))
    import numpy as np
    import torch
    from train_digits import DigitsCNN

    def make(batched: bool):
        @serve.deployment(num_replicas=replicas,
                          max_ongoing_requests=BATCH["max_ongoing_requests"],
                          **actor_options)
        class Digits:
            def __init__(self):
                torch.set_num_threads(1)
                torch.manual_seed(0)
                self.model = DigitsCNN().eval()

            def forward(self, images):
                with torch.no_grad():
                    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
                    return self.model(x.reshape(-1, 1, 8, 8)).argmax(1).tolist()

            @serve.batch(max_batch_size=BATCH["max_batch_size"],
                         batch_wait_timeout_s=BATCH["batch_wait_timeout_s"])
            async def batch(self, images):
                return self.forward(images)

            async def __call__(self, request):
                image = (await request.json())["image"]
                if batched:
                    return {"digit": await self.batch(image)}
                return {"digit": self.forward([image])[0]}
        return Digits.bind()
    # Ray Serve's one proxy holds both, at /batch and /single; shoal.serve runs a server
    # for each ("digits-batch", "digits-single"): its replicas answer HTTP themselves,
    # and a connection landing on the other application's replica would cost a hop
    variants = {"digits": ("batch", "single"), "digits-batch": ("batch",),
                "digits-single": ("single",)}[workload]
    return {v: make(v == "batch") for v in variants}


# ----------------------------------------------------------------- the servers
def serve_bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request):
        return JSONResponse(await request.json())
    app = Starlette(routes=[Route("/", echo, methods=["POST"])])
    import threading
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False,
                                           http="httptools"))

    def stop_on_eof():            # stdin closed (the benchmark ended or died): stop
        while sys.stdin.readline():
            pass
        server.should_exit = True
    threading.Thread(target=stop_on_eof, daemon=True).start()
    print("READY", flush=True)
    server.run()


def serve_shoal(port: int, replicas: int, workload: str) -> None:
    import cloudpickle

    import shoal
    from shoal import serve

    shoal.init(num_cpus=2)
    app = app_of(serve, workload, replicas)
    if workload.startswith("digits"):
        import train_digits
        cloudpickle.register_pickle_by_value(train_digits)
    if isinstance(app, dict):
        for name, a in app.items():
            serve.run(a, name=name, route_prefix=f"/{name}", port=port)
    else:
        serve.run(app, port=port)
    print("READY", flush=True)
    _wait_for_stop()
    serve.shutdown()
    shoal.shutdown()


def serve_soak(port: int, replicas: int, kill_every: float) -> None:
    """shoal.serve echo whose replicas are SIGKILLed every ``kill_every`` s; prints RSS."""
    import random
    import threading

    import psutil

    import shoal
    from shoal import serve

    @serve.deployment(num_replicas=replicas)
    class Echo:
        @serve.idempotent         # in-flight requests of a killed replica are retried
        async def __call__(self, request):
            return await request.json()

        def pid(self):
            return os.getpid()

    shoal.init(num_cpus=2)
    h = serve.run(Echo.bind(), port=port)

    def rss():
        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        out = {}
        for p in procs:
            try:
                out[p.pid] = p.memory_info().rss
            except psutil.Error:
                pass
        return out
    stop = threading.Event()
    kills = []

    def killer():
        while not stop.wait(kill_every):
            pids = {h.pid.remote().result() for _ in range(8)}
            victim = random.choice(sorted(pids))
            os.kill(victim, signal.SIGKILL)
            kills.append(victim)
    print("READY", flush=True)
    before = rss()
    threading.Thread(target=killer, daemon=True).start()
    _wait_for_stop()
    stop.set()
    after = rss()
    common = [p for p in before if p in after]
    print("SOAK " + json.dumps({
        "kills": len(kills),
        "rss_mb_before": {str(p): round(before[p] / 2**20, 1) for p in common},
        "rss_mb_after": {str(p): round(after[p] / 2**20, 1) for p in common},
        "new_processes_rss_mb": {str(p): round(after[p] / 2**20, 1) for p in after
                                 if p not in before}}), flush=True)
    serve.shutdown()
    shoal.shutdown()


def serve_ray(port: int, replicas: int, workload: str) -> None:
    import ray
    from ray import serve

    tmp = tempfile.mkdtemp(prefix="rsb-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.join(_root(), "examples")}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = app_of(serve, workload, replicas, ray_actor_options={"num_cpus": 0})
    if isinstance(app, dict):
        for name, a in app.items():
            serve.run(a, name=name, route_prefix=f"/{name}")
    else:
        serve.run(app, route_prefix="/")
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


def start(system: str, replicas: int, workload: str = "echo"):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=_root())
    if system == "shoal-proxy":   # every request through the proxy: two hops
        env["SHOAL_SERVE_HTTP_IN_REPLICAS"] = "0"
    # A session of its own, as wrk's: with the kernel's autogroup scheduling (on by
    # default) the processes of one session share one slice of the CPU, so a server in
    # wrk's session hands off to it without waiting for its group's turn. Under load
    # from other work that made the bare server look ~10x faster than it is when it
    # runs apart from wrk, as shoal's and Ray's worker processes always do.
    proc = subprocess.Popen([sys.executable, __file__, "--server", system, "--port", str(port),
                             "--replicas", str(replicas), "--workload", workload,
                             "--max-batch-size", str(BATCH["max_batch_size"]),
                             "--batch-wait-s", str(BATCH["batch_wait_timeout_s"]),
                             "--digits-max-ongoing", str(BATCH["max_ongoing_requests"])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            break
        if not line and proc.poll() is not None:
            raise RuntimeError(f"the {system} server exited with code {proc.returncode}")
    url = f"http://127.0.0.1:{port}/"
    probe = url if workload == "echo" else url + ("single" if workload == "digits-single"
                                                  else "batch")
    while time.monotonic() < deadline:   # the port answers a request
        if wrk(probe, 1, 1, body=ECHO_BODY if workload == "echo" else DIGIT_BODY, check=True):
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


def wrk(url: str, conns: int, seconds: float, body: str = ECHO_BODY, check=False):
    """Run wrk; returns {"rps", "p50_ms", "p99_ms", "errors", "requests"}."""
    fd, script = tempfile.mkstemp(suffix=".lua", prefix="shoal-serve-bench-")
    with os.fdopen(fd, "w") as f:
        f.write(LUA % body)
    cmd = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--latency",
           "--timeout", "10s", "-s", script, url]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                             start_new_session=True).stdout
    finally:
        os.unlink(script)
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


def tree_cpu(proc) -> float:
    """CPU seconds (user + system) of a server process and all its descendants now."""
    import psutil
    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(servers: dict, concs: list, rounds: int, duration: float, body: str,
            procs: dict | None = None) -> dict:
    """Alternating rounds over ``servers`` ({label: url}); the best round of each kept.
    With ``procs`` ({label: server process}) each result also has the CPU microseconds
    per request spent by the server's processes and by wrk."""
    import resource
    best: dict = {}
    for label, url in servers.items():        # warm up: connections, code paths
        wrk(url, 8, 1, body)
    for rnd in range(rounds):
        for c in concs:
            for label, url in servers.items():
                proc = (procs or {}).get(label)
                s0 = tree_cpu(proc) if proc is not None else 0.0
                w0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = wrk(url, c, duration, body)
                if proc is not None and r["requests"]:
                    w1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    wrk_s = w1.ru_utime + w1.ru_stime - w0.ru_utime - w0.ru_stime
                    r["server_cpu_us"] = 1e6 * (tree_cpu(proc) - s0) / r["requests"]
                    r["wrk_cpu_us"] = 1e6 * wrk_s / r["requests"]
                key = (label, c)
                if key not in best or r["rps"] > best[key]["rps"]:
                    best[key] = r
                cpu = (f" CPU/req server {r['server_cpu_us']:.0f} us wrk "
                       f"{r['wrk_cpu_us']:.0f} us" if "server_cpu_us" in r else "")
                print(f"round {rnd + 1} c={c:3d} {label:14s} {r['rps']:9.0f} req/s "
                      f"p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f} ms "
                      f"errors {r['errors']}{cpu}", flush=True)
    return best


def table(title: str, best: dict, labels: list, concs: list, anchors: list) -> None:
    load = os.getloadavg()
    print(f"\n{title}; load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'c':>3} {'system':14s} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          + " ".join(f"{'vs ' + a:>14s}" for a in anchors) + "   CPU us/req server, wrk")
    for c in concs:
        for s in labels:
            r = best[(s, c)]
            ratios = " ".join(f"{r['rps'] / best[(a, c)]['rps']:13.2f}x" if (a, c) in best
                              else f"{'-':>14s}" for a in anchors)
            cpu = (f"   {r['server_cpu_us']:.0f}, {r['wrk_cpu_us']:.0f}"
                   if "server_cpu_us" in r else "")
            print(f"{c:3d} {s:14s} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{r['errors']:7d} {ratios}{cpu}")


def forward_us(batch: int, repeat: int = 300) -> float:
    """Microseconds per image of the digits CNN's forward (as the deployments run it:
    one torch thread, from a list of 8x8 images), best of 5."""
    sys.path.insert(0, os.path.join(_root(), "examples"))
    import numpy as np
    import torch
    from train_digits import DigitsCNN
    torch.set_num_threads(1)
    model = DigitsCNN().eval()
    images = [[[0.5] * 8] * 8] * batch
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            with torch.no_grad():
                x = torch.from_numpy(np.asarray(images, dtype=np.float32))
                model(x.reshape(-1, 1, 8, 8)).argmax(1).tolist()
        best = min(best, (time.perf_counter() - t0) / repeat / batch)
    return best * 1e6


def digits_breakdown(best: dict, labels: list) -> None:
    """Where a request's CPU goes, batched and not, and the ratio the machine allows.

    On a machine whose cores are all busy (the server and wrk share them), req/s is
    at most cores / (CPU per request of server + wrk), so batched over unbatched is
    at most (server + wrk unbatched) / (server + wrk batched)."""
    one, many = forward_us(1), forward_us(BATCH["max_batch_size"], 50)
    print(f"\nForward pass, 1 torch thread: {one:.0f} us for one image, {many:.1f} us per "
          f"image in a batch of {BATCH['max_batch_size']}")
    for s in sorted({lab.rsplit("-", 1)[0] for lab in labels}):
        b, u = best.get((f"{s}-batch", 64)), best.get((f"{s}-single", 64))
        if not b or not u or "server_cpu_us" not in b or "server_cpu_us" not in u:
            continue
        cb, cu = b["server_cpu_us"] + b["wrk_cpu_us"], u["server_cpu_us"] + u["wrk_cpu_us"]
        rest_u, rest_b = u["server_cpu_us"] - one, b["server_cpu_us"] - many
        print(f"{s}: CPU per request unbatched {u['server_cpu_us']:.0f} us server + "
              f"{u['wrk_cpu_us']:.0f} us wrk, batched {b['server_cpu_us']:.0f} + "
              f"{b['wrk_cpu_us']:.0f} us; besides the forward pass the server spends "
              f"{rest_u:.0f} us (unbatched) and {rest_b:.0f} us (batched) per request. "
              f"CPU-bound ratio {cu / cb:.2f}x, measured {b['rps'] / u['rps']:.2f}x; 3x "
              f"would need the batched request under {cu / 3:.0f} us of CPU in all")


def soak(args) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--server", "soak", "--port", str(port),
                             "--replicas", str(args.replicas), "--kill-every",
                             str(args.kill_every)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=_root()), start_new_session=True)
    try:
        while not proc.stdout.readline().startswith("READY"):
            if proc.poll() is not None:
                raise RuntimeError("the soak server exited")
        r = wrk(f"http://127.0.0.1:{port}/", 32, args.soak_s)
        proc.stdin.close()
        report = {}
        for line in proc.stdout:
            if line.startswith("SOAK "):
                report = json.loads(line[5:])
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report.update(r)
    load = os.getloadavg()
    print(f"\nSoak: {args.soak_s:.0f} s at c=32, a replica SIGKILLed every "
          f"{args.kill_every:.0f} s ({report.get('kills')} kills); load average after: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  {r['requests']} requests, {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
          f"p99 {r['p99_ms']:.2f} ms, failed {r['errors']}")
    print(f"  RSS MB before -> after, processes alive throughout: "
          + ", ".join(f"{report['rss_mb_before'][p]}->{report['rss_mb_after'][p]}"
                      for p in report.get("rss_mb_before", {})))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s, echo only")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="8,64")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--systems", default="shoal,ray,bare")
    ap.add_argument("--parts", default="echo,digits,soak",
                    help="echo JSON; the digits CNN with and without @serve.batch; a soak at "
                         "c=32 with a replica killed every --kill-every s")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="echo", help=argparse.SUPPRESS)
    ap.add_argument("--soak-s", type=float, default=60.0, help="length of the soak part")
    ap.add_argument("--kill-every", type=float, default=15.0,
                    help="soak: seconds between SIGKILLs of a replica")
    ap.add_argument("--max-batch-size", type=int, default=BATCH["max_batch_size"],
                    help="digits: @serve.batch max_batch_size")
    ap.add_argument("--batch-wait-s", type=float, default=BATCH["batch_wait_timeout_s"],
                    help="digits: @serve.batch batch_wait_timeout_s")
    ap.add_argument("--digits-max-ongoing", type=int, default=BATCH["max_ongoing_requests"],
                    help="digits: max_ongoing_requests per replica, batched and not")
    args = ap.parse_args()
    BATCH.update(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s,
                 max_ongoing_requests=args.digits_max_ongoing)
    if args.server:
        {"bare": lambda: serve_bare(args.port),
         "shoal": lambda: serve_shoal(args.port, args.replicas, args.workload),
         "shoal-proxy": lambda: serve_shoal(args.port, args.replicas, args.workload),
         "ray": lambda: serve_ray(args.port, args.replicas, args.workload),
         "soak": lambda: serve_soak(args.port, args.replicas, args.kill_every)}[args.server]()
        return 0
    if shutil.which("wrk") is None:
        print("benchmarks/serve.py needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.rounds, args.parts = 3.0, 2, "echo"
    systems = [s for s in args.systems.split(",") if s]
    if "ray" in systems:
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            print("Ray Serve is not installed (pip install 'ray[serve]'); leaving it out",
                  file=sys.stderr)
            systems.remove("ray")
    concs = [int(c) for c in args.concurrency.split(",")]
    results = {}
    if "echo" in args.parts:
        procs = {}
        try:
            for s in systems:
                procs[s] = start(s, args.replicas)
            best = measure({s: procs[s][1] for s in systems}, concs, args.rounds,
                           args.duration, ECHO_BODY, {s: procs[s][0] for s in systems})
        finally:
            for proc, _ in procs.values():
                stop(proc)
        table(f"Echo JSON, {args.replicas} replicas, wrk {args.duration:.0f} s x {args.rounds} "
              "alternating rounds, best kept", best, systems, concs,
              [a for a in ("ray", "bare") if a in systems])
        results["echo"] = best
    if "digits" in args.parts:
        digit_systems = [s for s in systems if s != "bare"]
        labels = [f"{s}-{w}" for s in digit_systems for w in ("batch", "single")]
        procs, urls = {}, {}
        try:
            for s in digit_systems:
                if s == "ray":
                    procs[s] = start(s, args.replicas, "digits")
                    urls.update({f"ray-{w}": procs[s][1] + w for w in ("batch", "single")})
                    continue
                for w in ("batch", "single"):
                    procs[f"{s}-{w}"] = start(s, args.replicas, f"digits-{w}")
                    urls[f"{s}-{w}"] = procs[f"{s}-{w}"][1] + w
            best = measure(urls, [64], args.rounds, args.duration, DIGIT_BODY,
                           {label: procs[label if label in procs else label.split("-")[0]][0]
                            for label in urls})
        finally:
            for proc, _ in procs.values():
                stop(proc)
        table(f"Digits CNN, {args.replicas} replicas, with and without @serve.batch "
              f"(max_batch_size {BATCH['max_batch_size']}, batch_wait_timeout_s "
              f"{BATCH['batch_wait_timeout_s']}, max_ongoing_requests "
              f"{BATCH['max_ongoing_requests']}), wrk c=64", best, labels, [64],
              [a for a in ("shoal-single", "ray-batch") if a in labels])
        digits_breakdown(best, labels)
        results["digits"] = best
    if "soak" in args.parts:
        results["soak"] = soak(args)
    if args.json:
        with open(args.json, "w") as f:
            soak_report = results.pop("soak", None)
            json.dump({"load_average": os.getloadavg(), "soak": soak_report, "results": {
                part: [dict(system=s, concurrency=c, **r) for (s, c), r in best.items()]
                for part, best in results.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
