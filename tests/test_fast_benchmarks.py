"""The GPU benchmarks of issues 11 and 12 run their whole path at tiny shapes, so a lent GPU's minutes go to figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / script), *args, "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / script.replace(".py", ".json")).read_text())


# GPT-J's native FP8 beam search is slow on CPUs whose _scaled_mm is (400x under fp32 on an AMX Xeon): 8 queries
@pytest.mark.parametrize("model, queries", [("llama2-70b", 24), ("gptj", 8)])
def test_fast_llm_benchmark_at_tiny_shape(tmp_path, model, queries):
    r = run("fast_llm.py", "--model", model, "--shape", "tiny", "--queries", str(queries), out=tmp_path / "out")
    perf = r["round_engine_loadgen_offline"]
    assert perf["valid"] and perf["samples_per_s"] > 0
    assert perf["output_tokens"] == perf["output_tokens_expected"] > 0  # every query ran to its fixed length
    assert r["engine"]["kernels"] == "native" and r["engine"]["scheduler"] == (
        "inflight" if model == "llama2-70b" else "static"
    )
    assert r["limits"]["gemm_tflops_fp8"] > 0 and 0 < perf["share_of_fp8_gemm_ceiling"]
    assert r["baseline_transformers_generate"]["samples_per_s"] > 0 and r["ratio_samples_per_s"] > 0
    if model == "gptj":  # the round's calibrate and quantize made the FP8 layers
        assert r["build"]["native_fp8_linears"] == 12 and r["build"]["fake_quant_layers_left"] == 0


def test_fast_sdxl_benchmark_at_tiny_shape(tmp_path):
    r = run(
        "fast_sdxl.py",
        "--shape",
        "tiny",
        "--images",
        "16",
        "--batch",
        "8",
        "--baseline-images",
        "2",
        out=tmp_path / "out",
    )
    flops = r["unet_flops_per_image"]
    assert 0 < flops["deepcache"] < flops["full"]
    for name in ("closed_int8_sq", "open_deepcache_fp16"):
        perf = r[name]
        assert perf["valid"] and perf["samples_per_s"] > 0 and perf["ratio_vs_eager"] > 0
        assert perf["psnr_vs_eager_db"] > 25, perf  # INT8 / DeepCache against the fp16 (here fp32) eager images
