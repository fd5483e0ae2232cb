"""The stage bodies of a text-to-image benchmark (Stable Diffusion XL).

The pipeline's UNet is what the recipes change: calibrated on the first denoising steps of
the calibration captions' trajectories, quantized alone, served inside the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

NAME = "text-to-image"
RESPONSE_DTYPE = "uint8"  # responses are HWC RGB images
TOKEN_COUNTS = False
PRELOAD = ["diffusers"]


def open_engine(engine_dir: Path, runtime: dict | None = None):
    from .. import backends

    return backends.of_engine(engine_dir).open_image(engine_dir, runtime)


def download(ctx, bench) -> dict:
    """The pipeline, the fixed latents, the captions and the FID and CLIP networks (the benchmark's own reader)."""
    from .. import checkpoints

    metrics = bench.download(ctx.benchmark, ctx.out)
    ctx.tracker.log_artifact(checkpoints.resolve(ctx.out) / "model_index.json", "model")
    return metrics


def calibrate(ctx, bench) -> tuple[dict, dict]:
    """The v4.0 recipe: the calibration captions through the whole sampling loop, the UNet's statistics collected
    on the first `steps_collected` denoising steps only (the trajectories the engine will run)."""
    from .. import checkpoints
    from ..backends.torch_llm import resolve_device
    from ..diffusion import pipeline, quantize

    source, bp = ctx.input("download"), ctx.benchmark
    cal = bp.calibration
    device = resolve_device(cal.device, f"benchmarks.{ctx.key}.calibration.device")
    pipe = pipeline.load_pipeline(checkpoints.resolve(source)).to(device)
    captions = [s.caption for s in bench.load_samples(source / "calibration.json")]
    return quantize.calibrate(
        pipe,
        captions,
        pipeline.load_latents(source / pipeline.LATENTS_FILE),
        cal.steps_collected,
        cal.total_steps,
        bp.generation.guidance_scale,
        cal.batch_size,
        bp.generation.negative_prompt,
    )


def reference_engine(ctx, bench, source: Path, engine: Path) -> None:
    from .. import checkpoints, engines
    from ..diffusion.pipeline import LATENTS_FILE
    from ..params import BuildParams, DeepCacheParams

    engines.build_image_engine(
        ctx.key,
        "fp32",
        BuildParams(),
        ctx.benchmark.generation,
        DeepCacheParams(),
        source,
        checkpoints.resolve(source) / "unet",
        source / LATENTS_FILE,
        engine,
    )


def quantize(ctx, bench) -> dict:
    """The UNet only (INT8 SmoothQuant, or fp16 / fp32 weights as the baseline)."""
    import torch

    from .. import checkpoints
    from ..diffusion.quantize import load_unet, quantize_unet, save_unet
    from ..optimization import calibration, quantization

    recipe = ctx.entry.recipe
    source = ctx.input("download", ctx.benchmark_name)
    stats = calibration.load_stats(ctx.input("calibrate", ctx.benchmark_name))
    unet = load_unet(checkpoints.resolve(source) / "unet")
    metrics: dict = {"parameters": sum(p.numel() for p in unet.parameters())}
    if recipe.precision == "int8_sq":
        unet, layers = quantize_unet(unet, stats, recipe.smoothquant_alpha)
        metrics.update(quantization.quantizer_summary(unet))
    else:
        unet = unet.to(torch.float16 if recipe.precision == "fp16" else torch.float32)
        layers = {"precision": recipe.precision, "quantized_layers": [], "skipped_layers": []}
    save_unet(unet, ctx.out / "model", bool(layers["quantized_layers"]))
    metrics.update(
        quantized_layers=len(layers["quantized_layers"]),
        skipped_layers=len(layers["skipped_layers"]),
        smoothed_layers=sum(1 for q in layers["quantized_layers"] if q["smoothquant"]),
    )
    (ctx.out / "layers.json").write_text(json.dumps(layers, indent=1))
    ctx.tracker.log_artifact(ctx.out / "layers.json")
    return metrics


def build(ctx, bench) -> dict:
    """The pipeline with the entry's UNet, built by the entry's backend."""
    from .. import backends

    return backends.get(ctx.entry.build.backend).build_image(ctx, bench)


def evaluate(bench, outputs: dict, samples: list, engine: Path, source: Path) -> dict[str, float]:
    """FID and CLIP score of the images, as MLPerf's accuracy_coco.py computes them."""
    return bench.evaluate(outputs, samples, engine, source)
