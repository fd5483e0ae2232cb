"""The round's DVC remote on S3-compatible storage: moto's standalone S3 server on loopback (an HTTP server that
speaks the S3 API; no AWS account here), the `s3` extra's dvc-s3 talking to it over HTTP. Two checkouts at
different paths with their own DVC caches: what one pushes, the other restores from the remote's run-cache.
The bucket, the endpoint and the keys come from the workers' environment only, never from params or the
project's DVC config."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.round import REMOTE, check_remote

from .conftest import copy_project, edit_params, env
from .test_remote_ssh import STAGE, small

MOTO = shutil.which("moto_server", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(MOTO is None, reason="no moto_server (the test extra has moto[s3] and flask)")
KEYS = {"AWS_ACCESS_KEY_ID": "round-worker", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-7f3a"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on a free loopback port, with the round's bucket made through the API."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("wb")
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"moto_server did not answer on {url}") from None
            time.sleep(0.2)
    worker_env = KEYS | {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1"}
    make = "import boto3; boto3.client('s3').create_bucket(Bucket='round')"
    subprocess.run([sys.executable, "-c", make], env=env() | worker_env, check=True, capture_output=True)
    yield worker_env
    proc.kill()
    proc.wait()
    log.close()


def dvc(ws: Path, worker_env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws, env=env() | worker_env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_stage_pushed_to_s3_is_restored_by_another_checkout(s3: dict, tmp_path: Path):
    import boto3

    url = check_remote("s3://round/remote")
    checkouts = [copy_project(tmp_path / name / "project") for name in ("worker-a", "elsewhere/worker-b")]
    for ws in checkouts:
        edit_params(ws, small)
        dvc(ws, s3, "remote", "add", "--local", "--force", "--default", REMOTE, url)
    first, second = checkouts
    assert "Running stage 'download@llama2-70b'" in dvc(first, s3, "repro", "--single-item", STAGE).stdout
    dvc(first, s3, "push", "--run-cache", "-r", REMOTE, STAGE)
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1", **_lower(KEYS))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="round", Prefix="remote/")["Contents"]]
    assert any(k.startswith("remote/runs/") for k in keys), keys  # the run-cache entry
    assert any(k.startswith("remote/files/md5/") for k in keys), keys  # the outputs

    restored = dvc(second, s3, "repro", "--pull", "--single-item", STAGE)
    assert "Running stage" not in restored.stdout and f"Stage '{STAGE}' is cached - skipping run" in restored.stdout
    out = "artifacts/llama2-70b/download/source"
    for name in ("dataset.json", "model/model.safetensors"):
        assert (first / out / name).read_bytes() == (second / out / name).read_bytes(), name
    for ws in checkouts:  # the keys and the endpoint are the worker's environment, not the project's
        text = "".join(p.read_text(errors="ignore") for p in (ws / ".dvc").glob("config*"))
        assert KEYS["AWS_SECRET_ACCESS_KEY"] not in text and "127.0.0.1" not in text, text


def _lower(keys: dict) -> dict:
    return {"aws_access_key_id": keys["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"]}
