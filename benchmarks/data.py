"""shoal.data vs pandas (and Ray Data when installed) on one ETL pipeline.

    read_parquet -> map_batches(z = 2x + y) -> groupby(key).aggregate(count, mean z, sum y)

on a few million rows in Parquet (several files, several row groups each),
then a streaming pass read_parquet -> map_batches -> iter_batches, and a
pass over many small blocks (range(rows) in ``--small-blocks`` blocks ->
map_batches(batch_size=65536), which joins them into full batches). Each
system runs ``--repeats`` times; the table shows the median and ratios.

Then a join: ``--join-left`` rows (key drawn from ``--join-right`` ids) inner-joined
with ``--join-right`` rows (each id once), in memory, the result fully materialized:
shoal.data vs pandas.merge vs Ray Data vs Spark local[cpus] (pyspark + Java 17).
Every system runs in its own process, in alternating rounds (each once per round,
``--join-rounds`` rounds, best kept), so they see the same load.

    .venv/bin/python benchmarks/data.py --rows 4000000 --cpus 2
    .venv/bin/python benchmarks/data.py --join-only --join-left 4000000 --join-right 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def make_data(folder: str, rows: int, files: int) -> None:
    rng = np.random.default_rng(0)
    per = rows // files
    for i in range(files):
        table = pa.table({"key": rng.integers(0, 1000, per), "x": rng.random(per),
                          "y": rng.normal(size=per)})
        pq.write_table(table, os.path.join(folder, f"part-{i:03d}.parquet"),
                       row_group_size=per // 4)


BATCH = 65536


def count_calls(batch):
    return {"rows": [len(batch["id"])], "sum": [int((batch["id"] % 7).sum())]}


def add_z(batch):
    return {"key": batch["key"], "y": batch["y"], "z": batch["x"] * 2 + batch["y"]}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run_pandas(folder: str, repeats: int, rows: int) -> dict:
    def etl():
        df = pd.read_parquet(folder)
        df["z"] = df["x"] * 2 + df["y"]
        return df.groupby("key").agg(count=("z", "size"), mean_z=("z", "mean"),
                                     sum_y=("y", "sum")).reset_index()

    def stream():
        df = pd.read_parquet(folder)
        z = df["x"].to_numpy() * 2 + df["y"].to_numpy()
        return sum(len(z[i:i + 4096]) for i in range(0, len(z), 4096))
    def small():
        ids = np.arange(rows)
        return sum(int((ids[i:i + BATCH] % 7).sum()) for i in range(0, rows, BATCH))
    t_etl, ref = timed(etl, repeats)
    t_stream, _ = timed(stream, repeats)
    t_small, _ = timed(small, repeats)
    return {"etl": t_etl, "stream": t_stream, "small": t_small, "result": ref}


def run_shoal(folder: str, repeats: int, cpus: int, small_blocks: int, rows: int) -> dict:
    import shoal
    import shoal.data as sd

    shoal.init(num_cpus=cpus)
    try:
        def etl():
            ds = sd.read_parquet(folder).map_batches(add_z)
            out = ds.groupby("key").aggregate(sd.Count(), sd.Mean("z"), sd.Sum("y"))
            return out.to_pandas()

        def stream():
            ds = sd.read_parquet(folder).map_batches(add_z)
            return sum(len(b["z"]) for b in ds.iter_batches(batch_size=4096))

        def small():
            ds = sd.range(rows, override_num_blocks=small_blocks).map_batches(
                count_calls, batch_size=BATCH)
            batches = list(ds.iter_batches(batch_size=None))
            assert sum(int(b["rows"].sum()) for b in batches) == rows
            return sum(b["rows"].size for b in batches)
        etl()  # warm the worker processes
        t_etl, out = timed(etl, repeats)
        t_stream, _ = timed(stream, repeats)
        t_small, calls = timed(small, repeats)
        return {"etl": t_etl, "stream": t_stream, "small": t_small, "calls": calls, "result": out}
    finally:
        shoal.shutdown()


def run_ray(folder: str, repeats: int, cpus: int, small_blocks: int, rows: int) -> dict | None:
    try:
        import ray
        import ray.data
        from ray.data.aggregate import Count, Mean, Sum
    except ImportError:
        return None
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False

        def etl():
            ds = ray.data.read_parquet(folder).map_batches(add_z, batch_format="numpy",
                                                           batch_size=None)
            # As many partitions as shoal uses, instead of Ray's default of 200.
            grouped = ds.groupby("key", num_partitions=8)
            return grouped.aggregate(Count(), Mean("z"), Sum("y")).to_pandas()

        def stream():
            ds = ray.data.read_parquet(folder).map_batches(add_z, batch_format="numpy",
                                                           batch_size=None)
            return sum(len(b["z"]) for b in ds.iter_batches(batch_size=4096))

        def small():
            ds = ray.data.range(rows, override_num_blocks=small_blocks).map_batches(
                count_calls, batch_format="numpy", batch_size=BATCH)
            batches = list(ds.iter_batches(batch_size=None))
            assert sum(int(b["rows"].sum()) for b in batches) == rows
            return sum(b["rows"].size for b in batches)
        etl()
        t_etl, out = timed(etl, repeats)
        t_stream, _ = timed(stream, repeats)
        t_small, calls = timed(small, repeats)
        return {"etl": t_etl, "stream": t_stream, "small": t_small, "calls": calls, "result": out}
    finally:
        ray.shutdown()


def check(ref: pd.DataFrame, out: pd.DataFrame, name: str) -> None:
    out = out.sort_values("key").reset_index(drop=True)
    assert out["key"].tolist() == ref["key"].tolist(), name
    assert out["count()"].tolist() == ref["count"].tolist(), name
    np.testing.assert_allclose(out["mean(z)"], ref["mean_z"], rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(out["sum(y)"], ref["sum_y"], rtol=1e-9, err_msg=name)


RUNNERS = {"pandas": lambda folder, a: run_pandas(folder, a.repeats, a.rows),
           "shoal.data": lambda folder, a: run_shoal(folder, a.repeats, a.cpus, a.small_blocks, a.rows),
           "Ray Data": lambda folder, a: run_ray(folder, a.repeats, a.cpus, a.small_blocks, a.rows)}


def run_isolated(name: str, folder: str, args) -> dict | None:
    """Run one system in a child process, so a crash of one cannot take down the table."""
    cmd = [sys.executable, __file__, "--only", name, "--folder", folder,
           "--repeats", str(args.repeats), "--cpus", str(args.cpus),
           "--small-blocks", str(args.small_blocks), "--rows", str(args.rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out = json.loads(lines[-1][len("RESULT "):])
    if out is None:
        return None
    out["result"] = pd.DataFrame(out["result"])
    return out


# ------------------------------------------------------------------ join ---

def join_frames(left_rows: int, right_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(1)
    left = pd.DataFrame({"key": rng.integers(0, right_rows, left_rows), "x": rng.random(left_rows)})
    right = pd.DataFrame({"key": rng.permutation(right_rows), "y": rng.random(right_rows)})
    return left, right


def _chunks(df: pd.DataFrame, k: int) -> list[pd.DataFrame]:
    bounds = np.linspace(0, len(df), k + 1).astype(int)
    return [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def join_system(name: str, left: pd.DataFrame, right: pd.DataFrame, cpus: int):
    """(setup, run, teardown) for one system; run() joins and returns (rows, sum of y)."""
    if name == "pandas":
        def run():
            out = left.merge(right, on="key", how="inner")
            return len(out), float(out["y"].sum())
        return run, lambda: None
    if name == "shoal.data":
        import shoal
        import shoal.data as sd

        shoal.init(num_cpus=cpus)
        blocks = 2 * cpus
        dl = sd.from_pandas(left, override_num_blocks=blocks).materialize()
        dr = sd.from_pandas(right, override_num_blocks=blocks).materialize()

        def run():
            out = dl.join(dr, on="key", how="inner").materialize()
            return out.count(), float(out.sum("y"))
        return run, shoal.shutdown
    if name == "Ray Data":
        import ray
        import ray.data

        temp_dir = tempfile.mkdtemp(prefix="ray-join-")  # not the shared /tmp/ray
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=temp_dir)
        ray.data.DataContext.get_current().enable_progress_bars = False
        dl = ray.data.from_pandas(_chunks(left, 2 * cpus)).materialize()
        dr = ray.data.from_pandas(_chunks(right, 2 * cpus)).materialize()

        def run():
            out = dl.join(dr, join_type="inner", num_partitions=2 * cpus,
                          on=("key",)).materialize()
            return out.count(), float(out.sum("y"))

        def teardown():
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
        return run, teardown
    if name == "Spark":
        from pyspark.sql import SparkSession, functions as F

        spark = (SparkSession.builder.master(f"local[{cpus}]").appName("shoal-bench-join")
                 .config("spark.sql.shuffle.partitions", str(2 * cpus))
                 .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                 .config("spark.driver.memory", "6g").config("spark.ui.enabled", "false")
                 .getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        sl = spark.createDataFrame(left).cache()
        sr = spark.createDataFrame(right).cache()
        sl.count(), sr.count()

        def run():
            out = sl.join(sr, on="key", how="inner").cache()
            rows, total = out.count(), out.agg(F.sum("y")).first()[0]
            out.unpersist()
            return rows, float(total)
        return run, spark.stop
    raise ValueError(name)


def join_child(name: str, args) -> None:
    """A child process: set up one system, then run the join once per line read on stdin."""
    left, right = join_frames(args.join_left, args.join_right)
    try:
        run, teardown = join_system(name, left, right, args.cpus)
    except ImportError as e:
        print(f"SKIP {e}", flush=True)
        return
    run()  # warm up
    print("READY", flush=True)
    try:
        for _ in sys.stdin:
            start = time.perf_counter()
            rows, total = run()
            print(f"TIME {time.perf_counter() - start} {rows} {total}", flush=True)
    finally:
        teardown()


def run_join(args) -> None:
    systems = ["shoal.data", "pandas"] + ([] if args.no_ray else ["Ray Data"]) + ["Spark"]
    procs = {}
    for name in systems:
        cmd = [sys.executable, __file__, "--join-child", name, "--cpus", str(args.cpus),
               "--join-left", str(args.join_left), "--join-right", str(args.join_right)]
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
        # one system set up at a time, so start-up does not compete with another's rounds
        line = procs[name].stdout.readline().strip()
        if line != "READY":
            print(f"{name}: {line or 'failed to start'}; left out", file=sys.stderr)
            procs.pop(name).kill()
    best, checks = {n: float("inf") for n in procs}, {}
    try:
        for _ in range(args.join_rounds):
            for name, proc in procs.items():
                proc.stdin.write("run\n")
                proc.stdin.flush()
                _, secs, rows, total = proc.stdout.readline().split()
                best[name] = min(best[name], float(secs))
                checks[name] = (int(rows), float(total))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=120)
    ref = checks["pandas"]
    for name, (rows, total) in checks.items():
        assert rows == ref[0] and abs(total - ref[1]) < 1e-6 * abs(ref[1]), (name, rows, total)
    load = os.getloadavg()
    print(f"\njoin: {args.join_left:,} x {args.join_right:,} rows (inner, {ref[0]:,} out), "
          f"{args.cpus} CPUs, best of {args.join_rounds} alternating rounds; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; ratio = time / shoal.data time")
    print(f"{'system':<12} {'join s':>9} {'ratio':>7}")
    for name, t in best.items():
        print(f"{name:<12} {t:>9.3f} {t / best['shoal.data']:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--small-blocks", type=int, default=400)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--join-left", type=int, default=4_000_000)
    parser.add_argument("--join-right", type=int, default=1_000_000)
    parser.add_argument("--join-rounds", type=int, default=3)
    parser.add_argument("--join-only", action="store_true", help="run only the join benchmark")
    parser.add_argument("--no-join", action="store_true", help="skip the join benchmark")
    parser.add_argument("--join-child", help=argparse.SUPPRESS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:  # child process: one system, results as one JSON line
        res = RUNNERS[args.only](args.folder, args)
        if res is not None:
            res["result"] = res["result"].to_dict("list")
        print("RESULT " + json.dumps(res))
        return

    if args.join_child:
        join_child(args.join_child, args)
        return
    if args.join_only:
        run_join(args)
        return

    folder = tempfile.mkdtemp(prefix="shoal-bench-data-")
    results = {}
    try:
        make_data(folder, args.rows, args.files)
        for name in ("pandas", "shoal.data") + (() if args.no_ray else ("Ray Data",)):
            res = run_isolated(name, folder, args)
            if res is not None:
                results[name] = res
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    ref = results["pandas"]["result"]
    for name in ("shoal.data", "Ray Data"):
        if name in results:
            check(ref, results[name]["result"], name)
    print(f"\n{args.rows:,} rows in {args.files} Parquet files, {args.cpus} CPUs, "
          f"median of {args.repeats}; ratio = time / shoal.data time (>1: shoal faster)")
    print(f"{'system':<12} {'read+map+groupby s':>19} {'ratio':>7} {'read+map+iter s':>16} "
          f"{'ratio':>7} {'Mrows/s (iter)':>15} {'small blocks s':>15} {'ratio':>7} {'calls':>6}")
    base = results["shoal.data"]
    for name, r in results.items():
        print(f"{name:<12} {r['etl']:>19.3f} {r['etl'] / base['etl']:>7.2f} "
              f"{r['stream']:>16.3f} {r['stream'] / base['stream']:>7.2f} "
              f"{args.rows / r['stream'] / 1e6:>15.1f} {r['small']:>15.3f} "
              f"{r['small'] / base['small']:>7.2f} {r.get('calls', '-'):>6}")
    print(f"small blocks: range({args.rows:,}) in {args.small_blocks} blocks -> "
          f"map_batches(batch_size={BATCH}); 'calls' = UDF calls (ceil(rows/batch) = "
          f"{-(-args.rows // BATCH)} is the least possible)")
    if not args.no_join:
        run_join(args)


if __name__ == "__main__":
    main()
