"""MLflow's UI in headless Chromium (Debian's package, driven by Playwright; no browser download)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlperf_round.tether import tethered
from mlperf_round.tracking import runs_page

from .conftest import env

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow ui exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url}: no answer in {timeout:.0f} s")


def mlflow_compare_screenshot(
    ws: Path, run_ids: list[str], experiment_id: str, metric: str, shot: Path, run_name: str
) -> tuple[str, str, str]:
    """Open the experiment as a newcomer does, by the link `make ui` prints (its runs, not a GenAI overview, once
    `run_name` shows),
    then MLflow's run comparison of these runs, wait for `metric`, save a screenshot. (experiment page's URL, its
    text, the comparison's text)."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    log = open(ws / "mlflow-ui.log", "wb")
    ui = subprocess.Popen(
        tethered(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "ui",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{ws}/mlruns/mlflow.db",
            ]
        ),
        cwd=ws,
        env=env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/health", ui)
        query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(runs_page(base, experiment_id))  # the link `make ui` prints
            page.get_by_text(run_name).first.wait_for(timeout=60_000)
            landing_url, landing = page.url, page.inner_text("body")
            page.goto(f"{base}/#/compare-runs?{query}")
            page.get_by_text(metric).first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            # the metrics table lists every metric; "Show diff only" (its second switch) keeps those that differ
            switch = page.get_by_text("Show diff only").nth(1)
            switch.click()
            switch.evaluate("e => e.scrollIntoView({block: 'start'})")  # the page scrolls inside a pane
            page.wait_for_timeout(500)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            browser.close()
        return landing_url, landing, text
    finally:
        ui.terminate()
        ui.wait(timeout=30)
        log.close()
