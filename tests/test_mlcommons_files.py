"""MLCommons' files as they are shipped, built here in their exact formats and served from loopback.

OpenOrca (Llama 2 70B) is a pandas pickle; MLCommons' GPT-J checkpoint is a folder of PyTorch
`.bin` shards beside the trainer's own pickles. The round reads both without running code.
(SDXL's caption-id calibration list: tests/test_download.py, with the rest of SDXL's files.)
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import pickle
import sys
import threading
from pathlib import Path

import pytest

from mlperf_round.benchmarks import gptj, llama2
from mlperf_round.benchmarks.gptj import TinyGPTJ

from .conftest import edit_params, run


class _Payload:
    """Unpickling this writes a file: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.fixture
def www(tmp_path: Path):
    """A plain HTTP file server on loopback over tmp_path/www: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _openorca_frame(rows: list[dict], tok):
    """The columns of MLCommons' processed OpenOrca pickle, as its processing script writes them."""
    import pandas as pd

    out = [tok(r["output"], add_special_tokens=False)["input_ids"] for r in rows]
    return pd.DataFrame(
        {
            "id": [r["id"] for r in rows],
            "system_prompt": [r["system_prompt"] for r in rows],
            "question": [r["question"] for r in rows],
            "input": [r["input"] for r in rows],
            "output": [r["output"] for r in rows],
            "tok_input": [r["tok_input"] for r in rows],
            "tok_input_length": [len(r["tok_input"]) for r in rows],
            "tok_output": out,
            "tok_output_length": [len(o) for o in out],
        }
    )


def test_openorca_pickles_as_shipped_are_read_and_one_that_runs_code_is_refused(project: Path, tmp_path: Path, www):
    root, url = www
    llama2.build_tokenizer(tmp_path / "tok")  # the tokenizer the tiny round builds: the same token ids
    tok = llama2.load_tokenizer(tmp_path / "tok")
    rows, calib = llama2.generate_dataset(6, 11, tok), llama2.generate_dataset(3, 12, tok)
    _openorca_frame(rows, tok).to_pickle(root / "open_orca_gpt4_tokenized_llama.sampled_24576.pkl")
    _openorca_frame(calib, tok).to_pickle(
        root / "open_orca_gpt4_tokenized_llama.calibration_1000.pkl.gz", compression="gzip"
    )
    names = (
        "open_orca_gpt4_tokenized_llama.sampled_24576.pkl",
        "open_orca_gpt4_tokenized_llama.calibration_1000.pkl.gz",
    )

    def point(dataset: str, calibration: str) -> None:
        def edit(d):
            d["benchmarks"]["llama2-70b"]["dataset"].update(
                source="url",
                url=f"{url}/{dataset}",
                sha256=_sha(root / dataset),
                calibration_url=f"{url}/{calibration}",
                calibration_sha256=_sha(root / calibration),
            )
            d["benchmarks"]["llama2-70b"]["model"]["tiny"]["train_steps"] = 10  # the data is under test, not the model

        edit_params(project, edit)

    marker = tmp_path / "ran"
    with open(root / "evil.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    point(names[0], "evil.pkl")
    proc = run([sys.executable, "-m", "stages.download", "llama2-70b"], project, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 3 and "evil.pkl: refused to unpickle pathlib.Path.write_text" in last, proc.stderr[-2000:]
    assert not marker.exists()
    assert not (project / "artifacts/llama2-70b/download/source").exists()  # nothing half-written is published

    point(*names)
    run([sys.executable, "-m", "stages.download", "llama2-70b"], project)
    source = project / "artifacts/llama2-70b/download/source"
    samples = llama2.load_samples(source / "dataset.json")
    assert [(s.prompt, s.reference, list(s.input_ids)) for s in samples] == [
        (r["input"], r["output"], r["tok_input"]) for r in rows
    ]  # MLCommons' token ids served as given
    assert [s.prompt for s in llama2.load_samples(source / "calibration.json")] == [r["input"] for r in calib]
    assert not (source / "shipped").exists()


def _mlcommons_gptj_checkpoint(folder: Path, marker: Path):
    """The layout of MLCommons' GPT-J checkpoint-final/: PyTorch shards with their index, tokenizer files, and the
    trainer's own pickles (training_args.bin holds code here: it must never be opened)."""
    import torch

    gptj.build_tokenizer(folder)
    gptj.build_tiny_model(TinyGPTJ(train_steps=0), gptj.load_tokenizer(folder), folder / "st")
    model = gptj.load_model(folder / "st")
    model.config.save_pretrained(folder)
    for p in (folder / "st").iterdir():
        p.unlink()
    (folder / "st").rmdir()
    state = model.state_dict()  # sharded as transformers' torch.save path writes it (transformers 5 writes safetensors)
    keys = sorted(state)
    parts = [keys[i::3] for i in range(3)]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"pytorch_model-{i:05d}-of-{len(parts):05d}.bin"
        torch.save({k: state[k].contiguous() for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    with open(folder / "training_args.bin", "wb") as f:
        pickle.dump(_Payload(marker), f)
    torch.save({"step": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return model


def test_mlcommons_gptj_checkpoint_of_pytorch_shards_is_pinned_by_path_and_served(
    project: Path, tmp_path: Path, monkeypatch
):
    import torch

    from mlperf_round.params import load_params

    monkeypatch.setenv("MLPERF_ROUND_STATE", str(tmp_path / "state"))
    ckpt, marker = tmp_path / "gpt-j" / "checkpoint-final", tmp_path / "ran"
    ckpt.mkdir(parents=True)
    original = _mlcommons_gptj_checkpoint(ckpt, marker)
    shards = sorted(p.name for p in ckpt.glob("pytorch_model-*.bin"))
    assert len(shards) > 1 and (ckpt / "pytorch_model.bin.index.json").is_file()

    run([sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--path", str(ckpt)], project)
    model = load_params(project / "params.yaml").benchmarks["gptj"].model
    assert model.source == "local" and model.path == str(ckpt)
    assert set(model.hf.files) >= {*shards, "pytorch_model.bin.index.json", "config.json"}
    assert not {"training_args.bin", "rng_state.pth"} & set(model.hf.files)

    run([sys.executable, "-m", "stages.download", "gptj"], project)
    from mlperf_round import checkpoints

    assert checkpoints.resolve(project / "artifacts/gptj/download/source") == ckpt  # referenced where it lies
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # the model the shards were written from, tensor for tensor
        assert torch.equal(gptj.load_model(ckpt)(input_ids=ids).logits, original(input_ids=ids).logits)
    assert not marker.exists()

    # a shard that carries code: one line naming it, from the first stage that reads the weights, and nothing runs
    victim = ckpt / shards[0]
    with open(victim, "wb") as f:
        pickle.dump({"transformer.wte.weight": _Payload(marker)}, f)
    run([sys.executable, "-m", "mlperf_round.cli", "pin", "gptj", "--path", str(ckpt)], project)
    run([sys.executable, "-m", "stages.download", "gptj"], project)
    proc = run([sys.executable, "-m", "stages.calibrate", "gptj"], project, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 3 and f"{victim}: refused by torch.load(weights_only=True)" in last, proc.stderr[-2000:]
    assert not marker.exists()
