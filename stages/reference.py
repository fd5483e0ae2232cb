"""reference: the score accuracy targets are fractions of.

MLPerf publishes the full-size model's scores; a tiny model's are measured here, from the
unoptimized model, through the same engine, harness and scoring as every entry.
"""

import json
import sys
import tempfile
from pathlib import Path

from mlperf_round import evaluation
from mlperf_round.harness.settings import accuracy_conf
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bp, bench = ctx.benchmark, ctx.bench
    source = ctx.input("download")
    n = len(bench.load_samples(source / "dataset.json"))
    if bp.reference.source == "published":
        scores = dict(bp.reference.scores or bench.published_scores)
        scale = n / bench.published_samples
    else:
        conf = ctx.out / "user.conf"
        conf.write_text(accuracy_conf([bench.loadgen_model], n))
        with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
            engine = Path(tmp) / "engine"
            bench.kind.reference_engine(ctx, bench, source, engine)
            scores = evaluation.run_accuracy(
                engine,
                ctx.key,
                source / "dataset.json",
                conf,
                "Offline",
                ctx.out / "Offline",
                ctx.params.round.test_timeout_s,
            )
        scale = 1.0
    result = {"source": bp.reference.source, "samples": n, "scores": scores, "gen_len_scale": scale}
    (ctx.out / "reference.json").write_text(json.dumps(result, indent=1))
    ctx.tracker.log_artifact(ctx.out / "reference.json")
    return {"samples": n, **{k: float(v) for k, v in scores.items()}}


if __name__ == "__main__":
    sys.exit(run_stage("reference", "benchmark", body))
