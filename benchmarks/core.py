"""shoal.core against Ray, side by side in one run, on this machine.

    python benchmarks/core.py [--quick] [--num-cpus 2]

Each system runs in its own fresh process (one after the other, so they do
not compete for the cores); the table gives both and the ratio. The
machine's own memcpy bandwidth is measured alongside as the limit for
put/get. Ratios matter, not absolute times: the machines are shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MB = 1 << 20


def _best(fn, repeat):
    """Best of ``repeat`` runs of ``fn`` (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_system(system: str, num_cpus: int, quick: bool) -> dict:
    import numpy as np
    if system == "shoal":
        import shoal as api
    else:
        import ray as api
    out = {}
    t = time.perf_counter()
    if system == "ray":
        api.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        api.init(num_cpus=num_cpus)
    out["init_s"] = time.perf_counter() - t

    @api.remote
    def noop():
        return None

    @api.remote
    def first(x):
        return float(x[0])

    @api.remote
    def child(i):
        return i

    @api.remote
    def parent(n):
        return sum(api.get([child.remote(i) for i in range(n)]))

    @api.remote
    class Actor:
        def ping(self):
            return None

    @api.remote
    class AsyncActor:
        async def ping(self):
            return None

    t = time.perf_counter()
    api.get(noop.remote())
    out["first_task_s"] = time.perf_counter() - t
    api.get([noop.remote() for _ in range(200)])  # workers up and warm

    n = 2000 if quick else 10000
    dt = _best(lambda: api.get([noop.remote() for _ in range(n)]), 2 if quick else 3)
    out["tasks_per_s"] = n / dt

    k = 20 if quick else 50
    dt = _best(lambda: api.get([parent.remote(20) for _ in range(k)]), 2)
    out["nested_tasks_per_s"] = k * 21 / dt

    a = Actor.remote()
    api.get(a.ping.remote())
    m = 500 if quick else 2000

    def sync_loop():
        for _ in range(m):
            api.get(a.ping.remote())
    out["actor_sync_calls_per_s"] = m / _best(sync_loop, 2)

    aa = AsyncActor.remote()
    api.get(aa.ping.remote())
    b = 2000 if quick else 10000
    out["actor_async_calls_per_s"] = b / _best(lambda: api.get([aa.ping.remote() for _ in range(b)]), 2)
    out["actor_batch_calls_per_s"] = b / _best(lambda: api.get([a.ping.remote() for _ in range(b)]), 2)

    arr = np.random.default_rng(0).random(100 * MB // 8)

    def put_get():
        r = api.put(arr)
        v = api.get(r)
        assert v.shape == arr.shape
        del v, r
    out["put_get_100mb_gbps"] = arr.nbytes / _best(put_get, 3 if quick else 5) / 1e9

    def task_arg():
        assert api.get(first.remote(arr)) == arr[0]
    out["task_100mb_arg_s"] = _best(task_arg, 3)
    api.shutdown()
    return out


def memcpy_gbps() -> float:
    import numpy as np
    src = np.random.default_rng(0).random(100 * MB // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first: this is the warm-copy limit
    return src.nbytes / _best(lambda: np.copyto(dst, src), 5) / 1e9


ROWS = [
    ("init (s)", "init_s", "lower"),
    ("first task after init (s)", "first_task_s", "lower"),
    ("no-op tasks/s (submit all, then get)", "tasks_per_s", "higher"),
    ("nested tasks/s (parent gets 20 children)", "nested_tasks_per_s", "higher"),
    ("actor calls/s (sync loop)", "actor_sync_calls_per_s", "higher"),
    ("actor calls/s (async actor, batch)", "actor_async_calls_per_s", "higher"),
    ("actor calls/s (sync actor, batch)", "actor_batch_calls_per_s", "higher"),
    ("put+get 100 MB (GB/s)", "put_get_100mb_gbps", "higher"),
    ("task with a 100 MB argument (s)", "task_100mb_arg_s", "lower"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.system:
        print(json.dumps(run_system(args.system, args.num_cpus, args.quick)))
        return
    results = {}
    for system in ("shoal", "ray"):
        cmd = [sys.executable, __file__, "--system", system, "--num-cpus", str(args.num_cpus)]
        if args.quick:
            cmd.append("--quick")
        env = dict(os.environ, RAY_DEDUP_LOGS="0")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            print(f"{system} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}", file=sys.stderr)
            if system == "shoal":
                sys.exit(1)
            results[system] = {}
            continue
        results[system] = json.loads(lines[-1])
    mc = memcpy_gbps()
    print(f"\nshoal.core vs Ray, {args.num_cpus} CPUs; numpy memcpy (warm) {mc:.1f} GB/s\n")
    print(f"| {'measure':44s} | {'shoal':>10s} | {'Ray':>10s} | {'shoal vs Ray':>12s} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 12}|{'-' * 14}|")
    for label, key, better in ROWS:
        s = results["shoal"].get(key)
        r = results["ray"].get(key)
        if s is None:
            continue
        ratio = "" if r is None else (f"{r / s:.1f}x faster" if better == "lower" else f"{s / r:.1f}x")
        fmt = (lambda v: f"{v:,.0f}") if v_is_rate(key) else (lambda v: f"{v:.3f}")
        print(f"| {label:44s} | {fmt(s):>10s} | {fmt(r) if r is not None else 'n/a':>10s} | {ratio:>12s} |")
    s = results["shoal"]["put_get_100mb_gbps"]
    print(f"\nput+get 100 MB reaches {s / mc:.0%} of the machine's warm memcpy bandwidth.")


def v_is_rate(key: str) -> bool:
    return key.endswith("_per_s")


if __name__ == "__main__":
    main()
