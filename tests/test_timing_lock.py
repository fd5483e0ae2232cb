"""The host's timing lock: stages share it, a timed run has it alone, a killed holder frees it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from mlperf_round.harness.timing_lock import ENV, stage, timed_run

HOLD = """
import sys, time
from mlperf_round.harness.timing_lock import stage, timed_run
kind, seconds = sys.argv[1], float(sys.argv[2])
with (stage if kind == "stage" else timed_run)("holder-" + kind):
    print("held", flush=True)
    time.sleep(seconds)
"""


@pytest.fixture(autouse=True)
def lock_file(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "timing.lock"))


def _holder(kind: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, kind, str(seconds)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _waited(ctx) -> float:
    start = time.monotonic()
    with ctx:
        return time.monotonic() - start


def test_a_timed_run_waits_for_another_timed_run(capsys):
    holder = _holder("timed", 2.0)
    assert _waited(timed_run("waiter")) > 1.0
    holder.wait()
    err = capsys.readouterr().err
    assert "waiting for" in err and "holder-timed" in err


def test_a_timed_run_waits_for_running_stages_and_stages_share():
    holder = _holder("stage", 2.0)
    assert _waited(stage("another stage")) < 0.5  # stages run side by side
    assert _waited(timed_run("timed")) > 1.0  # a timed run waits until no stage computes
    holder.wait()


def test_a_stage_waits_for_a_timed_run():
    holder = _holder("timed", 2.0)
    assert _waited(stage("stage")) > 1.0
    holder.wait()


def test_two_stages_with_timed_runs_inside_do_not_deadlock():
    holder = _holder("stage", 1.0)  # another stage computing
    with stage("this stage"):
        assert _waited(timed_run("this stage's timed run")) > 0.5
        assert _waited(stage("nested")) < 0.5  # the stage's own hold is back after the timed run
    holder.wait()


def test_killed_holder_releases_the_lock():
    holder = _holder("timed", 600)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert _waited(timed_run("after-kill")) < 5


def test_off_disables_the_lock(monkeypatch):
    monkeypatch.setenv(ENV, "off")
    with timed_run("a"), timed_run("b"):  # would deadlock if the lock were taken
        pass
