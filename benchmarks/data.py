"""shoal.data vs pandas (and Ray Data when installed) on one ETL pipeline.

    read_parquet -> map_batches(z = 2x + y) -> groupby(key).aggregate(count, mean z, sum y)

on a few million rows in Parquet (several files, several row groups each),
then a streaming pass read_parquet -> map_batches -> iter_batches, and a
pass over many small blocks (range(rows) in ``--small-blocks`` blocks ->
map_batches(batch_size=65536), which joins them into full batches). Each
system runs ``--repeats`` times; the table shows the median and ratios.

    .venv/bin/python benchmarks/data.py --rows 4000000 --cpus 2
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--small-blocks", type=int, default=400)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:  # child process: one system, results as one JSON line
        res = RUNNERS[args.only](args.folder, args)
        if res is not None:
            res["result"] = res["result"].to_dict("list")
        print("RESULT " + json.dumps(res))
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


if __name__ == "__main__":
    main()
