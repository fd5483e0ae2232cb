"""accuracy: LoadGen AccuracyOnly per scenario, scored against the reference; a closed miss fails."""

import json
import sys

from mlperf_round import evaluation
from mlperf_round.errors import AccuracyError
from mlperf_round.harness.run import ENGINE_STATS
from mlperf_round.harness.settings import accuracy_conf
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    entry, bench = ctx.entry, ctx.bench
    source = ctx.input("download", ctx.benchmark_name)
    engine = ctx.input("build")
    reference = json.loads((ctx.input("reference", ctx.benchmark_name) / "reference.json").read_text())
    n = len(bench.load_samples(source / "dataset.json"))
    conf = ctx.out / "user.conf"
    conf.write_text(accuracy_conf([bench.loadgen_name(s) for s in entry.scenarios], n))
    targets = bench.targets(reference["scores"], entry.accuracy_target, reference["gen_len_scale"])
    limits = bench.upper_limits(reference["scores"], reference["gen_len_scale"])
    # the bounds exactly as the gate applies them: 4 decimals cannot hold a tiny round's FID (0.0182 +- 2%)
    metrics: dict = {"target": dict(targets), "upper_limit": dict(limits)}
    for scenario in entry.scenarios:
        scores = evaluation.run_accuracy(
            engine,
            ctx.benchmark_name,
            source / "dataset.json",
            conf,
            scenario,
            ctx.out / scenario,
            ctx.params.round.test_timeout_s,
        )
        metrics[scenario] = {
            **scores,
            "ratio": {k: scores[k] / reference["scores"][k] for k in targets if reference["scores"][k]},
        }
        stats = ctx.out / scenario / ENGINE_STATS
        if (
            stats.exists()
        ):  # the engine's own counts (UNet work per image under DeepCache; a served engine's TEST06 splices)
            work = json.loads(stats.read_text())
            images = max(work.pop("images", 1), 1)
            for kind, calls in work.pop("unet_calls", {}).items():
                metrics[scenario][f"unet_{kind}_steps_per_image"] = calls / images
            metrics[scenario].update(work)
    worst = min(metrics[s]["ratio"][k] for s in entry.scenarios for k in bench.score_keys)
    metrics["passed"] = not any(evaluation.misses(metrics[s], targets, limits) for s in entry.scenarios)
    metrics["worst_ratio"] = worst
    (ctx.out / "accuracy.json").write_text(json.dumps(metrics, indent=1))
    if entry.division == "closed" and not metrics["passed"]:
        ctx.tracker.log_metrics(
            {f"{s}.{k}": v for s in entry.scenarios for k, v in metrics[s].items() if isinstance(v, float)}
        )
        for s in entry.scenarios:
            try:
                evaluation.check_targets(metrics[s], targets, f"{entry.mlperf_id} ({ctx.key}, {s})", limits)
            except AccuracyError as err:
                ref = ", ".join(f"{k} {reference['scores'][k]:.4f}" for k in bench.score_keys)
                raise AccuracyError(f"{err} (reference, {reference['source']}: {ref})") from None
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("accuracy", "entry", body))
