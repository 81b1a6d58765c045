import json
import subprocess
import sys

import shoal


def run(*args):
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_version():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"shoal {shoal.__version__}"


def test_info_prints_the_embedded_clusters_resources():
    p = run("info", "--num-cpus", "2", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["resources"]["CPU"] == 2.0 and info["nodes"] == 1
