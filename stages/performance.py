"""performance: LoadGen PerformanceOnly for every scenario of the entry."""

import sys

from mlperf_round import benchmarks
from mlperf_round.harness.logs import latency_distribution, performance_metrics
from mlperf_round.plots import write_csv
from mlperf_round.harness.run import run_test
from mlperf_round.harness.settings import user_conf
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    entry, bench, smoke = ctx.entry, benchmarks.get(ctx.benchmark_name), ctx.params.round.smoke
    source = ctx.input("download", ctx.benchmark_name)
    engine = ctx.input("build")
    dataset = source / "dataset.json"
    conf = ctx.out / "user.conf"
    conf.write_text(user_conf(bench.LOADGEN_MODEL, entry, smoke, len(bench.load_samples(dataset))))
    metrics: dict = {"submittable": not smoke}
    for scenario in entry.scenarios:
        run_dir = ctx.out / scenario
        run_test({"engine": str(engine), "benchmark": ctx.benchmark_name, "dataset": str(dataset), "scenario": scenario,
                  "mode": "PerformanceOnly", "user_conf": str(conf), "outdir": str(run_dir)}, ctx.params.round.test_timeout_s)
        metrics[scenario] = performance_metrics(run_dir, scenario)
        write_csv(ctx.plots / f"latency_{scenario}.csv", latency_distribution(run_dir))
        ctx.tracker.log_artifact(run_dir / "mlperf_log_summary.txt", scenario)
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("performance", "entry", body))
