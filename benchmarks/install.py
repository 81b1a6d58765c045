"""What ``pip install shoal`` costs: disk added to a bare venv and ``import shoal`` time.

    python benchmarks/install.py [--extras "" ml all] [--ray] [--repeat 7]

For each variant a fresh venv is made with this Python, then shoal is
installed from this checkout (non-editable, a copy built in a temp dir, so
the checkout stays clean) with the given extra, by pip's real dependency
resolution. The table gives the size site-packages grew by (apparent bytes
of every file, .pyc included as pip writes them; 1 MB = 10^6 bytes), the
largest distributions, and the import time: the best of ``--repeat`` fresh
``python -X importtime -c "import shoal"`` runs (the cumulative time of the
``shoal`` module, interpreter start-up excluded). ``--ray`` measures
``pip install ray`` (Ray core, no extras) the same way as the anchor.
Downloads come from the package index (or pip's cache), so the first run
takes minutes; sizes do not depend on the load, times do (quote ratios).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

MB = 1e6
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_bytes(path: str) -> int:
    """Apparent size of every regular file under ``path`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if not os.path.islink(os.path.join(dirpath, f)):
                total += st.st_size
    return total


def site_packages(venv: str) -> str:
    out = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def copy_checkout(dest: str) -> str:
    """A copy of what the wheel is built from (pip builds in the source tree)."""
    src = os.path.join(dest, "shoal-src")
    os.makedirs(src)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "shoal"), os.path.join(src, "shoal"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def by_distribution(sp: str, before: set[str]) -> list[tuple[str, int]]:
    """(top-level entry of site-packages, bytes) for the entries the install added."""
    sizes: dict[str, int] = {}
    for entry in os.listdir(sp):
        if entry in before or entry == "__pycache__":
            continue
        path = os.path.join(sp, entry)
        # fold "numpy.libs", "numpy-2.1.dist-info" into "numpy"
        key = re.split(r"[.-]", entry)[0].lower()
        sizes[key] = sizes.get(key, 0) + (tree_bytes(path) if os.path.isdir(path)
                                          else os.lstat(path).st_size)
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def import_time(python: str, module: str) -> float:
    """Cumulative ``-X importtime`` of ``module`` in one fresh process (s)."""
    out = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, timeout=120, check=True)
    for line in out.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1e6
    raise RuntimeError(f"no importtime line for {module}:\n{out.stderr[-2000:]}")


def install(label: str, requirement: list[str], module: str, workdir: str) -> dict:
    """A fresh venv with ``requirement`` pip-installed; the bytes and parts it added."""
    venv = os.path.join(workdir, f"venv-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    sp = site_packages(venv)
    before_entries = set(os.listdir(sp))
    bare = tree_bytes(sp)
    t = time.perf_counter()
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirement],
                   check=True)
    install_s = time.perf_counter() - t
    return {"label": label, "python": python, "module": module, "install_s": install_s,
            "added": tree_bytes(sp) - bare, "top": by_distribution(sp, before_entries)[:5],
            "import_s": float("inf")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extras", nargs="*", default=["", "ml", "all"],
                    help='extras to measure, "" for the base install (default: "" ml all)')
    ap.add_argument("--ray", action="store_true", help="also measure `pip install ray` (the anchor)")
    ap.add_argument("--repeat", type=int, default=7, help="import timings per variant (best is kept)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with the venvs")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="shoal-bench-install-")
    rows = []
    try:
        src = copy_checkout(workdir)
        for extra in args.extras:
            label = f"shoal[{extra}]" if extra else "shoal"
            rows.append(install(label, [f"{src}[{extra}]" if extra else src], "shoal", workdir))
            print(f"  installed {label}", file=sys.stderr)
        if args.ray:
            rows.append(install("ray", ["ray"], "ray", workdir))
            print("  installed ray", file=sys.stderr)
        # alternating rounds, so a burst of load on the shared machine hits every variant
        for _ in range(args.repeat):
            for r in rows:
                r["import_s"] = min(r["import_s"], import_time(r["python"], r["module"]))
    finally:
        if args.keep:
            print(f"venvs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    anchor = next((r for r in rows if r["label"] == "ray"), None)
    print(f"\nInstall size and import time (Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d')}; 1 MB = 10^6 bytes)\n")
    head = "| install | MB added to a bare venv | largest parts (MB) | import time (ms) |"
    if anchor:
        head += " size vs Ray core | import vs Ray core |"
    print(head)
    print("|---|---:|---|---:|" + ("---:|---:|" if anchor else ""))
    for r in rows:
        parts = ", ".join(f"{name} {size / MB:.0f}" for name, size in r["top"])
        name = "`pip install ray` (Ray core, the anchor)" if r is anchor else f"`pip install {r['label']}`"
        line = (f"| {name} | {r['added'] / MB:.0f} | {parts} | "
                f"{r['import_s'] * 1e3:.0f} (`import {r['module']}`) |")
        if anchor:
            line += (f" {r['added'] / anchor['added']:.2f}x |"
                     f" {r['import_s'] / anchor['import_s']:.2f}x |")
        print(line)


if __name__ == "__main__":
    main()
