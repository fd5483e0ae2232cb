"""A timed LoadGen run has the host to itself.

A performance run measures the machine: anything else running on it (another branch's
accuracy run, a second `dvc repro` in another workspace, two Prefect branches) takes a share
of the cores, and a compliance audit timed alone then fails its ratio against a performance
run timed under contention. So the host has one readers-writer lock: every stage holds it
shared while it runs, and a timed test holds it exclusive, after the stages that were running
finish and before any new one starts (a turnstile lock keeps new stages from starving it).
A stage that runs timed tests gives its shared hold back while it waits, so two of them never
deadlock. flock locks die with their holder: a killed stage never leaves one held.
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
_stage_hold: SharedHold | None = None  # this process's stage hold, which its timed runs give back while they run


def lock_path() -> Path:
    """$MLPERF_ROUND_TIMING_LOCK, else one file per user in the temp dir; "off" disables the lock."""
    return Path(os.environ.get(ENV) or Path(tempfile.gettempdir()) / f"mlperf-round-{os.getuid()}.timing.lock")


def _off() -> bool:
    return os.environ.get(ENV, "").lower() == "off"


def _open(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")


def _flock(f, mode: int, label: str, what: str, holder_file=None) -> None:
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = ""
    if holder_file is not None:
        holder_file.seek(0)
        holder = holder_file.read().strip()
    print(f"{label}: waiting for {what}" + (f" (held by {holder})" if holder else ""), file=sys.stderr, flush=True)
    start = time.monotonic()
    fcntl.flock(f, mode)
    print(f"{label}: waited {time.monotonic() - start:.0f} s for {what}", file=sys.stderr, flush=True)


def _acquire_shared(main, gate, label: str) -> None:
    _flock(gate, fcntl.LOCK_EX, label, "a timed run to finish", main)  # queue behind a waiting timed run
    try:
        _flock(main, fcntl.LOCK_SH, label, "a timed run to finish", main)
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)


class SharedHold:
    """A shared hold taken and given back by hand: an orchestrator covers the DVC work around a stage
    (hashing, pushing), which runs outside the stage's own hold."""

    def __init__(self, label: str):
        self.label, self.files, self.held = label, None, False

    def acquire(self) -> None:
        if _off() or self.held:
            return
        if self.files is None:
            path = lock_path()
            self.files = (_open(path), _open(path.with_name(path.name + ".gate")))
        _acquire_shared(*self.files, self.label)
        self.held = True

    def release(self) -> None:
        if self.held:
            fcntl.flock(self.files[0], fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        self.release()
        for f in self.files or ():
            f.close()
        self.files = None


@contextlib.contextmanager
def stage(label: str):
    """Held shared for a whole stage: no timed run starts while the stage computes."""
    global _stage_hold
    if _off() or _stage_hold is not None:
        yield
        return
    hold = SharedHold(label)
    hold.acquire()
    _stage_hold = hold
    try:
        yield
    finally:
        _stage_hold = None
        hold.close()


@contextlib.contextmanager
def timed_run(label: str):
    """Held exclusive for one timed test; this process's stage hold is given back meanwhile."""
    if _off():
        yield
        return
    path = lock_path()
    shared = _stage_hold if _stage_hold is not None and _stage_hold.held else None
    with contextlib.ExitStack() as stack:
        if shared:
            main, gate = shared.files
            shared.release()
        else:
            main = stack.enter_context(_open(path))
            gate = stack.enter_context(_open(path.with_name(path.name + ".gate")))
        _flock(gate, fcntl.LOCK_EX, label, "the host's timing lock", main)
        try:
            _flock(main, fcntl.LOCK_EX, label, "the stages running now to finish", main)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            main.seek(0)
            main.truncate()
            main.write(f"pid {os.getpid()}: {label}\n")
            main.flush()
            yield
        finally:
            main.seek(0)
            main.truncate()
            main.flush()
            fcntl.flock(main, fcntl.LOCK_UN)
            if shared:
                shared.acquire()
