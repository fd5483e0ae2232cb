"""quantize: the entry's recipe with Model Optimizer: 2:4 sparsity (open division) then quantization.

Quantization takes its statistics from the calibrate stage. A sparse model's activations are
not the dense model's, so a sparse recipe re-collects them on the same calibration list.
"""

import copy
import json
import sys

from mlperf_round import benchmarks
from mlperf_round.optimization import calibration, quantization, sparsity
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bench, recipe = benchmarks.get(ctx.benchmark_name), ctx.entry.recipe
    source = ctx.input("download", ctx.benchmark_name)
    stats = calibration.load_stats(ctx.input("calibrate", ctx.benchmark_name))
    model = bench.load_model(source / "model")
    metrics: dict = {"parameters": sum(p.numel() for p in model.parameters())}
    sparse = None
    if recipe.sparsity == "2:4":
        batches = bench.calibration_batches(source, ctx.benchmark)
        model, sparse = sparsity.sparsify(model, recipe.sparsity_method, batches)
        stats = calibration.collect_absmax(copy.deepcopy(model), batches, desc="recalibrate sparse model")
        (ctx.out / "sparsity.json").write_text(json.dumps(sparse, indent=1))
        ctx.tracker.log_artifact(ctx.out / "sparsity.json")
    model, layers = quantization.quantize(model, recipe.precision, stats, recipe.smoothquant_alpha, recipe.quantize_lm_head)
    quantized = bool(layers["quantized_layers"])
    quantization.save(model, ctx.out / "model", quantized)
    metrics.update(quantized_layers=len(layers["quantized_layers"]), skipped_layers=len(layers["skipped_layers"]))
    if quantized:
        metrics.update(quantization.quantizer_summary(model))
        deployable = ctx.out / "deployable"
        metrics["deployable_bytes"] = quantization.export_deployable(model, deployable)["deployable_bytes"]
    else:
        deployable = ctx.out / "model"
    if sparse is not None:
        # measured on the model as served (after quantization), and as bytes of a 2:4-compressed checkpoint
        metrics["sparsity"] = sparsity.measure_24(model, sparse["sparsified_layers"])
        sizes = sparsity.compress_checkpoint(deployable, ctx.out / "deployable-24", sparse["sparsified_layers"])
        metrics["sparsity"].update(checkpoint_bytes_dense=sizes["dense_bytes"], checkpoint_bytes_24=sizes["compressed_bytes"],
                                   checkpoint_size_ratio=sizes["compressed_bytes"] / sizes["dense_bytes"])
    (ctx.out / "layers.json").write_text(json.dumps(layers, indent=1))
    ctx.tracker.log_artifact(ctx.out / "layers.json")
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("quantize", "entry", body))
