"""The documentation site builds with ``mkdocs build --strict``: a broken API
reference, a dead link or a page missing from the nav fails the suite."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mkdocs_strict_build(tmp_path):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    assert not missing, f"{missing} not installed: pip install -e '.[docs]' (included in [dev])"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for page in ("index.html", "reference/core/index.html", "reference/ml/index.html",
                 "guide/train/index.html", "migration/from-ray/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


# The API reference is generated from docstrings, so every public name needs one.
# Packages whose classes' public methods are documented too.
WITH_METHODS = {"shoal.collective", "shoal.train", "shoal.train.parallel", "shoal.data"}
PACKAGES = ["shoal", "shoal.core", "shoal.collective", "shoal.train", "shoal.horovod",
            "shoal.data", "shoal.ml", "shoal.util", "shoal.util.queue",
            "shoal.util.multiprocessing", "shoal.dag", "shoal.train.parallel", "shoal.serve",
            "shoal.rl", "shoal.tune", "shoal.state", "shoal.dashboard"]


def _undocumented(package: str) -> list[str]:
    import importlib
    import inspect
    mod = importlib.import_module(package)
    out = []
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.ismodule(obj) or not getattr(obj, "__module__", "shoal").startswith("shoal"):
            continue   # re-exports of other libraries' names (multiprocessing.TimeoutError)
        doc = getattr(obj, "__doc__", None)
        # a dataclass without a docstring gets its signature as __doc__
        if not doc or (inspect.isclass(obj) and doc.startswith(obj.__name__ + "(")):
            out.append(name)
        if package in WITH_METHODS and inspect.isclass(obj) and obj.__module__.startswith("shoal"):
            for attr, value in vars(obj).items():
                fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if not attr.startswith("_") and inspect.isfunction(fn) and not fn.__doc__:
                    out.append(f"{name}.{attr}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_a_docstring(package):
    if package in ("shoal.train", "shoal.horovod"):
        pytest.importorskip("torch")
    missing = _undocumented(package)
    assert not missing, f"public names of {package} without a docstring: {missing}"


def test_ml_reference_lists_every_public_name():
    # shoal.ml loads its names lazily, which the reference generator cannot follow, so
    # docs/reference/ml.md names each one by its module; this keeps that list complete.
    import re

    import shoal.ml as ml
    page = (ROOT / "docs" / "reference" / "ml.md").read_text()
    listed = set(re.findall(r"^::: shoal\.ml\.(?:\w+\.)*(\w+)$", page, flags=re.M))
    public = {n for n in ml.__all__}
    assert public - listed == set(), f"add to docs/reference/ml.md: {sorted(public - listed)}"
    assert listed - public == set(), f"not in shoal.ml.__all__: {sorted(listed - public)}"
