"""Every program in examples/ runs to the end, as a user would start it.

Each runs in its own process (its own embedded cluster), in a temporary directory. Heavy
examples take a size argument of their own; SIZES gives the small one the test passes. A new
example runs with no arguments until it is listed here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
# the argument that keeps each heavy example small; the example itself stays a plain program
SIZES = {
    "ml_pipeline.py": ["20000"],                       # rows (default 3,000,000)
    "train_digits.py": ["--epochs", "2"],              # epochs (default 12)
    "serve_digits.py": ["--epochs", "1", "--port", "0", "--requests", "16"],
}
# what each example prints when it reaches its end
EXPECT = {
    "tour.py": "done: no process or shared memory left behind",
    "ml_pipeline.py": "RandomForestClassifier",
    "train_digits.py": "final test accuracy",
    "serve_digits.py": "predictions over HTTP",
}


def run_example(path: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.Popen([sys.executable, str(path), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the example's workers too
        out, err = proc.communicate()
        pytest.fail(f"examples/{path.name} did not finish in {TIMEOUT_S} s\n{err[-4000:]}", pytrace=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(name, tmp_path):
    args = list(SIZES.get(name, []))
    if name == "train_digits.py":
        args += ["--storage", str(tmp_path / "results")]
    p = run_example(ROOT / "examples" / name, args, tmp_path)
    assert p.returncode == 0, f"examples/{name} {' '.join(args)} exited {p.returncode}:\n{p.stderr[-6000:]}"
    assert EXPECT.get(name, "") in p.stdout, f"examples/{name} printed:\n{p.stdout[-3000:]}"
