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
