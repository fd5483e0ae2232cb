"""quantize: the entry's recipe applied with Model Optimizer from the calibration statistics."""

import json
import sys

from mlperf_round import benchmarks
from mlperf_round.optimization import calibration, quantization
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bench, recipe = benchmarks.get(ctx.benchmark_name), ctx.entry.recipe
    source = ctx.input("download", ctx.benchmark_name)
    stats = calibration.load_stats(ctx.input("calibrate", ctx.benchmark_name))
    model = bench.load_model(source / "model")
    params_before = sum(p.numel() for p in model.parameters())
    model, layers = quantization.quantize(model, recipe.precision, stats, recipe.smoothquant_alpha, recipe.quantize_lm_head)
    quantized = bool(layers["quantized_layers"])
    quantization.save(model, ctx.out / "model", quantized)
    metrics = {"parameters": params_before, "quantized_layers": len(layers["quantized_layers"]),
               "skipped_layers": len(layers["skipped_layers"])}
    if quantized:
        metrics.update(quantization.quantizer_summary(model))
        deployable = quantization.export_deployable(model, ctx.out / "deployable")
        metrics["deployable_bytes"] = deployable["deployable_bytes"]
    (ctx.out / "layers.json").write_text(json.dumps(layers, indent=1))
    ctx.tracker.log_artifact(ctx.out / "layers.json")
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("quantize", "entry", body))
