"""Run a command tied to the process that started it: when that process dies, the command's whole tree dies too.

    python -m mlperf_round.tether -- prefect worker start ...

Servers and workers run in sessions of their own (so they can be stopped as a group), which also
means nothing stops them when whoever started them is killed: a test run cut by a timeout left a
Prefect server, two workers and an MLflow server executing stages half an hour later. The tether
is the command's parent. It asks the kernel for SIGTERM when its own parent dies (PR_SET_PDEATHSIG)
and adopts every orphaned descendant (PR_SET_CHILD_SUBREAPER), so even one that started a session
of its own is still below it. On that signal, or when the command exits, it terminates every
descendant, then kills what is left after a grace period. Linux only; elsewhere it just runs the
command.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
GRACE_S = 5.0


def tethered(cmd: list[str]) -> list[str]:
    """`cmd` run under a tether to the calling process."""
    return [sys.executable, "-m", "mlperf_round.tether", "--", *cmd]


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def end_tree(root: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM every descendant of `root`, then SIGKILL those still there after `grace_s`."""
    _signal_all(descendants(root), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap()
        if not descendants(root):
            return
        time.sleep(0.1)
    _signal_all(descendants(root), signal.SIGKILL)
    _reap()


def main(argv: list[str]) -> int:
    cmd = argv[1:] if argv[:1] == ["--"] else argv
    if not cmd:
        print("usage: python -m mlperf_round.tether -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    child = subprocess.Popen(cmd)
    while child.poll() is None and not stopping:
        time.sleep(0.2)
    end_tree(os.getpid())
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
