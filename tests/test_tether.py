"""A tethered server dies with the process that started it, its whole tree too, even parts in sessions of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlperf_round.tether import tethered

from .conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# a "server" that starts a worker in a new session (as a Prefect worker's flow runs or MLflow's gunicorn may),
# writes both pids, and runs forever
SERVER = """
import subprocess, sys, time
from pathlib import Path
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
Path(sys.argv[1]).write_text(f"{worker.pid}\\n")
time.sleep(600)
"""

# the test process: starts the tethered server in a session of its own (as flows.local does), then waits to be killed
STARTER = """
import subprocess, sys, time
from mlperf_round.tether import tethered
proc = subprocess.Popen(tethered([sys.executable, "-c", sys.argv[1], sys.argv[2]]), start_new_session=True)
print(proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_killing_the_starter_ends_the_server_and_its_worker_in_another_session(tmp_path: Path):
    pid_file = tmp_path / "worker.pid"
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, SERVER, str(pid_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tether = int(starter.stdout.readline())
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().endswith("\n"):
            assert time.monotonic() < deadline, "the server never started its worker"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(tether) and _alive(worker)
        assert os.getsid(worker) != os.getsid(tether), "the worker must be in a session of its own for this test"
        starter.send_signal(signal.SIGKILL)  # what a CI timeout does to pytest
        starter.wait()
        assert _wait_gone([tether, worker]) == [], "the tethered tree outlived the process that started it"
    finally:
        starter.kill()
        starter.wait()


def test_a_tethered_command_keeps_its_exit_code_and_leaves_nothing_behind(tmp_path: Path):
    pid_file = tmp_path / "orphan.pid"
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        tethered([sys.executable, "-c", code]), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60
    )
    assert done.returncode == 3
    assert _wait_gone([int(pid_file.read_text())], timeout=5) == []
