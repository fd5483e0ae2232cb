"""One timed LoadGen run per host at a time.

A performance run measures the machine: two of them at once (two Prefect branches, two
`dvc repro` in separate workspaces) each time a share of the cores, and a compliance audit
timed alone then fails its ratio against a performance run timed under contention. Timed
tests therefore take a host-wide advisory lock; accuracy runs and every other stage stay
parallel. The lock dies with its holder, so a killed run never leaves it held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

ENV = "MLPERF_ROUND_TIMING_LOCK"


def lock_path() -> Path:
    """$MLPERF_ROUND_TIMING_LOCK, else one file per user in the temp dir; "off" disables it."""
    return Path(os.environ.get(ENV) or Path(tempfile.gettempdir()) / f"mlperf-round-{os.getuid()}.timing.lock")


@contextlib.contextmanager
def timed_run(label: str):
    if os.environ.get(ENV, "").lower() == "off":
        yield
        return
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(f"{label}: waiting for the timing lock {path} (held by {holder})", file=sys.stderr, flush=True)
            start = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"{label}: got the timing lock after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}: {label}\n")
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
