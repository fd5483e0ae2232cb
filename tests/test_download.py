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


def test_unreachable_hub_is_transient_and_a_missing_file_is_not(project: Path, hub):
    """Exit 75 (retry may help) when nothing answers; exit 3 (bad input) when the hub says 404."""
    import socket

    endpoint, sums = hub
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    _point_at(project, dead, sums)
    proc = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert proc.returncode == 75 and "a retry may succeed" in proc.stderr.strip().splitlines()[-1], proc.stderr
    _point_at(project, endpoint, dict(sums, **{"missing.json": "0" * 64}))
    proc = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert proc.returncode == 3 and "HTTP 404" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (project / "artifacts/gptj/download/source").exists()


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


def test_sdxl_pipeline_latents_captions_and_metric_networks_over_http(project: Path, tmp_path: Path):
    """SDXL's real path: pipeline by pinned revision; latents, COCO captions (TSV), FID network, FID
    statistics and the CLIP model by URL or revision, every file by sha256."""
    import numpy as np
    import torch

    from mlperf_round.benchmarks import sdxl
    from mlperf_round.diffusion import pipeline
    from mlperf_round.metrics import clip_score, fid
    from mlperf_round.params import TinySDXL

    root = tmp_path / "hub"
    pipe_files = root / "stabilityai/sdxl-tiny/resolve" / REV
    clip_files = root / "laion/clip-tiny/resolve" / REV
    pipeline.build_tiny_pipeline(TinySDXL(), pipe_files)
    clip_score.build_tiny_clip(clip_files, seed=0)
    data = root / "data"
    data.mkdir()
    torch.save(pipeline.make_latents(64, 3), data / "latents.pt")
    fid.build_tiny_feature_net(data / "inception.pt", 8, 64, seed=0)
    fid.save_statistics(data / "val2014.npz", np.zeros(8), np.eye(8))
    header = "id\timage_id\tcaption\theight\twidth\tfile_name\tcoco_url\n"  # MLPerf's captions_source.tsv columns
    for name, rows in (("captions.tsv", sdxl.generate_captions(6, 1)), ("calib.tsv", sdxl.generate_captions(2, 2))):
        (data / name).write_text(header + "".join(f"{r['id']}\t{r['id']}\t{r['caption']}\t1024\t1024\tx.jpg\thttp://x\n"
                                                  for r in rows))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    tree = lambda d: {str(p.relative_to(d)): digest(p) for p in d.rglob("*") if p.is_file()}  # noqa: E731
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    file = lambda name: {"url": f"{url}/data/{name}", "sha256": digest(data / name)}  # noqa: E731
    try:
        edit_params(project, lambda d: d["benchmarks"]["stable-diffusion-xl"].update(
            model={"source": "hf", "latents": file("latents.pt"),
                   "hf": {"repo": "stabilityai/sdxl-tiny", "revision": REV, "endpoint": url, "files": tree(pipe_files)}},
            dataset={"source": "url", "url": file("captions.tsv")["url"], "sha256": file("captions.tsv")["sha256"],
                     "calibration_url": file("calib.tsv")["url"], "calibration_sha256": file("calib.tsv")["sha256"]},
            evaluation={"source": "url", "inception": file("inception.pt"), "statistics": file("val2014.npz"),
                        "clip": {"repo": "laion/clip-tiny", "revision": REV, "endpoint": url, "files": tree(clip_files)}}))
        run([sys.executable, "-m", "stages.download", "stable-diffusion-xl"], project)
    finally:
        server.shutdown()
    metrics = json.loads((project / "artifacts/stable-diffusion-xl/download/metrics.json").read_text())
    assert metrics["dataset_samples"] == 6 and metrics["calibration_samples"] == 2 and metrics["evaluation"] == "url"
    source = project / "artifacts/stable-diffusion-xl/download/source"
    assert torch.equal(pipeline.load_latents(source / pipeline.LATENTS_FILE), pipeline.make_latents(64, 3))
    assert sdxl.load_samples(source / "dataset.json")[0].caption == sdxl.generate_captions(6, 1)[0]["caption"]
    pipeline.load_pipeline(source / "model")  # a whole, loadable pipeline
