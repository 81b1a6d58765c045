"""What observability costs: task and actor rates with the dashboard on and off.

    python benchmarks/dashboard.py [--rounds 4] [--pairs 8] [--with-rec] [--quick]

"off" is a cluster that records nothing (``SHOAL_TASK_EVENTS=0``, no
dashboard, no state snapshot: ``SHOAL_STATE_SNAPSHOT_S=0``); "rec" records
every task and writes the snapshot ``shoal status`` reads (the defaults),
without a dashboard;
"on" records every task (the default ring), serves the
dashboard and Prometheus metrics, and a browser-like client in another
process polls the tasks page's API and /metrics every 2 s. Each run is a
fresh process; rounds alternate the order of off and on and the best of
each is kept (with --with-rec, "rec" runs in each round too). Then
(--pairs) one process starts and stops the dashboard between windows, so
its own cost is measured without the spread between processes. The
dashboard's memory is the driver's RSS growth from starting it and serving
the polls.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

POLLER = r"""
import sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
paths = ["/api/summary", "/api/history", "/api/tasks?limit=300", "/api/actors?limit=300", "/metrics"]
while True:
    for p in paths:
        req = urllib.request.Request(url + p, headers={"Authorization": "Bearer " + token})
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except OSError:
            sys.exit(0)
    time.sleep(2.0)
"""


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _cpu() -> float:
    return time.process_time()   # this process: the driver, the dashboard's thread included


def _measure(out, key, n, fn, repeat):
    """Best rate of ``fn`` (n calls) and the least driver CPU per call, in microseconds:
    the CPU the driver spends is what the dashboard competes for, and it moves less
    with the machine's other load than the wall clock does."""
    rates, cpus = [], []
    for _ in range(repeat):
        c, t = _cpu(), time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t))
        cpus.append((_cpu() - c) / n * 1e6)
    out[key] = max(rates)
    out[key.replace("_per_s", "_driver_cpu_us")] = min(cpus)


def _workload(quick: bool) -> list:
    """(key, calls, fn) of the three measurements, on this process's cluster: no-op
    tasks, a synchronous loop of actor calls, a batch of them. Windows of ~0.5 s: at
    5,000 calls (~0.13 s) one round's best still moved by +-9 % between runs, more than
    the cost being measured."""
    import shoal

    @shoal.remote
    def noop():
        return None

    @shoal.remote
    class Actor:
        def ping(self):
            return None
    a = Actor.remote()
    shoal.get([noop.remote() for _ in range(500)] + [a.ping.remote() for _ in range(500)])
    n, m, b = (2000, 500, 2000) if quick else (20000, 4000, 30000)

    def sync_loop():
        for _ in range(m):
            shoal.get(a.ping.remote())
    return [("tasks_per_s", n, lambda: shoal.get([noop.remote() for _ in range(n)])),
            ("actor_sync_calls_per_s", m, sync_loop),
            ("actor_batch_calls_per_s", b, lambda: shoal.get([a.ping.remote() for _ in range(b)]))]


def run_mode(mode: str, quick: bool) -> dict:
    import psutil

    import shoal
    me = psutil.Process()
    rss0 = me.memory_info().rss
    shoal.init(num_cpus=2, log_to_driver=False, dashboard=(mode == "on"))   # "rec": no dashboard
    poller = None
    out = {}
    if mode == "on":
        import shoal.dashboard
        d = shoal.dashboard._dashboard
        poller = subprocess.Popen([sys.executable, "-c", POLLER, f"http://127.0.0.1:{d.port}",
                                   d.token])

    import gc
    gc_s, gc_t0 = [0.0], [0.0]

    def on_gc(phase, info):   # the collector's time: what a ring of tracked entries costs
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_s[0] += time.perf_counter() - gc_t0[0]
    try:
        work = _workload(quick)
        gc.callbacks.append(on_gc)
        for key, count, fn in work:
            _measure(out, key, count, fn, 5)
        gc.callbacks.remove(on_gc)
        out["gc_ms"] = gc_s[0] * 1e3
        out["driver_rss_mb"] = me.memory_info().rss / 1e6
        out["rss_growth_mb"] = (me.memory_info().rss - rss0) / 1e6
    finally:
        if poller is not None:
            poller.kill()
            poller.wait()
        shoal.shutdown()
    return out


def run_paired(pairs: int, quick: bool) -> dict:
    """The dashboard's own cost with the process held constant: one cluster (recording
    on, as by default) measures windows with the dashboard stopped and started in turn,
    the order alternating pair by pair. Separate processes differ by more than the
    cost (memory layout, which core): rec / off moved +-4 to 9 % between runs."""
    import statistics

    import shoal
    import shoal.dashboard
    shoal.init(num_cpus=2, log_to_driver=False)
    work = _workload(quick)
    got: dict = {"off": [], "on": []}
    try:
        for i in range(pairs):
            for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
                poller = None
                if mode == "on":
                    d = shoal.dashboard.start(quiet=True)
                    poller = subprocess.Popen([sys.executable, "-c", POLLER,
                                               f"http://127.0.0.1:{d.port}", d.token])
                    time.sleep(0.5)         # serving and sampling before the windows
                out: dict = {}
                try:
                    for key, count, fn in work:
                        _measure(out, key, count, fn, 2)
                finally:
                    if poller is not None:
                        poller.kill()
                        poller.wait()
                        shoal.dashboard.stop()
                got[mode].append(out)
    finally:
        shoal.shutdown()
    res = {}
    for key, _, _ in work:
        res[key] = statistics.median(on[key] / off[key] for on, off in zip(got["on"], got["off"]))
        cpu = key.replace("_per_s", "_driver_cpu_us")
        res[cpu] = statistics.median(on[cpu] / off[cpu] for on, off in zip(got["on"], got["off"]))
    return res


def record_cost_us() -> float:
    """What recording adds to one task in the driver, timed alone (no noise from
    the other processes): the submit's timestamp and the end's record."""
    from time import time as now

    from shoal.core._events import TaskEvents
    from shoal.core._serialization import serialize
    from shoal.core._spec import TaskSpec
    ev = TaskEvents(10_000)
    spec = TaskSpec(1, 1, "noop", None, (), (2,), {"CPU": 1.0})
    descs = [serialize(None, None)]
    n = 200_000

    def run():
        for _ in range(n):
            spec.t_submit = now()
            ev.record(spec, descs, 1, 1e-5)
    return _best(run, 5) / n * 1e6


ROWS = [("no-op tasks/s (submit all, then get)", "tasks_per_s"),
        ("actor calls/s (sync loop)", "actor_sync_calls_per_s"),
        ("actor calls/s (batch)", "actor_batch_calls_per_s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--with-rec", action="store_true",
                    help="also run recording without the dashboard, to tell the two costs apart")
    ap.add_argument("--pairs", type=int, default=8,
                    help="pairs of off/on windows in one process (0: skip that part)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "paired":
        print(json.dumps(run_paired(args.pairs, args.quick)))
        return
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.quick)))
        return
    modes = ("off", "rec", "on") if args.with_rec else ("off", "on")
    best: dict = {m: {} for m in modes}
    mem: dict = {m: [] for m in modes}
    gcs: dict = {m: [] for m in modes}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            env = dict(os.environ)
            if mode == "off":
                env["SHOAL_TASK_EVENTS"] = "0"
                env["SHOAL_STATE_SNAPSHOT_S"] = "0"
            else:
                env.pop("SHOAL_TASK_EVENTS", None)
                env.pop("SHOAL_STATE_SNAPSHOT_S", None)
            cmd = [sys.executable, __file__, "--mode", mode] + (["--quick"] if args.quick else [])
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                sys.exit(f"{mode} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            res = json.loads(lines[-1])
            for k, v in res.items():
                if k.endswith("_per_s"):
                    best[mode][k] = max(best[mode].get(k, 0.0), v)
                elif k.endswith("_cpu_us"):
                    best[mode][k] = min(best[mode].get(k, float("inf")), v)
            mem[mode].append(res["rss_growth_mb"])
            gcs[mode].append(res["gc_ms"])
    load_after = os.getloadavg()
    print(f"\nobservability on vs off, 2 CPUs, best of {args.rounds} alternating rounds; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    _table(best, modes, [(label, key, "{:>10,.0f}") for label, key in ROWS])
    print("\ndriver CPU per task or call (us, least of all runs; a ratio above 1 is the cost)\n")
    _table(best, modes, [(label, key.replace("_per_s", "_driver_cpu_us"), "{:>10.1f}")
                         for label, key in ROWS])
    print("\ngarbage collection during a run's measurements (ms, least of the runs): "
          + ", ".join(f"{m} {min(gcs[m]):.1f}" for m in modes))
    cost = record_cost_us()
    per_task = 1e6 / best["off"]["tasks_per_s"]
    print(f"\nrecording alone: {cost:.2f} us per task, {cost / per_task:.1%} of a no-op task's "
          f"{per_task:.0f} us here (timed in isolation, best of 5 x 200,000)")
    if args.pairs:
        # as shipped, and with the heap freeze off: starting the dashboard freezes the
        # heap, which makes the driver's own full collections cheaper, so the first
        # alone can hide what serving and sampling cost
        got = {}
        for freeze in ("1", "0"):
            cmd = [sys.executable, __file__, "--mode", "paired", "--pairs", str(args.pairs)]
            p = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True,
                               text=True, timeout=900,
                               env=dict(os.environ, SHOAL_DASHBOARD_GC_FREEZE=freeze))
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                sys.exit(f"paired failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            got[freeze] = json.loads(lines[-1])
        print(f"\nthe dashboard started and stopped in one process, {args.pairs} pairs of "
              "windows, order alternating: median of the pairs' on / off (recording on in "
              "both), as shipped and with SHOAL_DASHBOARD_GC_FREEZE=0\n")
        print(f"| {'measure':40s} | {'rate':>10s} | {'driver CPU':>10s} | "
              f"{'rate, no freeze':>15s} | {'CPU, no freeze':>15s} |")
        print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 17}|{'-' * 17}|")
        for label, key in ROWS:
            cpu = key.replace("_per_s", "_driver_cpu_us")
            print(f"| {label:40s} | {got['1'][key]:>10.3f} | {got['1'][cpu]:>10.3f} | "
                  f"{got['0'][key]:>15.3f} | {got['0'][cpu]:>15.3f} |")
    grow = max(mem["on"]) - min(mem["off"])
    print(f"\ndashboard memory: the driver grows {grow:.1f} MB more with the dashboard on "
          f"(max {max(mem['on']):.1f} MB vs {min(mem['off']):.1f} MB growth off)")


def _table(best, modes, rows) -> None:
    others = [m for m in modes if m != "off"]
    print(f"| {'measure':40s} | " + " | ".join(f"{m:>10s}" for m in modes) + " | "
          + " | ".join(f"{m + ' / off':>10s}" for m in others) + " |")
    print(f"|{'-' * 42}|" + "|".join("-" * 12 for _ in modes + tuple(others)) + "|")
    for label, key, fmt in rows:
        vals = [best[m][key] for m in modes]
        print(f"| {label:40s} | " + " | ".join(fmt.format(v) for v in vals) + " | "
              + " | ".join(f"{best[m][key] / best['off'][key]:>10.3f}" for m in others) + " |")


if __name__ == "__main__":
    main()
