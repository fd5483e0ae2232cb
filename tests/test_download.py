"""The real-checkpoint path: a pinned revision fetched over HTTP, checked by sha256 before it is kept.

The hub is a local HTTP server on 127.0.0.1 serving Hugging Face's URL layout.
"""

from __future__ import annotations

import functools
import json
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


def test_llama_checkpoint_and_openorca_set_over_http(project: Path, tmp_path: Path):
    """Llama 2's real path: the chat checkpoint by pinned revision, MLPerf's OpenOrca set by URL."""
    from mlperf_round.benchmarks import llama2
    from mlperf_round.params import TinyLlama

    root = tmp_path / "hub"
    files = root / "meta/llama-tiny/resolve" / REV
    llama2.build_tokenizer(files)
    tok = llama2.load_tokenizer(files)
    llama2.build_tiny_model(TinyLlama(train_steps=0), tok, files)
    (root / "data").mkdir()
    for name, rows in (("orca.json", llama2.generate_dataset(8, 5, tok)), ("calib.json", llama2.generate_dataset(4, 6, tok))):
        (root / "data" / name).write_text(json.dumps(rows))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        edit_params(project, lambda d: d["benchmarks"]["llama2-70b"].update(
            model={"source": "hf", "hf": {"repo": "meta/llama-tiny", "revision": REV, "endpoint": url,
                                         "files": {p.name: digest(p) for p in files.iterdir() if p.is_file()}}},
            dataset={"source": "url", "url": f"{url}/data/orca.json", "sha256": digest(root / "data/orca.json"),
                     "calibration_url": f"{url}/data/calib.json", "calibration_sha256": digest(root / "data/calib.json")}))
        run([sys.executable, "-m", "stages.download", "llama2-70b"], project)
    finally:
        server.shutdown()
    metrics = json.loads((project / "artifacts/llama2-70b/download/metrics.json").read_text())
    assert metrics["dataset_samples"] == 8 and metrics["calibration_samples"] == 4
    samples = llama2.load_samples(project / "artifacts/llama2-70b/download/source/dataset.json")
    assert samples[0].input_ids and samples[0].prompt.startswith("<s>[INST] <<SYS>>")
