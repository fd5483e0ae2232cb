"""A branch run again skips what its workspace computed and pushed (`flows.round.current_prefix`), and pushes only
what the remote lacks (`flows.round._steps`). Real DVC on a three-stage toy pipeline, with a local remote; the
Prefect round's own re-run is tests/test_prefect.py's worker-lost test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.round import PUSHED, REMOTE, _steps, _write_pushed, current_prefix

STAGES = ["a", "b", "c"]
STEP = """\
import os, sys
from pathlib import Path
from mlperf_round.runner import _report  # the start and end records the round's stages give an orchestrator
stage, src, dst = sys.argv[1:]
_report({"stage": stage, "event": "start", "pid": os.getpid()})
Path(dst).write_text(Path(src).read_text() + stage)
_report({"stage": stage, "event": "end", "exit_code": 0, "errors": []})
"""


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, Path, dict]:
    ws, remote = tmp_path / "ws", tmp_path / "remote"
    ws.mkdir()
    remote.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    (ws / "step.py").write_text(STEP)
    (ws / "params.yaml").write_text("n: 1\n")
    (ws / "seed.txt").write_text("seed:")
    src = {"a": "seed.txt", "b": "a.txt", "c": "b.txt"}
    stages = {
        s: {"cmd": f"python step.py {s} {src[s]} {s}.txt", "deps": ["step.py", src[s]], "outs": [f"{s}.txt"]}
        for s in STAGES
    }
    stages["a"]["params"] = ["n"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, env=env)
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "--local", "--default", REMOTE, str(remote)],
        cwd=ws,
        check=True,
        env=env,
    )
    _write_pushed(ws, {"remote": str(remote), "stages": {}})
    return ws, remote, env


def files(remote: Path) -> int:
    return sum(1 for p in remote.rglob("*") if p.is_file())


def test_a_rerun_skips_what_it_pushed_and_stops_at_the_first_change(toy):
    ws, remote, env = toy
    assert current_prefix(ws, STAGES, env) == []  # nothing computed yet
    first = _steps(ws, STAGES, env, push=True)
    assert [r["ran"] for r in first] == [True, True, True]
    assert files(remote) > 0 and (remote / "runs").is_dir()  # outputs and run-cache entries
    assert set(json.loads((ws / PUSHED).read_text())["stages"]) == set(STAGES)
    assert current_prefix(ws, STAGES, env) == STAGES  # a re-run needs no DVC process for any of them

    (ws / "params.yaml").write_text("n: 2\n")
    assert current_prefix(ws, STAGES, env) == []  # a's params changed: everything from a on goes through DVC
    (ws / "params.yaml").write_text("n: 1\n")
    (ws / "b.txt").write_text("edited by hand")
    assert current_prefix(ws, STAGES, env) == ["a"]  # b's output no longer matches its lock entry


def test_an_unchanged_stage_is_pushed_only_when_the_remote_may_lack_it(toy):
    ws, remote, env = toy
    _steps(ws, STAGES, env, push=True)
    for p in sorted(remote.rglob("*"), reverse=True):  # the remote loses everything, behind the workspace's back
        p.unlink() if p.is_file() else p.rmdir()
    again = _steps(ws, STAGES, env, push=True)
    assert not any(r["ran"] or r["restored"] for r in again)  # up to date
    assert files(remote) == 0  # known pushed: not pushed again
    _write_pushed(ws, {"remote": str(remote), "stages": {}})  # as after a push that failed, or another remote
    _steps(ws, STAGES, env, push=True)
    assert files(remote) > 0 and (remote / "runs").is_dir()
