"""Timed LoadGen runs on one host queue behind each other; the lock dies with its holder."""

import os
import signal
import subprocess
import sys
import time

from mlperf_round.harness.timing_lock import ENV, timed_run

HOLD = """
import sys, time
from mlperf_round.harness.timing_lock import timed_run
with timed_run("holder-test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _holder(seconds, env):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_timed_run_waits_for_the_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV, str(tmp_path / "timing.lock"))
    holder = _holder(2.0, {**os.environ, "PYTHONPATH": os.getcwd()})
    start = time.monotonic()
    with timed_run("waiter"):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 1.0
    err = capsys.readouterr().err
    assert "waiting for the timing lock" in err and "holder-test" in err


def test_killed_holder_releases_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "timing.lock"))
    holder = _holder(600, {**os.environ, "PYTHONPATH": os.getcwd()})
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    with timed_run("after-kill"):
        assert time.monotonic() - start < 5


def test_off_disables_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "off")
    with timed_run("a"), timed_run("b"):  # would deadlock if the lock were taken
        pass
