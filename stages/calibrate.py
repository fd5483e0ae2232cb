"""calibrate: activation statistics collected once per benchmark with modelopt, whatever the recipe.

LLMs: per-channel absmax of every Linear over the calibration list. Text-to-image: the
v4.0 recipe, the calibration captions through the whole sampling loop with the UNet's
statistics collected on the first `steps_collected` denoising steps only.
"""

import json
import sys

from mlperf_round.optimization import calibration
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    stats, summary = ctx.bench.kind.calibrate(ctx, ctx.bench)
    calibration.save_stats(stats, ctx.out)
    summary.update(calibration.summary(stats))
    (ctx.out / "calibration.json").write_text(json.dumps(summary, indent=1))
    ctx.tracker.log_artifact(ctx.out / "calibration.json")
    return {k: (len(v) if isinstance(v, list) else v) for k, v in summary.items()}


if __name__ == "__main__":
    sys.exit(run_stage("calibrate", "benchmark", body))
