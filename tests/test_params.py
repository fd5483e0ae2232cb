"""params.yaml is validated before any work: bad input is exit 2, one line naming the key, nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from mlperf_round.errors import ParamsError
from mlperf_round.params import load_params, parse_params

from .conftest import ROOT, edit_params, run


def endpoint(server: str, **settings) -> dict:
    return {"backend": "endpoint", "max_batch_size": 8, "endpoint": {"server": server, **settings}}


def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.entries["gptj-99"].mlperf_id == "gptj-99"
    assert p.round.version == "v5.0"


def test_params_as_dvc_exp_rewrites_them_are_read_as_dvc_reads_them(tmp_path: Path):
    """`dvc exp run -S` re-dumps params.yaml with YAML 1.2 quoting: `2:4` and `1e-3` come back unquoted."""
    text = (
        (ROOT / "params.yaml").read_text().replace('sparsity: "2:4"', "sparsity: 2:4").replace("lr: 0.002", "lr: 2e-3")
    )
    assert "sparsity: 2:4" in text and "lr: 2e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    p = load_params(tmp_path / "params.yaml")
    assert (
        p.entries["llama2-70b-sparse"].recipe.sparsity == "2:4"
        and p.entries["gptj-99-pruned"].recipe.distill.lr == 0.002
    )


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["entries"]["gptj-99"]["recipe"].update(precison="fp8"), "entries.gptj-99.recipe.precison"),
        (
            lambda d: d["entries"]["gptj-99"]["build"].update(max_batch_size="eight"),
            "entries.gptj-99.build.max_batch_size",
        ),
        (lambda d: d["benchmarks"].update(resnet50={}), "benchmarks.resnet50"),
        (lambda d: d["entries"]["gptj-99"]["recipe"].update(precision="int3"), "entries.gptj-99.recipe.precision"),
        (lambda d: d["benchmarks"]["gptj"]["dataset"].update(calibration_size=1000), "dataset.calibration_size"),
        (
            lambda d: d["round"].update(version="v6.0"),
            "benchmarks.gptj: gptj is not a benchmark of MLPerf Inference v6.0",
        ),
        (
            lambda d: (
                d["entries"].pop("gptj-99"),
                d["entries"].pop("gptj-99-pruned"),
                d["benchmarks"].pop("gptj"),
                d["round"].update(version="v6.1"),
                d["entries"]["llama2-70b-99p9"].update(accuracy_target=0.99),
            ),
            "entries.llama2-70b-99p9: llama2-70b-99 is not a benchmark of MLPerf Inference v6.1",
        ),
        (
            lambda d: (
                d["entries"].pop("gptj-99"),
                d["entries"].pop("gptj-99-pruned"),
                d["benchmarks"].pop("gptj"),
                d["round"].update(version="v6.1"),
            ),
            "entries.stable-diffusion-xl: stable-diffusion-xl is not a datacenter benchmark of MLPerf Inference v6.1 "
            "(it is one for: edge, datacenter,edge; set round.system.system_type)",
        ),
        (
            lambda d: d["entries"]["gptj-99"].update(scenarios=["Offline"]),
            "entries.gptj-99.scenarios: v5.0 datacenter needs Server for gptj-99 (have: Offline)",
        ),
        (
            lambda d: d["round"].update(mlcommons_inference="/nonexistent"),
            "round.mlcommons_inference: /nonexistent is not a clone of mlcommons/inference",
        ),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["entries"]["gptj-99-pruned"].update(division="closed"), "entries.gptj-99-pruned.recipe.prune"),
        (
            lambda d: d["entries"]["llama2-70b-sparse"]["recipe"].update(prune={"layers_kept": 1}),
            "entries.llama2-70b-sparse.recipe.prune: pruning supports gptj, not llama2-70b",
        ),
        (
            lambda d: d["entries"]["gptj-99-pruned"]["recipe"].update(prune={"layers_kept": 0, "heads_kept": 0}),
            "entries.gptj-99-pruned.recipe.distill: distillation recovers a pruned model",
        ),
        (
            lambda d: d["entries"]["gptj-99-pruned"]["recipe"]["distill"].update(temperature=0),
            "entries.gptj-99-pruned.recipe.distill.temperature",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"]["recipe"].update(sparsity="2:4"),
            "entries.llama2-70b-99p9.recipe.sparsity",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"]["loadgen"]["Server"].update(target_latency_ms=5),
            "entries.llama2-70b-99p9.loadgen.Server.target_latency_ms: llama2-70b is bounded by ttft_latency_ms and "
            "tpot_latency_ms",
        ),
        (
            lambda d: (
                d["round"].update(smoke=False),
                d["entries"]["llama2-70b-99p9"]["loadgen"]["Server"].update(ttft_latency_ms=500),
            ),
            "entries.llama2-70b-99p9.loadgen.Server.ttft_latency_ms: MLPerf fixes it at 2000",
        ),
        (
            lambda d: d["benchmarks"]["llama2-70b"]["model"]["tiny"].update(num_key_value_heads=3),
            "benchmarks.llama2-70b.model.tiny",
        ),
        (
            lambda d: d["benchmarks"]["llama2-70b"]["model"]["tiny"].update(n_layer=2),
            "benchmarks.llama2-70b.model.tiny.n_layer",
        ),
        (
            lambda d: d["entries"].update({"llama2-70b-99.9": d["entries"].pop("llama2-70b-99p9")}),
            "entries.llama2-70b-99.9: entry names are lower-case letters, digits, '_' or '-' (no '.')",
        ),
        (
            lambda d: d["entries"]["stable-diffusion-xl"].update(accuracy_target=0.99),
            "entries.stable-diffusion-xl.accuracy_target: stable-diffusion-xl's target is range",
        ),
        (
            lambda d: d["entries"]["stable-diffusion-xl"]["recipe"].update(precision="fp8"),
            "entries.stable-diffusion-xl.recipe.precision: fp8 is not a recipe of stable-diffusion-xl",
        ),
        (
            lambda d: d["entries"]["stable-diffusion-xl"]["recipe"].update(deepcache={"interval": 3}),
            "entries.stable-diffusion-xl.recipe.deepcache: skipping UNet blocks changes the computation",
        ),
        (
            lambda d: d["entries"]["stable-diffusion-xl"]["recipe"].update(export_hf=True),
            "entries.stable-diffusion-xl.recipe.export_hf: the export is of a quantized LLM",
        ),
        (
            lambda d: d["entries"]["gptj-99-pruned"]["recipe"].update(sparsity="2:4"),
            "entries.gptj-99-pruned.recipe.sparsity: a pruned, quantized model's 2:4 checkpoint is compressed from "
            "the export",
        ),
        (
            lambda d: d["entries"]["gptj-99"]["recipe"].update(deepcache={"interval": 3}),
            "entries.gptj-99.recipe.deepcache: DeepCache caches UNet features; gptj has no UNet",
        ),
        (
            lambda d: d["benchmarks"]["stable-diffusion-xl"]["calibration"].update(steps_collected=30),
            "benchmarks.stable-diffusion-xl.calibration.steps_collected: 30 is more than total_steps 20",
        ),
        (
            lambda d: d["benchmarks"]["stable-diffusion-xl"]["model"]["tiny"].update(image_size=60),
            "benchmarks.stable-diffusion-xl.model.tiny.image_size: 60 is not a multiple of 8",
        ),
        (
            lambda d: d["entries"]["gptj-99"]["build"].update(compile="default"),
            "entries.gptj-99.build.compile: a text-to-image setting; the gptj engine does not take it",
        ),
        (
            lambda d: d["entries"]["stable-diffusion-xl"]["build"].update(kernels="int4"),
            "entries.stable-diffusion-xl.build.kernels",
        ),
        (
            lambda d: d["entries"]["gptj-99"].update(scenarios=["Server"], division="open"),
            "entries.gptj-99.loadgen.Server.target_qps: auto is a fraction of this entry's Offline throughput",
        ),
        (
            lambda d: d["entries"]["gptj-99"]["loadgen"]["Server"].update(target_qps=12, auto_fraction=0.5),
            "entries.gptj-99.loadgen.Server.auto_fraction: applies to target_qps auto only; target_qps is 12",
        ),
        (
            lambda d: d["entries"]["gptj-99"]["loadgen"]["Server"].update(target_qps="fast"),
            "entries.gptj-99.loadgen.Server.target_qps",
        ),
        (
            lambda d: d["entries"]["gptj-99"]["loadgen"]["Server"].update(auto_fraction=1.5),
            "entries.gptj-99.loadgen.Server.auto_fraction",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build=endpoint("trtllm-serve")),
            "entries.llama2-70b-99p9.build.endpoint: trtllm-serve is not on the PATH, so this machine cannot start "
            "TensorRT-LLM (NVIDIA GPUs)",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build=endpoint("vllm")),
            "entries.llama2-70b-99p9.build.endpoint: vllm is not on the PATH",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build=endpoint("sglang")),
            "entries.llama2-70b-99p9.build.endpoint: sglang is not installed in",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build={**endpoint("transformers"), "kernels": "native"}),
            "entries.llama2-70b-99p9.build.kernels: a torch backend setting; the endpoint backend takes build.endpoint",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build={"endpoint": {"server": "vllm"}}),
            "entries.llama2-70b-99p9.build.endpoint: the endpoint backend's settings; this entry's backend is torch",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build=endpoint("transformers")),
            "entries.llama2-70b-99p9.build.endpoint.model: export serves Model Optimizer's unified checkpoint of a "
            "quantized model; set recipe.export_hf: true",
        ),
        (
            lambda d: d["entries"]["stable-diffusion-xl"].update(build=endpoint("transformers")),
            "entries.stable-diffusion-xl.build.backend: endpoint serves text generation, not stable-diffusion-xl",
        ),
        (
            lambda d: d["entries"]["gptj-99"].update(
                build=endpoint("vllm", url="http://127.0.0.1:8000"), recipe={"precision": "fp32"}
            ),
            "entries.gptj-99.build.backend: the endpoint client decodes greedily, and "
            "benchmarks.gptj.generation.num_beams is 4",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(build={**endpoint("transformers"), "kv_cache": "fp8"}),
            "entries.llama2-70b-99p9.build.kv_cache: transformers serve has no FP8 KV cache",
        ),
        (
            lambda d: d["entries"]["llama2-70b-99p9"].update(
                build=endpoint("vllm", url="http://127.0.0.1:8000", launch=["vllm", "serve", "{model}"])
            ),
            "entries.llama2-70b-99p9.build.endpoint: url and launch: give one",
        ),
        (
            lambda d: d["entries"]["gptj-99"].update(system="h200x1"),
            "entries.gptj-99.system: 'h200x1' is not a system of the round",
        ),
        (
            lambda d: d["round"].update(systems={"h200x1": {"name": "b200"}}),
            "systems.h200x1.name: 'b200'; a system is named by its key",
        ),
        (lambda d: d["round"].update(systems={"cpu-smoke": {}}), "systems.cpu-smoke: it is round.system already"),
        (
            lambda d: (
                d["round"].update(systems={"edge-box": {"system_type": "edge"}}),
                d["entries"]["llama2-70b-99p9"].update(system="edge-box"),
            ),
            "llama2-70b-99.9 is not a edge benchmark of MLPerf Inference v5.0 (it is one for: datacenter, "
            "datacenter,edge; set round.systems.edge-box.system_type)",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "unknown-benchmark",
        "unknown-precision",
        "calibration-too-large",
        "benchmark-not-in-version",
        "id-not-in-version",
        "sdxl-not-datacenter-in-v6",
        "closed-scenario-missing",
        "not-a-checker-clone",
        "unknown-top-level",
        "prune-in-closed",
        "prune-on-llama",
        "distill-without-prune",
        "distill-temperature-zero",
        "sparsity-in-closed",
        "wrong-latency-kind",
        "official-bound-changed",
        "gqa-shape",
        "gptj-knob-in-llama",
        "dot-in-entry-name",
        "sdxl-target-not-range",
        "sdxl-fp8",
        "deepcache-in-closed",
        "export-of-sdxl",
        "pruned-sparse-without-export",
        "deepcache-on-llm",
        "calibration-window",
        "sdxl-odd-size",
        "compile-on-llm",
        "unknown-kernels",
        "auto-qps-without-offline",
        "fraction-with-fixed-qps",
        "qps-not-a-number",
        "fraction-over-one",
        "trtllm-serve-not-here",
        "vllm-not-here",
        "sglang-not-here",
        "torch-knob-on-endpoint",
        "endpoint-section-on-torch",
        "quantized-export-without-export-hf",
        "endpoint-for-images",
        "endpoint-with-beams",
        "fp8-kv-on-transformers",
        "url-and-launch",
        "unknown-system",
        "system-renamed",
        "system-twice",
        "closed-scenarios-of-the-entrys-system",
    ],
)
def test_bad_params_name_the_key(edit, key):
    data = shipped()
    edit(data)
    with pytest.raises(ParamsError) as err:
        parse_params(data)
    message = str(err.value)
    assert key in message
    assert "\n" not in message


def test_every_knob_has_a_description():
    from pydantic import BaseModel

    from mlperf_round import params as schema

    models = [
        v
        for v in vars(schema).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == schema.__name__
    ]
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_loadgen_release_must_carry_the_rounds_seeds():
    from mlperf_round.params import check_loadgen

    check_loadgen("v5.0")
    with pytest.raises(ParamsError, match="mlcommons-loadgen==6.0.17"):
        check_loadgen("v6.1")


@pytest.mark.parametrize(
    "stage, key, edit",
    [
        ("download", "gptj", lambda d: d["benchmarks"]["gptj"]["model"].update(sauce="tiny")),
        ("quantize", "gptj-99", lambda d: d["entries"]["gptj-99"]["recipe"].update(precision=8)),
        ("calibrate", "gptj", lambda d: d["benchmarks"]["gptj"]["dataset"].update(size=4)),
        ("performance", "nope", lambda d: None),
    ],
)
def test_stage_refuses_bad_params_before_work(project: Path, stage, key, edit):
    edit_params(project, edit)
    proc = run([sys.executable, "-m", f"stages.{stage}", key], project, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {stage}@"), proc.stderr
    assert not (project / "artifacts").exists()
    assert not (project / "mlruns").exists()


def test_stage_arguments_are_checked(project: Path):
    proc = run([sys.executable, "-m", "stages.download"], project, check=False)
    assert proc.returncode == 2
    assert "key" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
