"""Faults caused for real on a GPT-J round: SIGKILL in the middle of each kind of stage, a disk that
fills while a stage writes, and two `dvc repro` on one workspace at once.

After each fault: DVC sees the stage as not done, nothing half-written is in its cache or in
dvc.lock, the MLflow run is not left RUNNING once the stage runs again, and the round resumes to
the same outputs as a round that was never interrupted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlperf_round import layout
from mlperf_round.runner import REPORT_ENV
from mlperf_round.workspace import write_params

from .conftest import copy_project, env, run

pytestmark = pytest.mark.slow
ENTRY = "gptj-99"
OVERRIDES = {  # one GPT-J entry, Offline, shorter training, 16 samples: the whole chain in about two minutes
    "benchmarks": {
        "gptj": {
            "model": {"tiny": {"train_steps": 100}},
            "dataset": {"size": 16, "calibration_size": 8},
            "generation": {"max_new_tokens": 40},
        }
    },
    "entries": {
        ENTRY: {"division": "open", "scenarios": ["Offline"], "loadgen": {"Offline": {"min_query_count": 16}}},
        "gptj-99-pruned": None,
    },
}
# one stage of each kind, in the order the round runs them
KILLED = [
    "download@gptj",
    "calibrate@gptj",
    f"quantize@{ENTRY}",
    f"build@{ENTRY}",
    f"accuracy@{ENTRY}",
    f"performance@{ENTRY}",
    "package",
]
BYTE_EQUAL = {  # outputs byte-equal to an uninterrupted round's, so DVC records the same hash
    "download@gptj": "artifacts/gptj/download/source",
    "calibrate@gptj": "artifacts/gptj/calibrate/stats",
}
# outputs equal in content: the reference's scores beside LoadGen logs that hold times and pids; checkpoints that
# torch.save pickles (Model Optimizer's state holds sets, whose order is per process), so tensors are compared;
# engine.json, whose kernel timings are measured at each build
CONTENT_EQUAL = [f"artifacts/{ENTRY}/quantize/checkpoint", f"artifacts/{ENTRY}/build/engine"]


def _same_content(a: Path, b: Path) -> None:
    import torch

    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != "manifest.json")
    for name in names:
        if name.endswith(".pth"):
            x, y = (torch.load(d / name, weights_only=True, map_location="cpu") for d in (a, b))
            assert _tree_equal(x, y), name
        elif name == "engine.json":  # the kernel choice's timings are measurements; the choice itself is the same
            x, y = (json.loads((d / name).read_text()) for d in (a, b))
            timed = [e.pop("kernel_choice") for e in (x, y)]
            assert (
                x == y and [(t["choice"], t["host"]) for t in timed][0] == [(t["choice"], t["host"]) for t in timed][1]
            )
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _tree_equal(x, y) -> bool:
    import torch

    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_tree_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_tree_equal(u, v) for u, v in zip(x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def _workspace(path: Path) -> Path:
    ws = copy_project(path)
    write_params(ws, OVERRIDES, ["gptj"])
    return ws


def _dvc(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], ws, check=check)


def _lock(ws: Path) -> dict:
    return yaml.safe_load((ws / "dvc.lock").read_text())["stages"] if (ws / "dvc.lock").exists() else {}


def _out_md5(ws: Path, stage: str, path: str) -> str:
    return next(o["md5"] for o in _lock(ws)[stage]["outs"] if o["path"] == path)


def _cache(ws: Path) -> set[str]:
    root = ws / ".dvc/cache"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _runs(ws: Path, stage: str) -> list:
    """The stage's MLflow runs. Under the lock the stages create the store under (mlperf_round.tracking), or a
    client opened while a stage is still creating the schema would try to migrate it too."""
    import fcntl

    from mlflow.tracking import MlflowClient

    db = ws / "mlruns/mlflow.db"
    if not db.exists():
        return []
    with open(ws / "mlruns/.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(f"sqlite:///{db}")
        exp = client.get_experiment_by_name("mlperf-round")
        return client.search_runs([exp.experiment_id], f"tags.`dvc.stage` = '{stage}'", max_results=100) if exp else []


def _reports(path: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(rec["stage"], set()).add(rec["event"])
    return out


def _stage_pid(path: Path, stage: str) -> int:
    starts = [json.loads(line) for line in path.read_text().splitlines()]
    return next(r["pid"] for r in reversed(starts) if r["stage"] == stage and r["event"] == "start")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _kill_mid_stage(ws: Path, stage: str, report: Path) -> set[str]:
    """`dvc repro <stage>`, SIGKILLed (DVC, the stage and its children) once the stage computes:
    its partial output exists and its MLflow run is RUNNING. The DVC cache as it was when the stage started."""
    report.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", stage],
        cwd=ws,
        env=env() | {REPORT_ENV: str(report)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    key, kind = (stage.split("@")[1], stage.split("@")[0]) if "@" in stage else (None, stage)
    partial = (ws / (layout.SUBMISSION_OUT if key is None else layout.out_dir(key, kind))).with_name(
        (layout.SUBMISSION_OUT if key is None else layout.out_dir(key, kind)).name + ".partial"
    )
    cache, deadline, stopped = None, time.monotonic() + 600, False
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"dvc repro {stage} ended (exit {proc.returncode}) before it could be killed"
            events = _reports(report).get(stage, set())
            assert "end" not in events, f"{stage} ended before it could be killed"
            if "start" in events:
                if cache is None:
                    cache = _cache(ws)
                pid = _stage_pid(report, stage)
                if partial.exists() and not stopped and _children(pid):
                    # the stage holds still mid-output while its MLflow helper (its child, forked once the partial
                    # output exists) opens its run: a quick stage would otherwise publish before it shows RUNNING
                    os.kill(pid, signal.SIGSTOP)
                    stopped = True
                if stopped and any(r.info.status == "RUNNING" for r in _runs(ws, stage)):
                    break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{stage} never started computing")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return cache


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same round, never interrupted."""
    ws = _workspace(tmp_path_factory.mktemp("faults") / "reference")
    _dvc(ws, "repro")
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return _workspace(tmp_path_factory.mktemp("faults") / "killed")


def test_sigkill_mid_stage_caches_nothing_and_the_round_resumes_to_the_same_outputs(
    workspace: Path, reference: Path, tmp_path: Path
):
    ws = workspace
    for stage in KILLED:
        lock_before = _lock(ws).get(stage)
        cache_at_start = _kill_mid_stage(ws, stage, tmp_path / "report.jsonl")
        status = json.loads(_dvc(ws, "status", "--json", stage).stdout)
        assert stage in status, (stage, status)  # DVC knows it is not done
        assert _lock(ws).get(stage) == lock_before, stage  # nothing recorded for it
        assert _cache(ws) == cache_at_start, stage  # nothing of its partial output cached
        assert [r.info.status for r in _runs(ws, stage)] == ["RUNNING"], stage  # its process died without a word
        _dvc(ws, "repro", stage)  # the next run closes the stale run and completes the stage
        runs = {r.info.status: r for r in _runs(ws, stage)}
        assert sorted(runs) == ["FINISHED", "KILLED"], (stage, sorted(runs))
        assert runs["KILLED"].data.tags["mlperf.error"] == "process died without reporting (killed)"

    _dvc(ws, "repro")
    assert json.loads(_dvc(ws, "status", "--json").stdout) == {}
    for stage, path in BYTE_EQUAL.items():
        assert _out_md5(ws, stage, path) == _out_md5(reference, stage, path), stage
    for path in CONTENT_EQUAL:
        _same_content(ws / path, reference / path)
    scores = [json.loads((w / "artifacts/gptj/reference/scores/reference.json").read_text()) for w in (ws, reference)]
    assert scores[0] == scores[1]
    acc = [json.loads((w / layout.metrics_path(ENTRY, "accuracy")).read_text()) for w in (ws, reference)]
    assert acc[0]["Offline"] == acc[1]["Offline"]  # the same answers, so the same ROUGE
    assert (ws / layout.SUBMISSION_OUT / "tree").is_dir()


def test_disk_full_while_a_stage_writes_is_one_line_and_the_round_continues_once_space_is_freed(workspace: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    ws = workspace
    _dvc(ws, "repro")
    stage_dir = ws / layout.stage_dir(ENTRY, "build")
    write_params(ws, {"entries": {ENTRY: {"build": {"max_batch_size": 4}}}})  # the engine must be built again
    lock_before, cache_before = _lock(ws)[f"build@{ENTRY}"], _cache(ws)
    # one page: the engine links its checkpoint (a symlink across filesystems) and writes only its tokenizer
    # files and engine.json, which do not fit
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(stage_dir)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # root without the right to mount (a container): nothing to test with
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        proc = _dvc(ws, "repro", f"build@{ENTRY}", check=False)
    finally:
        subprocess.run(["umount", str(stage_dir)], check=True)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"error: build@{ENTRY}: ")]
    assert len(ours) == 1 and "no space left on device" in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _lock(ws)[f"build@{ENTRY}"] == lock_before and _cache(ws) == cache_before
    assert [r.info.status for r in _runs(ws, f"build@{ENTRY}")].count("FAILED") == 1
    assert not any(r.info.status == "RUNNING" for r in _runs(ws, f"build@{ENTRY}"))
    _dvc(ws, "repro")  # space freed: the round completes
    assert json.loads(_dvc(ws, "status", "--json").stdout) == {}


def test_a_second_repro_on_the_same_workspace_is_refused_and_the_first_completes(workspace: Path, tmp_path: Path):
    ws = workspace
    report = tmp_path / "report.jsonl"
    write_params(ws, {"entries": {ENTRY: {"build": {"max_batch_size": 2}}}})
    first = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=ws,
        env=env() | {REPORT_ENV: str(report)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while "start" not in _reports(report).get(f"build@{ENTRY}", set()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = _dvc(ws, "repro", check=False)
    out, err = first.communicate(timeout=900)
    assert second.returncode != 0
    # DVC refuses it: its repository lock, or (DVC 3.67, while the first runs a stage) the outputs' read-write lock
    assert re.search(r"Unable to acquire lock|is busy, it is being blocked by", second.stderr + second.stdout), (
        second.stderr
    )
    assert first.returncode == 0, err[-3000:]
    assert json.loads(_dvc(ws, "status", "--json").stdout) == {}
