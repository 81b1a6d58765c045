"""The dashboard's server: the token on every page and API, the JSON API, /metrics."""
from __future__ import annotations

import json
import os
import time

import psutil
import pytest
from dashboard_http import SERVE_REQUESTS, http_get

import shoal

PATHS = ["/", "/tasks", "/logs", "/train", "/tune", "/serve", "/api/summary", "/api/tasks",
         "/api/actors", "/api/objects", "/api/nodes", "/api/workers", "/api/history",
         "/api/runs", "/api/logs", "/api/timeline", "/metrics", "/static/app.js",
         "/static/chart.min.js"]


@pytest.mark.parametrize("path", PATHS)
def test_every_page_and_api_refuses_a_request_without_the_right_token(dash, path):
    base, token = dash
    status, body, headers = http_get(base + path)
    assert status == 401 and b"token" in body
    assert http_get(base + path, token="not-the-token")[0] == 403
    assert http_get(base + path + "?token=nope")[0] == 403
    assert http_get(base + path, cookie="shoal_dashboard_token=nope")[0] == 403
    assert http_get(base + path, token=token)[0] == 200


def test_a_page_opened_with_the_token_sets_a_strict_httponly_cookie(dash):
    base, token = dash
    status, body, headers = http_get(f"{base}/?token={token}")
    assert status == 200 and b'data-page="cluster"' in body
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name_value = cookie.split(";")[0]
    assert http_get(base + "/api/summary", cookie=name_value)[0] == 200


def test_the_server_binds_loopback_only(dash):
    base, _ = dash
    assert base.startswith("http://127.0.0.1:")
    port = int(base.rsplit(":", 1)[1])
    mine = [c for c in psutil.Process().net_connections("tcp")
            if c.status == "LISTEN" and c.laddr.port == port]
    assert mine and all(c.laddr.ip == "127.0.0.1" for c in mine)


def test_the_api_shows_the_task_the_failed_actor_and_the_training_run(dash):
    base, token = dash
    tasks = json.loads(http_get(base + "/api/tasks?name=dashboard_probe_task", token)[1])
    assert [t["state"] for t in tasks] == ["FINISHED"]
    actors = json.loads(http_get(base + "/api/actors?name=broken-actor", token)[1])
    assert actors[0]["state"] == "DEAD"
    assert "breaks in its constructor on purpose" in actors[0]["traceback"]
    runs = json.loads(http_get(base + "/api/runs?kind=train", token)[1])
    run = next(r for r in runs if r["name"] == "dashboard-curve")
    assert run["status"] == "FINISHED" and [h["loss"] for h in run["history"]] == \
        [1.0, 0.5, 1 / 3, 0.25, 0.2]
    # the checkpoints the run keeps (num_to_keep=2, lowest loss first), with their metrics
    kept = run["info"]["checkpoints"]
    assert [c["metrics"]["loss"] for c in kept] == [0.2, 0.25]
    assert all(os.path.isdir(c["path"]) for c in kept)
    assert all(c["metrics"]["samples_per_s"] > 0 for c in kept)
    summary = json.loads(http_get(base + "/api/summary", token)[1])
    assert summary["tasks"]["FINISHED"] >= 1 and summary["actors"]["DEAD"] >= 1


def test_logs_api_serves_a_workers_output(dash):
    base, token = dash
    workers = json.loads(http_get(base + "/api/logs", token)[1])["workers"]
    texts = [json.loads(http_get(f"{base}/api/logs?worker={w['worker_id']}&offset=0", token)[1])
             ["text"] for w in workers]
    assert any("probe task says 41" in t for t in texts)
    assert http_get(base + "/api/logs?worker=99999", token)[0] == 404


def test_metrics_are_prometheus_text_with_the_clusters_and_the_runs_numbers(dash):
    from prometheus_client.parser import text_string_to_metric_families
    base, token = dash
    status, body, headers = http_get(base + "/metrics", token)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    ended = {s.labels["state"]: s.value for s in fams["shoal_tasks_ended"].samples
             if s.name == "shoal_tasks_ended_total"}
    assert ended["FINISHED"] >= 1
    assert fams["shoal_object_store_capacity_bytes"].samples[0].value > 0
    run = {(s.labels["run"], s.labels["metric"]): s.value for s in fams["shoal_run_metric"].samples}
    assert run[("dashboard-curve", "samples_per_s")] > 0   # counted by the prepared loader


def test_metrics_carry_each_deployments_request_latency_histogram(dash):
    from prometheus_client.parser import text_string_to_metric_families
    base, token = dash
    deadline = time.monotonic() + 30
    while True:   # the controller sums the replicas' counts about once a second
        fams = {f.name: f for f in text_string_to_metric_families(
            http_get(base + "/metrics", token)[1].decode())}
        h = {s.name: s for s in fams.get("shoal_serve_request_latency_seconds",
                                           None).samples
             if s.labels["deployment"] == "echo-app/Echo"} \
            if "shoal_serve_request_latency_seconds" in fams else {}
        if h and h["shoal_serve_request_latency_seconds_count"].value >= SERVE_REQUESTS:
            break
        assert time.monotonic() < deadline, f"no serve latency histogram in /metrics: {h}"
        time.sleep(0.3)
    assert h["shoal_serve_request_latency_seconds_count"].value == SERVE_REQUESTS
    assert 0 < h["shoal_serve_request_latency_seconds_sum"].value < 30 * SERVE_REQUESTS
    inf = [s for s in fams["shoal_serve_request_latency_seconds"].samples
           if s.labels.get("le") == "+Inf" and s.labels["deployment"] == "echo-app/Echo"]
    assert inf[0].value == SERVE_REQUESTS
    reqs = {s.labels["deployment"]: s.value for s in fams["shoal_serve_requests"].samples}
    assert reqs["echo-app/Echo"] == SERVE_REQUESTS
    runs = json.loads(http_get(base + "/api/runs?kind=serve", token)[1])
    echo = next(r for r in runs if r["name"] == "echo-app/Echo")
    assert max(x.get("requests_per_s") or 0 for x in echo["history"]) > 0
    assert echo["last"]["latency_p99_ms"] > 0


def test_timeline_download_is_a_chrome_trace(dash):
    base, token = dash
    status, body, headers = http_get(base + "/api/timeline", token)
    trace = json.loads(body)
    assert "attachment" in headers["content-disposition"]
    assert any(e["name"] == "dashboard_probe_task" and e["ph"] == "X"
               for e in trace["traceEvents"])


MEMORY_PROBE = r"""
import json, sys, urllib.request, psutil, shoal
shoal.init(num_cpus=1, log_to_driver=False)
me = psutil.Process()
before = me.memory_info().rss
from shoal import dashboard
d = dashboard.start(quiet=True)
for _ in range(20):
    for p in sys.argv[1:]:
        req = urllib.request.Request(f"http://127.0.0.1:{d.port}{p}",
                                     headers={"Authorization": "Bearer " + d.token})
        urllib.request.urlopen(req, timeout=20).read()
print(json.dumps({"growth": me.memory_info().rss - before}))
shoal.shutdown()
"""


def test_the_dashboard_holds_well_under_100_mb(dash):
    # The server runs in the driver: its memory is what starting it and serving every
    # page and API 20 times adds to the driver (a fresh one, so nothing else grows it).
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *PATHS], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ,
                                                        PYTHONPATH=os.pathsep.join(sys.path)))
    assert p.returncode == 0, p.stderr[-3000:]
    growth = json.loads(p.stdout.strip().splitlines()[-1])["growth"]
    assert growth < 100e6, f"the dashboard added {growth / 1e6:.0f} MB to the driver"


def test_a_second_start_returns_the_running_dashboard_and_shutdown_stops_it(dash):
    import shoal.dashboard
    base, token = dash
    assert shoal.dashboard.start().token == token
    assert shoal.dashboard.url() == f"{base}/?token={token}"
    sess = json.load(open(os.path.join(shoal.state.summary()["session_dir"], "session.json")))
    assert sess["dashboard"] == {"url": base, "token": token}


def test_starting_froze_the_heap_so_full_collections_skip_the_web_stack(dash):
    import gc
    assert gc.get_freeze_count() > 10_000


FREEZE_PROBE = r"""
import gc, json, shoal
shoal.init(num_cpus=1, log_to_driver=False, dashboard=True)
frozen = gc.get_freeze_count()
shoal.shutdown()
print(json.dumps({"frozen": frozen, "after": gc.get_freeze_count()}))
"""


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_heap_freeze_can_be_turned_off_and_ends_with_the_dashboard(setting):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", FREEZE_PROBE], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, SHOAL_DASHBOARD_GC_FREEZE=setting,
                                             PYTHONPATH=os.pathsep.join(sys.path)))
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert (got["frozen"] > 10_000) == (setting == "1") and got["after"] == 0


def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def test_shoal_status_and_dashboard_reach_the_running_session(dash):
    base, token = dash
    session = shoal.state.summary()["session"]
    p = _cli("status", "--session", session)
    assert p.returncode == 0, p.stderr
    assert "resources (used / total)" in p.stdout and "CPU" in p.stdout
    assert "dead actor BrokenActor broken-actor" in p.stdout
    assert "train run dashboard-curve: FINISHED, 5 reports" in p.stdout
    assert f"{base}/?token={token}" in p.stdout
    p = _cli("status", "--session", session, "--json")
    assert json.loads(p.stdout)["summary"]["session"] == session
    p = _cli("dashboard")
    assert p.returncode == 0 and f"{base}/?token={token}" in p.stdout


def test_the_training_run_wrote_tensorboard_events(dash):
    import importlib.util
    if importlib.util.find_spec("tensorboardX") is None and \
            importlib.util.find_spec("tensorboard") is None:
        pytest.skip("TensorBoard events need tensorboardX or tensorboard installed")
    base, token = dash
    runs = json.loads(http_get(base + "/api/runs?kind=train", token)[1])
    path = next(r for r in runs if r["name"] == "dashboard-curve")["info"]["path"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(path))


@shoal.remote
def _allreduce_rank(rank, world, group):
    import numpy as np

    from shoal import collective
    comm = collective.init_group(rank, world, shoal.get_kv_store(), backend="native",
                                 name=group, timeout=60)
    for _ in range(3):
        comm.allreduce(np.ones(1024, np.float32))
    comm.destroy()
    return rank


def test_metrics_count_the_collective_ops_of_groups_formed_while_it_runs(dash):
    from prometheus_client.parser import text_string_to_metric_families
    base, token = dash
    assert sorted(shoal.get([_allreduce_rank.remote(r, 2, "metrics-group")
                             for r in range(2)])) == [0, 1]
    body = http_get(base + "/metrics", token)[1].decode()
    samples = {(s.name, s.labels["rank"]): s.value
               for f in text_string_to_metric_families(body) if f.name.startswith("shoal_collective")
               for s in f.samples
               if s.labels.get("group") == "metrics-group" and s.labels.get("op") == "allreduce"}
    for rank in ("0", "1"):
        assert samples[("shoal_collective_ops_total", rank)] == 3
        assert samples[("shoal_collective_bytes_total", rank)] == 3 * 4096
        assert samples[("shoal_collective_seconds_total", rank)] > 0
