"""``pip install shoal`` is light: the base install is shoal.core and shoal.collective.

The fast tests guard the property in this environment (where everything is
installed): importing the base does not load a heavy library, and a library
whose dependency is missing says which extra brings it. The slow test
installs shoal from this checkout into a bare venv by pip's real
dependency resolution and runs tasks and a collective there.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from shoal.exceptions import MissingDependencyError, ShoalError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# top-level modules of the extras' packages; none may load with the base
HEAVY = ("pyarrow", "pandas", "scipy", "sklearn", "numba", "llvmlite", "torch", "ray", "polars",
         "starlette", "uvicorn", "fastapi", "gymnasium", "optuna", "matplotlib", "tensorboardX")
# modules of the base install; the later ones are checked once they exist
BASE = ("shoal", "shoal.core", "shoal.collective", "shoal.cli", "shoal.launch")
BASE_LATER = ("shoal.util", "shoal.util.queue", "shoal.util.multiprocessing", "shoal.state")
IMPORT_BASE = f"""
import importlib
for m in {BASE!r}:
    importlib.import_module(m)
for m in {BASE_LATER!r}:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as e:  # not written yet: only the module itself may be missing
        if not (e.name and e.name.startswith("shoal.") and (m + ".").startswith(e.name + ".")):
            raise
"""


def run(argv: list[str], *, env: dict | None = None, cwd: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``argv``; on timeout kill its whole process group (a cluster it
    started included) before failing."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv[:3]} timed out after {timeout}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_python(code: str, *, python: str = sys.executable, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (see ``run``)."""
    return run([python, "-c", textwrap.dedent(code)], **kwargs)


def checkout_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_base_imports_load_no_heavy_library():
    p = run_python(IMPORT_BASE + f"""
import json, sys
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
""", env=checkout_env())
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [], (
        "importing shoal's base modules (shoal.core, shoal.collective, the CLI...) loaded these; "
        "import them lazily (inside the function that needs them) or move the "
        "code behind the library that needs them")


def test_a_worker_running_a_task_loads_no_heavy_library():
    p = run_python(f"""
        import json, sys
        import shoal
        heavy = {HEAVY!r}

        @shoal.remote
        def loaded():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))

        shoal.init(num_cpus=1)
        try:
            print(json.dumps(shoal.get(loaded.remote(), timeout=60)))
        finally:
            shoal.shutdown()
    """, env=checkout_env())
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("statement, absent, extra, named", [
    ("import shoal.data", ["pyarrow"], "data", "pyarrow"),
    ("import shoal.ml", ["sklearn", "numba"], "ml", "scikit-learn, numba"),
    ("import shoal.train", ["torch"], "train", "torch"),
    ("from shoal import serve", ["starlette", "uvicorn"], "serve", "starlette, uvicorn"),
    # the package imports without torch (its tensorflow and keras faces need none); its
    # torch API raises on use
    ("from shoal.horovod import DistributedOptimizer", ["torch"], "train", "torch"),
    ("import shoal.rl", ["gymnasium"], "rl", "gymnasium"),
    ("import shoal; shoal.init(backend='ray')", ["ray"], "ray", "ray"),
    ("from shoal import collective; collective.init_group(0, 1, {}, backend='torch')",
     ["torch"], "train", "torch"),
])
def test_a_missing_dependency_names_the_extra(statement, absent, extra, named):
    # sys.modules[name] = None makes an installed package unimportable
    p = run_python(f"""
        import sys
        for name in {absent!r}:
            sys.modules[name] = None
        from shoal.exceptions import MissingDependencyError, ShoalError
        try:
            {statement}
        except MissingDependencyError as e:
            assert isinstance(e, ImportError) and isinstance(e, ShoalError)
            print(e)
        else:
            print("no error")
    """, env=checkout_env())
    assert p.returncode == 0, p.stderr
    message = p.stdout.strip()
    assert f"needs {named}," in message and f"pip install 'shoal[{extra}]'" in message, message


def test_missing_dependency_error_survives_pickling():
    with pytest.raises(MissingDependencyError) as info:
        MissingDependencyError.require("shoal.example", "example", "shoal_no_such_module_x")
    e = pickle.loads(pickle.dumps(info.value))
    assert isinstance(e, ImportError) and isinstance(e, ShoalError)
    assert e.missing == ("shoal_no_such_module_x",) and e.extra == "example"
    assert e.name == "shoal_no_such_module_x" and str(e) == str(info.value)
    assert "pip install 'shoal[example]'" in str(e)


def test_require_passes_when_every_module_is_there():
    MissingDependencyError.require("shoal.example", "example", "json", "numpy")


# ---------------------------------------------------------------- bare venv
VENV_SCRIPT = IMPORT_BASE + """
import importlib.util, json, sys
import numpy as np
import shoal
from shoal import collective
from shoal.exceptions import MissingDependencyError

out = {"absent": [m for m in HEAVY if importlib.util.find_spec(m) is None]}

@shoal.remote
def square(x):
    return x * x

@shoal.remote
class Rank:
    def allreduce(self, x):
        return self.comm.allreduce(np.asarray(x, dtype=np.float64), op="sum").tolist()

shoal.init(num_cpus=2)
try:
    out["task"] = shoal.get(square.remote(7), timeout=60)
    ranks = collective.create_actor_group(Rank, 2, name="install-test", timeout=60)
    out["allreduce"] = shoal.get([r.allreduce.remote([i + 1.0, 10.0 * i]) for i, r in enumerate(ranks)],
                                 timeout=60)
    collective.leave_actor_group(ranks)
finally:
    shoal.shutdown()

out["errors"] = {}
# shoal.horovod imports without torch (its TF faces need none); its torch API raises on use
for lib, attr in (("shoal.data", None), ("shoal.ml", None), ("shoal.train", None),
                  ("shoal.horovod", "DistributedOptimizer")):
    try:
        import importlib
        mod = importlib.import_module(lib)
        if attr:
            getattr(mod, attr)
        out["errors"][lib] = "imported"
    except MissingDependencyError as e:
        out["errors"][lib] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_base_install_in_a_bare_venv_runs_tasks_and_collectives(tmp_path):
    work = tmp_path / "shoal-install-test"
    try:
        # pip builds in the source tree: build a copy, not the checkout
        src = work / "src"
        src.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(os.path.join(ROOT, name), src)
        shutil.copytree(os.path.join(ROOT, "shoal"), src / "shoal",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        python = str(venv / "bin" / "python")
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("SHOAL_")}
        pip = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              str(src)], capture_output=True, text=True, env=env, timeout=240)
        assert pip.returncode == 0, f"pip install of the checkout failed:\n{pip.stderr[-3000:]}"

        listed = subprocess.run([python, "-m", "pip", "list", "--format=json",
                                 "--disable-pip-version-check"],
                                capture_output=True, text=True, env=env, timeout=60, check=True)
        installed = {d["name"].lower() for d in json.loads(listed.stdout)}
        assert "shoal" in installed
        assert installed <= {"shoal", "numpy", "cloudpickle", "psutil", "pip", "setuptools",
                             "wheel"}, f"the base install pulled {sorted(installed)}"

        p = run_python(f"HEAVY = {HEAVY!r}\n" + VENV_SCRIPT, python=python, env=env,
                       cwd=str(work), timeout=150)
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["absent"] == list(HEAVY)
        assert out["task"] == 49
        assert out["allreduce"] == [[3.0, 10.0], [3.0, 10.0]]
        assert "pip install 'shoal[data]'" in out["errors"]["shoal.data"]
        assert "scikit-learn" in out["errors"]["shoal.ml"]
        assert "pip install 'shoal[ml]'" in out["errors"]["shoal.ml"]
        assert "pip install 'shoal[train]'" in out["errors"]["shoal.train"]
        assert "pip install 'shoal[train]'" in out["errors"]["shoal.horovod"]

        cli = run([str(venv / "bin" / "shoal"), "info", "--num-cpus", "1", "--json"], env=env,
                  cwd=str(work))
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert json.loads(cli.stdout)["resources"]["CPU"] == 1.0
    finally:
        shutil.rmtree(work, ignore_errors=True)
