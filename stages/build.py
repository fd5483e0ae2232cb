"""build: the engine directory the harness serves, checked by one generation."""

import sys

from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    metrics = ctx.bench.kind.build(ctx, ctx.bench)
    ctx.tracker.log_artifact(ctx.out / "engine.json")
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("build", "entry", body))
