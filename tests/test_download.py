"""The real-checkpoint path: a pinned revision fetched over HTTP, checked by sha256 before it is kept.

The hub is a local HTTP server on 127.0.0.1 serving Hugging Face's URL layout.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import sys
import threading
from pathlib import Path

import pytest

from mlperf_round.benchmarks import gptj
from mlperf_round.params import TinyGPTJ

from .conftest import edit_params, run

REPO, REV = "example/gpt-j-tiny", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path: Path):
    files = tmp_path / "hub" / REPO / "resolve" / REV
    gptj.build_tokenizer(files)
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(files), files)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "hub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.iterdir() if p.is_file()}
    yield f"http://127.0.0.1:{server.server_address[1]}", sums
    server.shutdown()


def _point_at(project: Path, endpoint: str, sums: dict[str, str]) -> None:
    edit_params(project, lambda d: d["benchmarks"]["gptj"]["model"].update(
        source="hf", hf={"repo": REPO, "revision": REV, "files": sums, "endpoint": endpoint}))


def test_pinned_checkpoint_is_downloaded_and_verified(project: Path, hub):
    endpoint, sums = hub
    _point_at(project, endpoint, sums)
    run([sys.executable, "-m", "stages.download", "gptj"], project)
    model = project / "artifacts/gptj/download/source/model"
    for name, digest in sums.items():
        assert hashlib.sha256((model / name).read_bytes()).hexdigest() == digest
    assert (project / "artifacts/gptj/download/source/manifest.json").is_file()


def test_checksum_mismatch_fails_before_anything_is_kept(project: Path, hub):
    endpoint, sums = hub
    sums = dict(sums, **{"model.safetensors": "0" * 64})
    _point_at(project, endpoint, sums)
    proc = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "model.safetensors" in last and "does not match" in last
    stage_dir = project / "artifacts/gptj/download"
    assert not (stage_dir / "source").exists()
    assert not (stage_dir / "source.partial").exists()
    assert not (stage_dir / "metrics.json").exists()


def test_corrupted_input_is_refused_by_the_next_stage(project: Path):
    edit_params(project, lambda d: d["benchmarks"]["gptj"]["model"]["tiny"].update(train_steps=0))
    run([sys.executable, "-m", "stages.download", "gptj"], project)
    weights = project / "artifacts/gptj/download/source/model/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = run([sys.executable, "-m", "stages.calibrate", "gptj"], project, check=False)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].endswith("sha256 does not match " + str(Path("artifacts/gptj/download/source/manifest.json")) + "; the file is corrupt")
    assert not (project / "artifacts/gptj/calibrate/stats").exists()
