"""Security: weights from safetensors (or PyTorch shards read with weights_only), a token never leaves the process
that uses it, servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path

import pytest
import yaml

from mlperf_round.benchmarks import gptj
from mlperf_round.benchmarks.gptj import TinyGPTJ
from mlperf_round.errors import InputError, ParamsError
from mlperf_round.params import parse_params

from .conftest import ROOT, edit_params, run

REPO, REV = "example/gated-gpt-j", "89abcdef0123456789abcdef0123456789abcdef"
CANARY = "hf_canary_5f0c1d2e3b4a59687766554433221100"


class _Payload:
    """Unpickling this writes a file: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.mark.parametrize("name", ["model.pt", "weights.CKPT", "training_args.bin", "unet/diffusion_pytorch_model.bin"])
def test_params_refuse_pickle_weights_before_anything_is_fetched(name):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["benchmarks"]["gptj"]["model"].update(
        source="hf", hf={"repo": REPO, "revision": REV, "files": {name: "0" * 64}}
    )
    with pytest.raises(ParamsError, match=rf"benchmarks\.gptj\.model\.hf\.files\.{name}: a pickle file runs code"):
        parse_params(data)


def test_pickle_weights_are_refused_or_read_with_weights_only_and_never_run(tmp_path: Path):
    """A directory of other pickles is refused unopened; transformers' pytorch_model*.bin shards are opened with
    torch.load(weights_only=True), which refuses the payload: one line naming the shard, and the code never runs."""
    model_dir = tmp_path / "model"
    gptj.build_tokenizer(tmp_path / "tok")
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(tmp_path / "tok"), model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    with open(model_dir / "weights.pt", "wb") as f:
        pickle.dump({"transformer.wte.weight": _Payload(marker)}, f)
    with pytest.raises(InputError, match=r"weights\.pt: pickle weights are refused"):
        gptj.load_model(model_dir)
    (model_dir / "weights.pt").rename(model_dir / "pytorch_model.bin")
    from mlperf_round.optimization import quantization

    for load in (gptj.load_model, quantization.load):
        with pytest.raises(InputError, match=r"pytorch_model\.bin: refused by torch\.load\(weights_only=True\)") as err:
            load(model_dir)
        assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.fixture
def gated_hub(tmp_path: Path, monkeypatch):
    """A gated repository on a loopback Hub (tests/hub.py): served only with the right bearer token, its weights
    redirected to a CDN on another port, every request's Authorization header recorded."""
    from .hub import LocalHub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MLPERF_ROUND_STATE", str(tmp_path / "state"))
    files = tmp_path / "repo"
    gptj.build_tokenizer(files)
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(files), files)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.iterdir() if p.is_file()}
    with LocalHub(token=CANARY) as hub:
        hub.add_repo(REPO, files, commit=REV, gated=True)
        yield hub, sums


def test_hf_token_reaches_the_hub_and_nothing_else(project: Path, gated_hub, monkeypatch, tmp_path: Path):
    hub, sums = gated_hub
    edit_params(
        project,
        lambda d: d["benchmarks"]["gptj"]["model"].update(
            source="hf", hf={"repo": REPO, "revision": REV, "files": sums, "endpoint": hub.endpoint}
        ),
    )
    monkeypatch.delenv("HF_TOKEN", raising=False)
    refused = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert refused.returncode == 3 and refused.stderr.strip().splitlines()[-1].endswith(
        "gated repository on " + hub.endpoint + "; set HF_TOKEN to a token that has been granted access"
    ), refused.stderr
    assert all(r[3] is None for r in hub.requests)  # no saved login was sent either

    hub.requests.clear()
    monkeypatch.setenv("HF_TOKEN", CANARY)
    procs = [run([sys.executable, "-m", f"stages.{stage}", "gptj"], project) for stage in ("download", "calibrate")]
    to_hub = [r for r in hub.requests if r[0] == "hub"]
    to_cdn = [r for r in hub.requests if r[0] == "cdn"]
    assert to_hub and all(r[3] == f"Bearer {CANARY}" for r in to_hub)  # the token was used, on the Hub
    assert any(r[2].endswith(".safetensors") for r in to_cdn) and all(r[3] is None for r in to_cdn)  # never on the CDN
    leaks = [
        str(p.relative_to(tmp_path))
        for root in (project, tmp_path / "hf-cache", tmp_path / "state")
        for p in root.rglob("*")
        if p.is_file() and CANARY.encode() in p.read_bytes()
    ]
    assert leaks == [], leaks  # not in mlruns/ (the SQLite store, artifacts), artifacts/, .dvc/ or the Hub cache
    assert (project / "mlruns/mlflow.db").is_file()
    for proc in [refused, *procs]:
        assert CANARY not in proc.stdout + proc.stderr


def test_hf_token_is_not_sent_over_plain_http_to_a_remote_host(project: Path, monkeypatch):
    edit_params(
        project,
        lambda d: d["benchmarks"]["gptj"]["model"].update(
            source="hf",
            hf={"repo": REPO, "revision": REV, "files": {"config.json": "0" * 64}, "endpoint": "http://hub.example"},
        ),
    )
    monkeypatch.setenv("HF_TOKEN", CANARY)
    proc = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("endpoint http://hub.example is not https, and HF_TOKEN is only sent over https")
        and CANARY not in proc.stderr
    )


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path: Path):
    model_dir = tmp_path / "model"
    gptj.build_tokenizer(tmp_path / "tok")
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(tmp_path / "tok"), model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        gptj.load_model(model_dir)
    assert str(err.value).startswith(f"{weights}: not a whole safetensors file") and "\n" not in str(err.value)
