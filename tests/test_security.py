"""Security: weights from safetensors only, a token never leaves the process that uses it, servers on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import sys
import threading
from pathlib import Path

import pytest
import yaml

from mlperf_round.benchmarks import gptj
from mlperf_round.errors import InputError, ParamsError
from mlperf_round.params import TinyGPTJ, parse_params

from .conftest import ROOT, edit_params, run

REPO, REV = "example/gated-gpt-j", "89abcdef0123456789abcdef0123456789abcdef"
CANARY = "hf_canary_5f0c1d2e3b4a59687766554433221100"


class _Payload:
    """Unpickling this writes a file: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.CKPT", "unet/diffusion_pytorch_model.bin"])
def test_params_refuse_pickle_weights_before_anything_is_fetched(name):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["benchmarks"]["gptj"]["model"].update(source="hf", hf={"repo": REPO, "revision": REV, "files": {name: "0" * 64}})
    with pytest.raises(ParamsError, match=rf"benchmarks\.gptj\.model\.hf\.files\.{name}: a pickle file runs code"):
        parse_params(data)


def test_a_checkpoint_of_pickle_weights_is_refused_unopened(tmp_path: Path):
    model_dir = tmp_path / "model"
    gptj.build_tokenizer(tmp_path / "tok")
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(tmp_path / "tok"), model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    with open(model_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": _Payload(marker)}, f)
    with pytest.raises(InputError, match=r"pytorch_model\.bin: pickle weights are refused"):
        gptj.load_model(model_dir)
    from mlperf_round.optimization import quantization

    with pytest.raises(InputError, match=r"pytorch_model\.bin: pickle weights are refused"):
        quantization.load(model_dir)
    assert not marker.exists()


@pytest.fixture
def gated_hub(tmp_path: Path):
    """A hub that serves the repository only with the right bearer token, as a gated repository is served, and
    sends the weights to a CDN on another port (as the hub redirects large files), which records what it was sent."""
    files = tmp_path / "hub" / REPO / "resolve" / REV
    gptj.build_tokenizer(files)
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(files), files)
    seen: list[str] = []
    cdn_seen: list[str] = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Cdn(Quiet):
        def do_GET(self):
            cdn_seen.append(str(self.headers))
            super().do_GET()

    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Cdn, directory=str(tmp_path / "hub")))

    class Gated(Quiet):
        def do_GET(self):
            seen.append(self.headers.get("Authorization", ""))
            if self.headers.get("Authorization") != f"Bearer {CANARY}":
                self.send_error(401, "Unauthorized")
            elif self.path.endswith(".safetensors"):
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{cdn.server_address[1]}{self.path}")
                self.end_headers()
            else:
                super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Gated, directory=str(tmp_path / "hub")))
    for s in (server, cdn):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.iterdir() if p.is_file()}
    yield f"http://127.0.0.1:{server.server_address[1]}", sums, seen, cdn_seen
    server.shutdown()
    cdn.shutdown()


def test_hf_token_reaches_the_hub_and_nothing_else(project: Path, gated_hub, monkeypatch):
    endpoint, sums, seen, cdn_seen = gated_hub
    edit_params(project, lambda d: d["benchmarks"]["gptj"]["model"].update(
        source="hf", hf={"repo": REPO, "revision": REV, "files": sums, "endpoint": endpoint}))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    refused = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert refused.returncode == 3 and refused.stderr.strip().splitlines()[-1].endswith(
        "download failed (HTTP 401 Unauthorized); a gated repository needs HF_TOKEN"), refused.stderr

    monkeypatch.setenv("HF_TOKEN", CANARY)
    procs = [run([sys.executable, "-m", f"stages.{stage}", "gptj"], project) for stage in ("download", "calibrate")]
    assert seen.count(f"Bearer {CANARY}") == len(sums)  # the token was used, for the hub's files only
    assert len(cdn_seen) == 1 and CANARY not in cdn_seen[0]  # the weights came from the CDN, without the token
    leaks = [str(p.relative_to(project)) for p in project.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaks == [], leaks  # not in mlruns/ (the SQLite store, artifacts), artifacts/ or .dvc/
    assert (project / "mlruns/mlflow.db").is_file()
    for proc in [refused, *procs]:
        assert CANARY not in proc.stdout + proc.stderr


def test_hf_token_is_not_sent_over_plain_http_to_a_remote_host(project: Path, monkeypatch):
    edit_params(project, lambda d: d["benchmarks"]["gptj"]["model"].update(
        source="hf", hf={"repo": REPO, "revision": REV, "files": {"config.json": "0" * 64}, "endpoint": "http://hub.example"}))
    monkeypatch.setenv("HF_TOKEN", CANARY)
    proc = run([sys.executable, "-m", "stages.download", "gptj"], project, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("endpoint http://hub.example is not https, and HF_TOKEN is only "
                                                         "sent over https") and CANARY not in proc.stderr


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path: Path):
    model_dir = tmp_path / "model"
    gptj.build_tokenizer(tmp_path / "tok")
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(tmp_path / "tok"), model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        gptj.load_model(model_dir)
    assert str(err.value).startswith(f"{weights}: not a whole safetensors file") and "\n" not in str(err.value)
