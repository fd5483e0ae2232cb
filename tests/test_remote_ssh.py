"""The round's DVC remote over SSH, for real: Debian's OpenSSH server on loopback, keys made by the test, two
checkouts at different paths with their own DVC caches. What one computes and pushes, the other restores from
the remote's run-cache instead of computing; the credentials live only in the workers' environment (HOME)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.round import REMOTE, check_remote

from .conftest import copy_project, edit_params, env

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
pytestmark = [
    pytest.mark.skipif(SSHD is None, reason="no OpenSSH server (apt-get install openssh-server; .ci/run does)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd needs root for its privilege separation"),
]
STAGE = "download@llama2-70b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that lets in one key; the client's key, config and known_hosts in a HOME of its own."""
    base = tmp_path_factory.mktemp("sshd")
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    keygen = ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f"]
    subprocess.run([*keygen, str(base / "host_key")], check=True)
    subprocess.run([*keygen, str(home / ".ssh" / "id_ed25519")], check=True)
    (base / "authorized_keys").write_text((home / ".ssh" / "id_ed25519.pub").read_text())
    port = free_port()
    host_pub = (base / "host_key.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    log = (base / "sshd.log").open("wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((base / "sshd.log").read_text()) from None
            time.sleep(0.2)
    try:
        yield {"port": port, "home": home, "remote": base / "remote"}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def dvc(ws: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    e = env() | {"HOME": str(home)}  # the worker's credentials: its ~/.ssh, nothing in the project
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=e, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def small(d: dict) -> None:
    for bench in ("gptj", "stable-diffusion-xl"):
        del d["benchmarks"][bench]
    d["benchmarks"]["llama2-70b"]["model"]["tiny"]["train_steps"] = 50
    d["entries"] = {"llama2-70b-99p9": d["entries"]["llama2-70b-99p9"]}


def test_a_stage_pushed_over_ssh_is_restored_by_another_checkout(sshd, tmp_path: Path):
    user = os.environ.get("USER") or "root"
    url = check_remote(f"ssh://{user}@127.0.0.1:{sshd['port']}{sshd['remote']}")
    checkouts = [copy_project(tmp_path / name / "project") for name in ("worker-a", "elsewhere/worker-b")]
    for ws in checkouts:
        edit_params(ws, small)
        dvc(ws, sshd["home"], "remote", "add", "--local", "--force", "--default", REMOTE, url)
    first, second = checkouts
    ran = dvc(first, sshd["home"], "repro", "--single-item", STAGE)
    assert "Running stage 'download@llama2-70b'" in ran.stdout
    dvc(first, sshd["home"], "push", "--run-cache", "-r", REMOTE, STAGE)
    assert any(sshd["remote"].rglob("*")), "nothing reached the remote over SSH"

    restored = dvc(second, sshd["home"], "repro", "--pull", "--single-item", STAGE)
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
