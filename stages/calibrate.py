"""calibrate: per-channel activation absmax of every Linear over the calibration list (modelopt)."""

import json
import sys

from mlperf_round import benchmarks
from mlperf_round.optimization import calibration
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bench = benchmarks.get(ctx.key)
    source = ctx.input("download")
    batches = bench.calibration_batches(source, ctx.benchmark)
    model = bench.load_model(source / "model")
    stats = calibration.collect_absmax(model, batches)
    calibration.save_stats(stats, ctx.out)
    samples = sum(len(b["input_ids"]) for b in batches)
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    summary = {"samples": samples, "tokens": tokens, **calibration.summary(stats)}
    (ctx.out / "calibration.json").write_text(json.dumps(summary, indent=1))
    ctx.tracker.log_artifact(ctx.out / "calibration.json")
    return summary


if __name__ == "__main__":
    sys.exit(run_stage("calibrate", "benchmark", body))
