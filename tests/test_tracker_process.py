"""A stage's MLflow run, kept by its forked helper: everything logged arrives, a failed call fails the stage, and a
stage that dies leaves its run KILLED, not RUNNING."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlperf_round import tracking
from mlperf_round.errors import RoundError
from mlperf_round.tracker_process import DIED

from .conftest import ROOT

TAGS = {
    "mlperf.round": "helper-test",
    "mlperf.version": "v5.0",
    "mlperf.system": "cpu",
    "mlperf.submitter": "t",
    "mlperf.smoke": "true",
    "git.commit": "none",
}


def _runs(ws: Path, stage: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client, client.search_runs([exp.experiment_id], f"tags.`mlperf.stage` = '{stage}'")


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_everything_logged_arrives_and_the_run_starts_when_the_stage_did(ws: Path):
    (ws / "engine.json").write_text("{}")
    before = time.time() * 1000
    with tracking.stage_run(TAGS, "k", "build", {"dvc.stage": "build@k"}) as run:
        run.log_params({"entries.k.build.kernels": "auto", "n": 3})
        run.log_metrics({"load_s": 1.5, "kernels_fp8_native_us": 40.0, "valid": True})
        run.log_series("loss", [3.0, 2.0, 1.0])
        run.set_tag("mlperf.kernels_fp8", "emulated")
        run.log_artifact(ws / "engine.json")
        run.log_dict({"a": Path("x")}, "d.json")
        run_id = run.run_id
    client, runs = _runs(ws, "build")
    (r,) = runs
    assert r.info.run_id == run_id and r.info.status == "FINISHED" and r.info.start_time <= before + 50
    assert r.data.params == {"entries.k.build.kernels": "auto", "n": "3"}
    assert r.data.metrics == {"load_s": 1.5, "kernels_fp8_native_us": 40.0, "loss": 1.0}  # a bool is no metric
    assert r.data.tags["mlperf.kernels_fp8"] == "emulated" and r.data.tags["mlperf.pid"] == str(os.getpid())
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["d.json", "engine.json"]
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [3.0, 2.0, 1.0]


def test_a_logging_call_that_fails_fails_the_stage_and_its_run(ws: Path):
    with pytest.raises(
        RoundError, match=r"MLflow: finish: RuntimeError: 1 logging call\(s\) failed, the first: log_metrics"
    ):
        with tracking.stage_run(TAGS, "k", "accuracy", {}) as run:
            run.log_metrics({"not a valid name!": 1.0})  # MLflow refuses the name; the call was queued, not awaited
    _, (r,) = _runs(ws, "accuracy")
    assert r.info.status == "FAILED" and "log_metrics" in r.data.tags["mlperf.error"]


def test_an_exception_in_the_stage_ends_its_run_failed_with_the_error(ws: Path):
    with pytest.raises(ValueError):
        with tracking.stage_run(TAGS, "k", "quantize", {}):
            raise ValueError("bad checkpoint")
    _, (r,) = _runs(ws, "quantize")
    assert r.info.status == "FAILED" and r.data.tags["mlperf.error"] == "bad checkpoint"


def test_a_stage_that_dies_leaves_its_run_killed(ws: Path):
    code = (
        "import os, signal\n"
        "from mlperf_round import tracking\n"
        f"with tracking.stage_run({TAGS!r}, 'k', 'performance', {{}}) as run:\n"
        "    run.log_metrics({'x': 1.0})\n"
        "    run.run_id\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ws, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120
    )
    assert done.returncode == -9
    deadline = time.monotonic() + 30
    while True:
        _, (r,) = _runs(ws, "performance")
        if r.info.status != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.info.status == "KILLED" and r.data.tags["mlperf.error"] == DIED and r.data.metrics == {"x": 1.0}


def test_sigterm_to_the_stage_group_unwinds_the_stage_once_and_ends_its_run_killed(ws: Path):
    """The helper is in the stage's process group: it must ignore the signal, never run the stage's handler."""
    code = (
        "import os, signal, sys, time\n"
        "from mlperf_round import tracking\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as the runner does\n"
        "try:\n"
        f"    with tracking.stage_run({TAGS!r}, 'k', 'compliance', {{}}) as run:\n"
        "        run.run_id\n"
        "        os.killpg(0, signal.SIGTERM)\n"
        "        time.sleep(30)\n"
        "finally:\n"
        "    print('unwound', os.getpid(), flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ws,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        capture_output=True,
        text=True,
        start_new_session=True,
    )
    assert done.returncode == 143, done.stderr[-2000:]
    assert done.stdout.count("unwound") == 1, done.stdout
    _, (r,) = _runs(ws, "compliance")
    assert r.info.status == "KILLED" and r.data.tags["mlperf.error"] == "143"
