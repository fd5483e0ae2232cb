"""calibrate: activation statistics collected once per benchmark with modelopt, whatever the recipe.

LLMs: per-channel absmax of every Linear over the calibration list. Text-to-image: the
v4.0 recipe, the calibration captions through the whole sampling loop with the UNet's
statistics collected on the first `steps_collected` denoising steps only.
"""

import json
import sys

from mlperf_round import benchmarks, checkpoints
from mlperf_round.backends.torch_llm import resolve_device
from mlperf_round.optimization import calibration
from mlperf_round.runner import StageContext, run_stage


def _calibrate_image(ctx: StageContext, bench) -> tuple[dict, dict]:
    from mlperf_round.diffusion import pipeline, quantize

    source, bp = ctx.input("download"), ctx.benchmark
    cal = bp.calibration
    device = resolve_device(cal.device, f"benchmarks.{ctx.key}.calibration.device")
    pipe = pipeline.load_pipeline(checkpoints.resolve(source)).to(device)
    captions = [s.caption for s in bench.load_samples(source / "calibration.json")]
    return quantize.calibrate(pipe, captions, pipeline.load_latents(source / pipeline.LATENTS_FILE),
                              cal.steps_collected, cal.total_steps, bp.generation.guidance_scale, cal.batch_size,
                              bp.generation.negative_prompt)  # the trajectories the engine will run


def body(ctx: StageContext) -> dict:
    bench = benchmarks.get(ctx.key)
    if benchmarks.is_image(bench):
        stats, summary = _calibrate_image(ctx, bench)
    else:
        source = ctx.input("download")
        batches = bench.calibration_batches(source, ctx.benchmark)
        device = resolve_device(ctx.benchmark.calibration.device, f"benchmarks.{ctx.key}.calibration.device")
        model = bench.load_model(checkpoints.resolve(source)).to(device)
        stats = calibration.collect_absmax(model, batches)
        summary = {"samples": sum(len(b["input_ids"]) for b in batches),
                   "tokens": int(sum(b["attention_mask"].sum() for b in batches))}
    calibration.save_stats(stats, ctx.out)
    summary.update(calibration.summary(stats))
    (ctx.out / "calibration.json").write_text(json.dumps(summary, indent=1))
    ctx.tracker.log_artifact(ctx.out / "calibration.json")
    return {k: (len(v) if isinstance(v, list) else v) for k, v in summary.items()}


if __name__ == "__main__":
    sys.exit(run_stage("calibrate", "benchmark", body))
