"""The real-checkpoint path: a pinned revision from a Hub through huggingface_hub, checked by sha256, kept once.

The Hub is tests/hub.py's LocalHub on 127.0.0.1: the real client, the Hub's URL layout and
headers, LFS files redirected to a second host. Dataset files come from a plain HTTP server.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlperf_round.benchmarks import gptj
from mlperf_round.benchmarks.gptj import TinyGPTJ

from .conftest import edit_params, env, run
from .hub import LocalHub

REPO, REV = "example/gpt-j-tiny", "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_localhubtoken"


def _sharded_gptj(dest: Path) -> dict[str, str]:
    """A tiny GPT-J saved in three safetensors shards with their index, as the real 6B is; returns name -> sha256."""
    gptj.build_tokenizer(dest)
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(dest), dest)
    model = gptj.load_model(dest)
    (dest / "model.safetensors").unlink()
    model.save_pretrained(dest, max_shard_size="150KB")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.iterdir() if p.is_file()}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch):
    """A gated repository of a sharded checkpoint on a loopback Hub; the Hub cache and state in tmp_path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MLPERF_ROUND_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    sums = _sharded_gptj(tmp_path / "repo")
    assert sum(n.endswith(".safetensors") for n in sums) >= 2 and "model.safetensors.index.json" in sums
    with LocalHub(token=TOKEN) as h:
        h.add_repo(REPO, tmp_path / "repo", commit=REV, gated=True)
        h.sums = sums
        yield h


def _point_at(project: Path, endpoint: str, sums: dict[str, str]) -> None:
    edit_params(
        project,
        lambda d: d["benchmarks"]["gptj"]["model"].update(
            source="hf", hf={"repo": REPO, "revision": REV, "files": sums, "endpoint": endpoint}
        ),
    )


def _download(project: Path, check: bool = False):
    return run([sys.executable, "-m", "stages.download", "gptj"], project, check=check)


def _nothing_published(project: Path) -> None:
    stage_dir = project / "artifacts/gptj/download"
    assert not (stage_dir / "source").exists() and not (stage_dir / "source.partial").exists()
    assert not (stage_dir / "metrics.json").exists()


def _last_line(proc) -> str:
    """The error is one line, on a line of its own (never after a progress bar's carriage return)."""
    assert all(line.startswith("error: ") for line in proc.stderr.split("\n") if "error: " in line), proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]


def test_pin_then_download_a_sharded_gated_checkpoint_into_the_hub_cache_by_reference(
    project: Path, hub, tmp_path: Path
):
    """pin resolves main to its commit and writes every file's sha256 (comments kept); download verifies the shards
    in the Hub cache, publishes a reference, not a copy; the token reaches the Hub and never its CDN."""
    before = (project / "params.yaml").read_text()
    run([sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--repo", REPO, "--endpoint", hub.endpoint], project)
    text = (project / "params.yaml").read_text()
    assert "# The smoke round" in text and "# MLPerf's GPT-J reference decoding" in text  # a round trip
    from mlperf_round.params import load_params

    pinned = load_params(project / "params.yaml").benchmarks["gptj"].model
    assert pinned.source == "hf" and pinned.hf.revision == REV and pinned.hf.files == hub.sums, pinned
    assert len(text.splitlines()) > len(before.splitlines())
    _download(project, check=True)
    source = project / "artifacts/gptj/download/source"
    assert not (source / "model").exists() and not list(source.rglob("*.safetensors"))  # by reference only
    ref = json.loads((source / "model.ref.json").read_text())
    snapshot = Path(ref["path"])
    assert snapshot.is_relative_to(tmp_path / "hf-cache") and set(ref["files"]) == set(hub.sums)
    for name, digest in hub.sums.items():
        assert hashlib.sha256((snapshot / name).read_bytes()).hexdigest() == digest
    metrics = json.loads((project / "artifacts/gptj/download/metrics.json").read_text())
    assert metrics["checkpoint_bytes"] == sum((snapshot / n).stat().st_size for n in hub.sums)
    cdn = [r for r in hub.requests if r[0] == "cdn"]
    assert any(r[2].endswith(".safetensors") for r in cdn) and all(r[3] is None for r in cdn), cdn
    assert all(r[3] == f"Bearer {TOKEN}" for r in hub.requests if r[0] == "hub")
    run([sys.executable, "-m", "stages.calibrate", "gptj"], project)  # the sharded checkpoint loads where it lies
    os.utime(snapshot / "config.json", ns=(1, 1))
    proc = run([sys.executable, "-m", "stages.calibrate", "gptj"], project, check=False)
    assert proc.returncode == 3 and _last_line(proc).endswith(
        "config.json: changed since download verified it (size or mtime); re-run download"
    ), proc.stderr


@pytest.mark.parametrize("case", ["pinned-sha", "corrupt-bytes", "shard-left-out", "gated", "pickle-only"])
def test_bad_checkpoints_get_one_line_and_nothing_is_published_or_cached(
    project: Path, hub, monkeypatch, tmp_path: Path, case: str
):
    shard = sorted(n for n in hub.sums if n.endswith(".safetensors"))[-1]
    sums = dict(hub.sums)
    if case == "pinned-sha":
        sums[shard] = "0" * 64
        expected = f"{shard}: the pinned sha256 {'0' * 64} is not the Hub's {hub.sums[shard]}"
    elif case == "corrupt-bytes":
        size = (tmp_path / "repo" / shard).stat().st_size  # as long as the real shard: the client checks lengths only
        hub.corrupt(REPO, shard, bytes(size))
        expected = (
            f"{shard}: sha256 {hashlib.sha256(bytes(size)).hexdigest()} does not match the pinned {hub.sums[shard]}"
        )
    elif case == "shard-left-out":
        del sums[shard]
        expected = f"model.safetensors.index.json: names shard {shard}, which is not among the pinned files"
    elif case == "gated":
        monkeypatch.delenv("HF_TOKEN")
        expected = (
            f"{REPO}@{REV}: gated repository on {hub.endpoint}; set HF_TOKEN to a token that has been granted access"
        )
    else:
        hub.add_repo("example/pickled", {"config.json": b"{}", "model.ckpt": b"\x80" * 2000}, commit="1" * 40)
        edit_params(
            project,
            lambda d: d["benchmarks"]["gptj"]["model"].update(
                source="hf",
                hf={
                    "repo": "example/pickled",
                    "revision": "1" * 40,
                    "endpoint": hub.endpoint,
                    "files": {"config.json": hashlib.sha256(b"{}").hexdigest()},
                },
            ),
        )
        expected = "example/pickled@" + "1" * 40 + ": weights only as pickle (model.ckpt)"
    if case != "pickle-only":
        _point_at(project, hub.endpoint, sums)
    proc = _download(project)
    assert proc.returncode == 3 and expected in _last_line(proc), proc.stderr[-3000:]
    _nothing_published(project)
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / f"models--{REPO.replace('/', '--')}/snapshots/{REV}"
    assert not (snapshot / shard).exists()  # a bad shard never stays in the Hub cache, nor is one fetched in vain
    if case == "corrupt-bytes":
        blobs = snapshot.parent.parent / "blobs"
        assert all(
            hashlib.sha256(b.read_bytes()).hexdigest() in hub.sums.values() for b in blobs.iterdir() if b.is_file()
        )
    if case == "pickle-only":
        proc = run(
            [
                sys.executable,
                "-m",
                "mlperf_round.cli",
                "pin",
                "gptj",
                "--repo",
                "example/pickled",
                "--endpoint",
                hub.endpoint,
            ],
            project,
            check=False,
        )
        assert proc.returncode == 3 and _last_line(proc).endswith(
            "error: pin: example/pickled@" + "1" * 40 + ": its weights are pickle only (model.ckpt), "
            "which can run code when loaded"
        ), proc.stderr


def test_a_transient_failure_keeps_the_verified_files_and_a_retry_fetches_only_the_rest(project: Path, hub):
    shard = sorted(n for n in hub.sums if n.endswith(".safetensors"))[0]
    hub.fail(REPO, shard, status=503, times=100)
    _point_at(project, hub.endpoint, hub.sums)
    proc = _download(project)
    assert proc.returncode == 75 and shard in _last_line(proc) and "a retry may succeed" in _last_line(proc), (
        proc.stderr[-3000:]
    )
    _nothing_published(project)
    hub.fail(REPO, shard, status=503, times=0)
    hub.requests.clear()
    _download(project, check=True)
    fetched = {r[2].rsplit("/", 1)[-1] for r in hub.requests if r[1] == "GET" and "/api/" not in r[2]}
    assert fetched == {shard}, fetched


def test_a_cut_shard_is_resumed_or_refused_never_published_short(project: Path, hub):
    shard = sorted(n for n in hub.sums if n.endswith(".safetensors"))[0]
    hub.truncate(REPO, shard, 1000)
    _point_at(project, hub.endpoint, hub.sums)
    if _download(project).returncode != 0:  # the client may resume by itself; if not, the retry does
        _nothing_published(project)
        _download(project, check=True)
    ref = json.loads((project / "artifacts/gptj/download/source/model.ref.json").read_text())
    assert hashlib.sha256((Path(ref["path"]) / shard).read_bytes()).hexdigest() == hub.sums[shard]


def test_local_checkpoint_is_verified_once_and_never_copied(project: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLPERF_ROUND_STATE", str(tmp_path / "state"))
    ckpt = tmp_path / "gpt-j-on-disk"
    sums = _sharded_gptj(ckpt)
    edit_params(
        project, lambda d: d["benchmarks"]["gptj"]["model"].update(source="local", path=str(ckpt), hf={"files": sums})
    )
    first = _download(project, check=True)
    assert "verify" in first.stderr
    ref = json.loads((project / "artifacts/gptj/download/source/model.ref.json").read_text())
    assert ref["path"] == str(ckpt) and ref["origin"]["source"] == "local"
    second = _download(project, check=True)  # unchanged: stat only, nothing hashed again
    assert "verify" not in second.stderr, second.stderr[-2000:]
    shard = sorted(n for n in sums if n.endswith(".safetensors"))[0]
    data = bytearray((ckpt / shard).read_bytes())
    data[-1] ^= 0xFF
    (ckpt / shard).write_bytes(bytes(data))
    proc = _download(project)
    assert proc.returncode == 3 and _last_line(proc).endswith(
        f"{ckpt / shard}: sha256 {hashlib.sha256(data).hexdigest()} does not match the pinned {sums[shard]}"
    )
    _nothing_published(project)


def test_params_refuse_a_branch_a_path_out_of_the_folder_and_a_pickle(project: Path):
    cases = {
        "main": "revision 'main' is not a 40-hex-digit commit (mlperf-round pin resolves a branch or tag to its "
        "commit)",
        "../escape.json": "files.../escape.json: not a plain relative file name inside the repository",
        "/etc/passwd": "files./etc/passwd: not a plain relative file name inside the repository",
        "model.pt": "files.model.pt: a pickle file runs code when it is loaded",
    }
    for value, expected in cases.items():
        hf = {
            "repo": REPO,
            "revision": value if value == "main" else REV,
            "files": {"config.json" if value == "main" else value: "0" * 64},
        }
        edit_params(project, lambda d: d["benchmarks"]["gptj"]["model"].update(source="hf", hf=hf))
        proc = _download(project)
        assert proc.returncode == 2 and expected in _last_line(proc), (value, proc.stderr[-1500:])


def test_unreachable_hub_is_transient(project: Path):
    """Exit 75 (retry may help) when nothing answers."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    _point_at(project, dead, {"config.json": "0" * 64})
    proc = _download(project)
    assert proc.returncode == 75 and "a retry may succeed" in _last_line(proc), proc.stderr
    _nothing_published(project)


def test_corrupted_input_is_refused_by_the_next_stage(project: Path):
    edit_params(project, lambda d: d["benchmarks"]["gptj"]["model"]["tiny"].update(train_steps=0))
    run([sys.executable, "-m", "stages.download", "gptj"], project)
    weights = project / "artifacts/gptj/download/source/model/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = run([sys.executable, "-m", "stages.calibrate", "gptj"], project, check=False)
    assert proc.returncode == 3
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "sha256 does not match "
            + str(Path("artifacts/gptj/download/source/manifest.json"))
            + "; the file is corrupt"
        )
    )
    assert not (project / "artifacts/gptj/calibrate/stats").exists()


def test_llama_checkpoint_and_openorca_set_over_http(project: Path, tmp_path: Path, monkeypatch):
    """Llama 2's real path: the chat checkpoint by pinned revision, MLPerf's OpenOrca set by URL."""
    from mlperf_round.benchmarks import llama2
    from mlperf_round.benchmarks.llama2 import TinyLlama

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MLPERF_ROUND_STATE", str(tmp_path / "state"))
    root = tmp_path / "hub"
    files = tmp_path / "llama-tiny"
    llama2.build_tokenizer(files)
    tok = llama2.load_tokenizer(files)
    llama2.build_tiny_model(TinyLlama(train_steps=0), tok, files)
    (root / "data").mkdir(parents=True)
    for name, rows in (
        ("orca.json", llama2.generate_dataset(8, 5, tok)),
        ("calib.json", llama2.generate_dataset(4, 6, tok)),
    ):
        (root / "data" / name).write_text(json.dumps(rows))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    hub = LocalHub().start()
    try:
        hub.add_repo("meta/llama-tiny", files, commit=REV)
        edit_params(
            project,
            lambda d: d["benchmarks"]["llama2-70b"].update(
                model={
                    "source": "hf",
                    "hf": {
                        "repo": "meta/llama-tiny",
                        "revision": REV,
                        "endpoint": hub.endpoint,
                        "files": {p.name: digest(p) for p in files.iterdir() if p.is_file()},
                    },
                },
                dataset={
                    "source": "url",
                    "url": f"{url}/data/orca.json",
                    "sha256": digest(root / "data/orca.json"),
                    "calibration_url": f"{url}/data/calib.json",
                    "calibration_sha256": digest(root / "data/calib.json"),
                },
            ),
        )
        run([sys.executable, "-m", "stages.download", "llama2-70b"], project)
    finally:
        server.shutdown()
        hub.close()
    metrics = json.loads((project / "artifacts/llama2-70b/download/metrics.json").read_text())
    assert metrics["dataset_samples"] == 8 and metrics["calibration_samples"] == 4
    samples = llama2.load_samples(project / "artifacts/llama2-70b/download/source/dataset.json")
    assert samples[0].input_ids and samples[0].prompt.startswith("<s>[INST] <<SYS>>")


def test_sdxl_pipeline_latents_captions_and_metric_networks_over_http(project: Path, tmp_path: Path, monkeypatch):
    """SDXL's real path: pipeline by pinned revision; latents, COCO captions (TSV), FID network, FID
    statistics and the CLIP model by URL or revision, every file by sha256."""
    import numpy as np
    import torch

    from mlperf_round.benchmarks import sdxl
    from mlperf_round.benchmarks.sdxl import TinySDXL
    from mlperf_round.diffusion import pipeline
    from mlperf_round.metrics import clip_score, fid

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MLPERF_ROUND_STATE", str(tmp_path / "state"))
    root = tmp_path / "hub"
    pipe_files, clip_files = tmp_path / "sdxl-tiny", tmp_path / "clip-tiny"
    pipeline.build_tiny_pipeline(TinySDXL(), pipe_files)
    clip_score.build_tiny_clip(clip_files, seed=0)
    data = root / "data"
    data.mkdir(parents=True)
    torch.save(pipeline.make_latents(64, 3), data / "latents.pt")
    fid.build_tiny_feature_net(data / "inception.pt", 8, 64, seed=0)
    fid.save_statistics(data / "val2014.npz", np.zeros(8), np.eye(8))
    header = "id\timage_id\tcaption\theight\twidth\tfile_name\tcoco_url\n"  # MLPerf's captions_source.tsv columns
    calib = sdxl.generate_captions(2, 2)
    # the calibration list as MLCommons ships it: caption ids (coco_cal_captions_list.txt) into a captions table
    for name, rows in (
        ("captions.tsv", sdxl.generate_captions(6, 1)),
        ("captions_source.tsv", sdxl.generate_captions(5, 3) + calib),
    ):
        (data / name).write_text(
            header + "".join(f"{r['id']}\t{r['id']}\t{r['caption']}\t1024\t1024\tx.jpg\thttp://x\n" for r in rows)
        )
    (data / "coco_cal_captions_list.txt").write_text("".join(f"{r['id']}\n" for r in calib))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    tree = lambda d: {str(p.relative_to(d)): digest(p) for p in d.rglob("*") if p.is_file()}  # noqa: E731
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    file = lambda name: {"url": f"{url}/data/{name}", "sha256": digest(data / name)}  # noqa: E731
    hub = LocalHub().start()
    try:
        hub.add_repo("stabilityai/sdxl-tiny", pipe_files, commit=REV)
        hub.add_repo("laion/clip-tiny", clip_files, commit=REV)
        edit_params(
            project,
            lambda d: d["benchmarks"]["stable-diffusion-xl"].update(
                model={
                    "source": "hf",
                    "latents": file("latents.pt"),
                    "hf": {
                        "repo": "stabilityai/sdxl-tiny",
                        "revision": REV,
                        "endpoint": hub.endpoint,
                        "files": tree(pipe_files),
                    },
                },
                dataset={
                    "source": "url",
                    "url": file("captions.tsv")["url"],
                    "sha256": file("captions.tsv")["sha256"],
                    "calibration_url": file("coco_cal_captions_list.txt")["url"],
                    "calibration_sha256": file("coco_cal_captions_list.txt")["sha256"],
                    "captions_url": file("captions_source.tsv")["url"],
                    "captions_sha256": file("captions_source.tsv")["sha256"],
                },
                evaluation={
                    "source": "url",
                    "inception": file("inception.pt"),
                    "statistics": file("val2014.npz"),
                    "clip": {
                        "repo": "laion/clip-tiny",
                        "revision": REV,
                        "endpoint": hub.endpoint,
                        "files": tree(clip_files),
                    },
                },
            ),
        )
        run([sys.executable, "-m", "stages.download", "stable-diffusion-xl"], project)
    finally:
        server.shutdown()
        hub.close()
    metrics = json.loads((project / "artifacts/stable-diffusion-xl/download/metrics.json").read_text())
    assert metrics["dataset_samples"] == 6 and metrics["calibration_samples"] == 2 and metrics["evaluation"] == "url"
    source = project / "artifacts/stable-diffusion-xl/download/source"
    assert torch.equal(pipeline.load_latents(source / pipeline.LATENTS_FILE), pipeline.make_latents(64, 3))
    assert sdxl.load_samples(source / "dataset.json")[0].caption == sdxl.generate_captions(6, 1)[0]["caption"]
    assert [(s.id, s.caption) for s in sdxl.load_samples(source / "calibration.json")] == [
        (r["id"], r["caption"]) for r in calib
    ]
    from mlperf_round import checkpoints

    pipeline.load_pipeline(checkpoints.resolve(source))  # a whole, loadable pipeline, where the Hub cache keeps it


def test_pin_keeps_what_the_loaders_read():
    from mlperf_round.pin import select_files

    meta = {"size": 1, "sha256": None}
    sdxl = dict.fromkeys(
        [
            "model_index.json",
            "sd_xl_base_1.0.safetensors",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/openvino_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "README.md",
            "images/x.png",
        ],
        meta,
    )
    assert select_files(sdxl) == [
        "model_index.json",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    llama = dict.fromkeys(
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "tokenizer.model",
            "tokenizer.json",
            "original/consolidated.00.pth",
            ".gitattributes",
        ],
        meta,
    )
    assert select_files(llama) == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer.model",
    ]
    # MLCommons' GPT-J checkpoint-final/: PyTorch shards only, beside the trainer's own pickles (never read)
    gptj = dict.fromkeys(
        [
            "config.json",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json",
            "training_args.bin",
            "rng_state.pth",
            "optimizer.pt",
            "trainer_state.json",
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
        ],
        meta,
    )
    assert select_files(gptj) == [
        "config.json",
        "merges.txt",
        "tokenizer_config.json",
        "trainer_state.json",
        "vocab.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ]


def test_pin_url_writes_a_dataset_and_its_sha256(project: Path, tmp_path: Path):
    from mlperf_round.params import load_params

    (tmp_path / "www").mkdir()
    (tmp_path / "www/cnn_eval.json").write_text(json.dumps([{"instruction": "x", "input": "y", "output": "z"}]))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cnn_eval.json"
    try:
        early = run([sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--url", url], project, check=False)
        run([sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--url", url, "--into", "calibration"], project)
        proc = run(
            [sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--url", url + ".gone"], project, check=False
        )
        run([sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--url", url], project)
    finally:
        server.shutdown()
    # the dataset before its calibration list would leave a round that cannot download: refused, params unchanged
    assert early.returncode != 0 and "calibration_url: source 'url' needs the calibration list" in early.stderr
    ds = load_params(project / "params.yaml").benchmarks["gptj"].dataset
    assert ds.source == "url" and ds.url == url == ds.calibration_url
    assert (
        ds.sha256 == hashlib.sha256((tmp_path / "www/cnn_eval.json").read_bytes()).hexdigest() == ds.calibration_sha256
    )
    assert proc.returncode == 3 and "HTTP 404" in proc.stderr.strip().splitlines()[-1]


def test_calibration_on_a_cuda_device_this_machine_lacks_is_one_line(project: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: calibration.device cuda is valid here")
    edit_params(
        project,
        lambda d: (
            d["benchmarks"]["gptj"]["model"]["tiny"].update(train_steps=0),
            d["benchmarks"]["gptj"]["calibration"].update(device="cuda"),
        ),
    )
    _download(project, check=True)
    proc = run([sys.executable, "-m", "stages.calibrate", "gptj"], project, check=False)
    assert proc.returncode == 3 and _last_line(proc).endswith(
        "benchmarks.gptj.calibration.device: cuda was asked for, but torch sees no CUDA device"
    ), proc.stderr[-2000:]
    assert not (project / "artifacts/gptj/calibrate/stats").exists()


def test_the_error_after_a_progress_bar_starts_a_line_of_its_own(project: Path, tmp_path: Path):
    """tqdm ends a bar with a carriage return; a log reader splitting on newlines must still find the error."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www/set.json").write_bytes(b"[]" * 300_000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    edit_params(
        project,
        lambda d: (
            d["benchmarks"]["gptj"]["model"]["tiny"].update(train_steps=0),
            d["benchmarks"]["gptj"].update(
                dataset={
                    "source": "url",
                    "url": f"http://127.0.0.1:{server.server_address[1]}/set.json",
                    "sha256": "0" * 64,
                    "calibration_url": "http://127.0.0.1:9/never.json",
                    "calibration_sha256": "0" * 64,
                }
            ),
        ),
    )
    try:  # bytes: text mode would turn the bar's carriage returns into newlines
        proc = subprocess.run(
            [sys.executable, "-m", "stages.download", "gptj"], cwd=project, env=env(), capture_output=True, timeout=600
        )
    finally:
        server.shutdown()
    assert proc.returncode == 3 and b"set.json:" in proc.stderr, proc.stderr[-800:]  # the bar ran
    assert b"\rerror:" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith(
        b"error: download@gptj: http://"
    )
