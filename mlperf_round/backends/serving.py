"""Engines made reachable for one stage: a served engine's server starts at the stage's first test and stops
when the stage's body returns (or fails), so one stage pays for one server start, not one per test."""

from __future__ import annotations

import contextlib
from pathlib import Path

from . import of_engine

_open: dict[Path, dict] = {}
_stack: contextlib.ExitStack | None = None
_log_dir: Path | None = None  # the running stage's output: server logs are kept there


def runtime(engine_dir: Path, log_dir: Path) -> dict:
    """The facts a test's engine needs to reach its server (empty for an in-process engine); the server's log
    goes to the stage's output (`log_dir` outside a stage)."""
    global _stack
    key = Path(engine_dir).resolve()
    if key not in _open:
        if _stack is None:
            _stack = contextlib.ExitStack()
        _open[key] = _stack.enter_context(of_engine(key).serve(key, _log_dir or Path(log_dir))) or {}
    return _open[key]


def stop_all() -> None:
    """Stop every server this process started (the stage's end; idempotent)."""
    global _stack
    stack, _stack = _stack, None
    _open.clear()
    if stack is not None:
        stack.close()


@contextlib.contextmanager
def session(log_dir: Path):
    global _log_dir
    _log_dir = log_dir
    try:
        yield
    finally:
        _log_dir = None
        stop_all()
