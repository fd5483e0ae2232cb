"""quantize: the entry's recipe with Model Optimizer: 2:4 sparsity (open division) then quantization.

Text-to-image quantizes the UNet alone, with the v4.0 layer set (diffusion/quantize.py).

Quantization takes its statistics from the calibrate stage. A sparse model's activations are
not the dense model's, so a sparse recipe re-collects them on the same calibration list.
"""

import copy
import json
import sys

from mlperf_round import benchmarks
from mlperf_round.optimization import calibration, quantization, sparsity
from mlperf_round.runner import StageContext, run_stage


def _quantize_unet(ctx: StageContext, source, stats) -> dict:
    """Text-to-image: the UNet only (INT8 SmoothQuant, or fp16 / fp32 weights as the baseline)."""
    import torch

    from mlperf_round.diffusion.quantize import load_unet, quantize_unet, save_unet

    recipe = ctx.entry.recipe
    unet = load_unet(source / "model" / "unet")
    metrics: dict = {"parameters": sum(p.numel() for p in unet.parameters())}
    if recipe.precision == "int8_sq":
        unet, layers = quantize_unet(unet, stats, recipe.smoothquant_alpha)
        metrics.update(quantization.quantizer_summary(unet))
    else:
        unet = unet.to(torch.float16 if recipe.precision == "fp16" else torch.float32)
        layers = {"precision": recipe.precision, "quantized_layers": [], "skipped_layers": []}
    save_unet(unet, ctx.out / "model", bool(layers["quantized_layers"]))
    metrics.update(quantized_layers=len(layers["quantized_layers"]), skipped_layers=len(layers["skipped_layers"]),
                   smoothed_layers=sum(1 for q in layers["quantized_layers"] if q["smoothquant"]))
    (ctx.out / "layers.json").write_text(json.dumps(layers, indent=1))
    ctx.tracker.log_artifact(ctx.out / "layers.json")
    return metrics


def body(ctx: StageContext) -> dict:
    bench, recipe = benchmarks.get(ctx.benchmark_name), ctx.entry.recipe
    source = ctx.input("download", ctx.benchmark_name)
    stats = calibration.load_stats(ctx.input("calibrate", ctx.benchmark_name))
    if benchmarks.is_image(bench):
        return _quantize_unet(ctx, source, stats)
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
