"""``shoal serve run module:app`` serves in the foreground; ``shoal serve status`` sees it;
SIGINT drains and stops it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_run_status_and_ctrl_c(tmp_path):
    import httpx
    (tmp_path / "echo_app.py").write_text(textwrap.dedent("""
        from shoal import serve

        @serve.deployment(num_replicas=2)
        class Echo:
            async def __call__(self, request):
                return {"echo": await request.json()}

        app = Echo.bind()
    """))
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "serve", "run", "echo_app:app",
                             "--port", str(port), "--num-cpus", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/" in line, line
        r = httpx.post(f"http://127.0.0.1:{port}/", json=[1, 2], timeout=30)
        assert r.json() == {"echo": [1, 2]}
        deadline = time.monotonic() + 20
        while True:
            st = subprocess.run([sys.executable, "-m", "shoal.cli", "serve", "status", "--json"],
                                capture_output=True, text=True, env=env, timeout=60)
            mine = [s for s in json.loads(st.stdout or "[]") if s["pid"] == proc.pid]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert mine, st.stdout + st.stderr
        dep = mine[0]["applications"]["default"]["deployments"]["Echo"]
        assert dep["status"] == "HEALTHY" and len(dep["replicas"]) == 2
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "draining" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
