"""The dashboard's pages in a real browser: headless Chromium driven by Selenium.

Each page must load without a console error and show what the cluster did: the
task just run, the failed actor's traceback, the training run's curve; a visit
without the token is refused. Needs Debian's ``chromium`` and
``chromium-driver`` (``make test`` installs them when run as root) and
``selenium`` (the dev extra); skipped with a message otherwise. With
SHOAL_DASHBOARD_SCREENSHOTS=<dir> each page's screenshot is saved there
(docs/img holds the ones the guide shows).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None,
                       reason="the browser tests need selenium: pip install 'shoal[dev]'"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="the browser tests need headless Chromium: apt-get install -y "
                              "chromium chromium-driver (make test does, as root)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
              "--disable-extensions", "--no-first-run", "--disable-background-networking",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _console_errors(drv) -> list:
    return [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _wait_text(drv, text: str, timeout: float = 20.0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(drv, timeout).until(
        lambda d: text.lower() in d.find_element(By.ID, "main").text.lower(),  # CSS may upcase
        message=f"{text!r} did not appear on {drv.current_url}")


def _open(drv, dash, path: str, expect: str, shot: str):
    base, token = dash
    drv.get(f"{base}{path}?token={token}")
    _wait_text(drv, expect)
    errors = _console_errors(drv)
    assert not errors, f"console errors on {path}: {errors}"
    out = os.environ.get("SHOAL_DASHBOARD_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
        drv.save_screenshot(os.path.join(out, f"dashboard-{shot}.png"))


def test_cluster_page_shows_resources_and_charts(browser, dash):
    from selenium.webdriver.common.by import By
    _open(browser, dash, "/", "tasks finished / failed", "cluster")
    _wait_text(browser, "object store")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 4
    assert "ALIVE" in browser.find_element(By.ID, "nodes").text


def test_tasks_page_shows_the_task_just_run_and_the_failed_actors_traceback(browser, dash):
    from selenium.webdriver.common.by import By
    _open(browser, dash, "/tasks", "dashboard_probe_task", "tasks")
    actors = browser.find_element(By.ID, "actors").text
    assert "BrokenActor" in actors and "DEAD" in actors
    tracebacks = [p.text for p in browser.find_elements(By.CSS_SELECTOR, "#actors pre.traceback")]
    assert any("breaks in its constructor on purpose" in t for t in tracebacks)


def test_logs_page_shows_a_workers_output(browser, dash):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    _open(browser, dash, "/logs", "worker", "logs")
    pick = Select(browser.find_element(By.ID, "log-worker"))
    WebDriverWait(browser, 20).until(lambda d: len(pick.options) > 0)
    for i in range(len(pick.options)):   # the probe ran on one of the task workers
        pick.select_by_index(i)
        try:
            WebDriverWait(browser, 4).until(
                lambda d: "probe task says 41" in d.find_element(By.ID, "log-text").text)
            break
        except Exception:  # noqa: BLE001 - not this worker: try the next
            continue
    else:
        pytest.fail("no worker's log showed the probe task's output")
    assert not _console_errors(browser)


def test_training_page_draws_the_runs_curve(browser, dash):
    from selenium.webdriver.common.by import By
    _open(browser, dash, "/train", "dashboard-curve", "train")
    assert "FINISHED" in browser.find_element(By.ID, "runs").text
    # The chart holds the five reported losses (read back from Chart.js itself).
    losses = browser.execute_script(
        "const c = Object.values(Chart.instances).find(c => c.canvas.parentNode.id === 'run-loss');"
        "return c.data.datasets.find(d => d.label === 'dashboard-curve').data;")
    assert losses == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    kept = browser.find_element(By.ID, "checkpoints").text
    assert "Checkpoints kept (2, best first)" in kept and "loss=0.2" in kept
    assert "checkpoint_" in kept
    assert browser.execute_script(
        "return !!Object.values(Chart.instances).find(c => c.canvas.parentNode.id === "
        "'run-samples_per_s');")


def test_tuning_page_draws_a_curve_per_trial(browser, dash):
    from selenium.webdriver.common.by import By
    _open(browser, dash, "/tune", "dashboard-exp", "tune")
    assert browser.find_element(By.ID, "runs").text.count("TERMINATED") == 3
    curves = browser.execute_script(
        "const c = Object.values(Chart.instances).find(c => c.canvas.parentNode.id === 'run-score');"
        "return c.data.datasets.map(d => d.data);")
    assert sorted(c[-1] for c in curves) == pytest.approx([0.4, 0.8, 1.2])


def test_serving_page_shows_the_deployment(browser, dash):
    from selenium.webdriver.common.by import By
    _open(browser, dash, "/serve", "echo-app/Echo", "serve")
    _wait_text(browser, "HEALTHY")
    assert "replicas_running=1" in browser.find_element(By.ID, "runs").text
    _wait_text(browser, "requests_per_s=")
    # the chart of requests/s holds the second the fixture's requests were answered in
    deadline = time.monotonic() + 30
    while True:
        peak = browser.execute_script(
            "const c = Object.values(Chart.instances).find("
            "  c => c.canvas.parentNode.id === 'run-requests_per_s');"
            "return c ? Math.max(0, ...c.data.datasets[0].data.filter(v => v !== null)) : 0;")
        if peak > 0:
            break
        assert time.monotonic() < deadline, "the serving page charts no request rate"
        time.sleep(0.5)


def test_a_visit_without_the_token_is_refused(browser, dash, tmp_path):
    from selenium.webdriver.common.by import By
    base, _ = dash
    browser.delete_all_cookies()
    browser.get(base + "/tasks")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "needs the session's token" in body
    assert "dashboard_probe_task" not in browser.page_source
    browser.get(base + "/api/tasks?token=wrong")
    assert "dashboard_probe_task" not in browser.page_source
