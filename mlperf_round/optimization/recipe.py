"""An LLM entry's recipe on NVIDIA Model Optimizer: pruning and distillation, 2:4 sparsity (open division), then
quantization, and the optional unified Hugging Face export.

Quantization takes its statistics from the calibrate stage. A pruned or sparse model's activations are not the dense
model's, so those recipes re-collect them on the same calibration list.
"""

from __future__ import annotations

import copy
import json

from .. import checkpoints
from ..plots import write_csv
from . import calibration, distillation, pruning, quantization, sparsity

DISTILL_LOSS = "distill_loss.csv"


def _prune_and_distill(ctx, bench, source, model, metrics: dict):
    """Fewer layers and heads by calibration-set importance, then logits distillation from the unpruned model."""
    prune, kd = ctx.entry.recipe.prune, ctx.entry.recipe.distill
    teacher = copy.deepcopy(model) if kd.steps else None
    model, report = pruning.prune(
        model,
        prune.heads_kept or model.config.n_head,
        prune.layers_kept or model.config.n_layer,
        bench.calibration_batches(source, ctx.benchmark),
    )
    if kd.steps:
        tokenizer = bench.load_tokenizer(bench.tokenizer_dir(source))
        sequences = distillation.packed_sequences(tokenizer, bench.distillation_texts(source), kd.seq_len)
        model, curve = distillation.distill(
            model,
            teacher,
            sequences,
            kd.steps,
            kd.lr,
            kd.temperature,
            kd.batch_size,
            kd.seed,
            desc=f"distill {ctx.key}",
        )
        write_csv(ctx.out / DISTILL_LOSS, curve)  # the DVC plot, with the checkpoint it belongs to
        ctx.tracker.log_series("distill.kd_loss", [c["kd_loss"] for c in curve])
        report.update(
            distill_sequences=len(sequences), kd_loss_first=curve[0]["kd_loss"], kd_loss_last=curve[-1]["kd_loss"]
        )
    (ctx.out / "pruning.json").write_text(json.dumps(report, indent=1))
    ctx.tracker.log_artifact(ctx.out / "pruning.json")
    metrics["pruning"] = {k: report[k] for k in ("parameters_before", "parameters_after")}
    metrics["pruning"].update(
        layers=len(report["layers_kept"]),
        heads_per_layer=prune.heads_kept or model.config.n_head,
        **{k: report[k] for k in ("kd_loss_first", "kd_loss_last") if k in report},
    )
    metrics["parameters"] = report["parameters_after"]
    return model


def apply(ctx, bench) -> dict:
    """The whole recipe, in its order: prune and distill, recalibrate; sparsify, recalibrate; quantize; export."""
    recipe = ctx.entry.recipe
    source = ctx.input("download", ctx.benchmark_name)
    stats = calibration.load_stats(ctx.input("calibrate", ctx.benchmark_name))
    model = bench.load_model(checkpoints.resolve(source))
    metrics: dict = {"parameters": sum(p.numel() for p in model.parameters())}
    sparse = None
    if recipe.prune.active:
        model = _prune_and_distill(ctx, bench, source, model, metrics)
        stats = calibration.collect_absmax(
            copy.deepcopy(model), bench.calibration_batches(source, ctx.benchmark), desc="recalibrate pruned model"
        )
    if recipe.sparsity == "2:4":
        batches = bench.calibration_batches(source, ctx.benchmark)
        model, sparse = sparsity.sparsify(model, recipe.sparsity_method, batches)
        stats = calibration.collect_absmax(copy.deepcopy(model), batches, desc="recalibrate sparse model")
        (ctx.out / "sparsity.json").write_text(json.dumps(sparse, indent=1))
        ctx.tracker.log_artifact(ctx.out / "sparsity.json")
    model, layers = quantization.quantize(
        model, recipe.precision, stats, recipe.smoothquant_alpha, recipe.quantize_lm_head
    )
    quantized = bool(layers["quantized_layers"])
    if quantized and not recipe.prune.active:  # only the quantized layers changed: they alone are written
        from . import quantized_checkpoint  # imports Model Optimizer: after params are checked

        metrics["checkpoint_bytes"] = quantized_checkpoint.save(
            model, ctx.out / "model", layers["quantized_layers"], recipe.precision, recipe.quantize_lm_head, source
        )
    else:  # a pruned model changed everywhere; an unquantized one is written in its new dtype
        quantization.save(model, ctx.out / "model", quantized)
    metrics.update(quantized_layers=len(layers["quantized_layers"]), skipped_layers=len(layers["skipped_layers"]))
    if sparse is not None:  # measured on the model as served (after quantization)
        metrics["sparsity"] = sparsity.measure_24(model, sparse["sparsified_layers"])
    written = ctx.out / "model"  # the low-precision weights as this stage wrote them
    if quantized:
        metrics.update(quantization.quantizer_summary(model))
        if recipe.export_hf:  # the model's last use: the export rewrites its weights in place, not on a second copy
            written = ctx.out / "deployable"
            metrics["deployable_bytes"] = quantization.export_deployable(model, written)["deployable_bytes"]
    del model
    if sparse is not None:  # and as bytes of a 2:4-compressed checkpoint
        sizes = sparsity.compress_checkpoint(written, ctx.out / "deployable-24", sparse["sparsified_layers"])
        metrics["sparsity"].update(
            checkpoint_bytes_dense=sizes["dense_bytes"],
            checkpoint_bytes_24=sizes["compressed_bytes"],
            checkpoint_size_ratio=sizes["compressed_bytes"] / sizes["dense_bytes"],
        )
    (ctx.out / "layers.json").write_text(json.dumps(layers, indent=1))
    ctx.tracker.log_artifact(ctx.out / "layers.json")
    return metrics
