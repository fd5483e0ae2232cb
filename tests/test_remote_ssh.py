"""The round's DVC remote over SSH, for real: Debian's OpenSSH server on loopback, keys made by the test, two
checkouts at different paths with their own DVC caches. What one computes and pushes, the other restores from
the remote's run-cache instead of computing; the credentials live only in the workers' environment (HOME)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.round import REMOTE, check_remote
from mlperf_round.workspace import select_benchmarks

from .conftest import copy_project, edit_params, env
from .sshd import WHY_NOT, Sshd

pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "-")
STAGE = "download@llama2-70b"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def dvc(ws: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    e = env() | {"HOME": str(home)}  # the worker's credentials: its ~/.ssh, nothing in the project
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=e, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def small(d: dict) -> None:
    d.update(select_benchmarks(d, ["llama2-70b"]))
    d["benchmarks"]["llama2-70b"]["model"]["tiny"]["train_steps"] = 50
    d["entries"] = {"llama2-70b-99p9": d["entries"]["llama2-70b-99p9"]}


def test_a_stage_pushed_over_ssh_is_restored_by_another_checkout(sshd: Sshd, tmp_path: Path):
    remote = tmp_path / "remote"
    url = check_remote(sshd.url(remote))
    checkouts = [copy_project(tmp_path / name / "project") for name in ("worker-a", "elsewhere/worker-b")]
    for ws in checkouts:
        edit_params(ws, small)
        dvc(ws, sshd.home, "remote", "add", "--local", "--force", "--default", REMOTE, url)
    first, second = checkouts
    ran = dvc(first, sshd.home, "repro", "--single-item", STAGE)
    assert "Running stage 'download@llama2-70b'" in ran.stdout
    dvc(first, sshd.home, "push", "--run-cache", "-r", REMOTE, STAGE)
    assert any(remote.rglob("*")), "nothing reached the remote over SSH"

    restored = dvc(second, sshd.home, "repro", "--pull", "--single-item", STAGE)
    assert "Running stage" not in restored.stdout, restored.stdout  # restored from the run-cache, not computed
    assert f"Stage '{STAGE}' is cached - skipping run" in restored.stdout, restored.stdout
    out = "artifacts/llama2-70b/download/source"
    for name in ("dataset.json", "model/model.safetensors"):
        assert (first / out / name).read_bytes() == (second / out / name).read_bytes(), name
    assert (first / ".dvc/cache") != (second / ".dvc/cache") and any((second / ".dvc/cache").rglob("*"))
    for ws in checkouts:  # the key is in the worker's HOME only: nothing of it in the project
        text = "".join(p.read_text(errors="ignore") for p in (ws / ".dvc").glob("config*"))
        assert "BEGIN OPENSSH PRIVATE KEY" not in text and "id_ed25519" not in text


def test_a_remote_url_with_a_password_is_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        check_remote("ssh://builder:hunter2@gpu-box:22/srv/dvc")
    message = str(err.value)
    assert "hunter2" not in message and "\n" not in message and "ssh://builder:***@gpu-box" in message
    assert check_remote("s3://bucket/round") == "s3://bucket/round"
