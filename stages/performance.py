"""performance: LoadGen PerformanceOnly for every scenario of the entry.

`target_qps: auto` (Server, Interactive) is found here, as MLCommons' find-performance does: the
Offline run goes first, and the Server-like run is offered `auto_fraction` of its samples/s, so a
smoke run is neither overloaded on a slow machine nor idle on a fast one. The value used is in user.conf.
"""

import sys

from mlperf_round.errors import RoundError
from mlperf_round.harness.logs import latency_distribution, performance_metrics
from mlperf_round.harness.run import run_test
from mlperf_round.harness.settings import user_conf
from mlperf_round.plots import write_csv
from mlperf_round.runner import StageContext, run_stage
from mlperf_round.versions import SERVER_LIKE


def _order(scenarios: list[str], auto: bool) -> list[str]:
    """Offline first when a Server-like load comes from Offline's throughput; otherwise as listed."""
    return sorted(scenarios, key=lambda s: s != "Offline") if auto else list(scenarios)


def body(ctx: StageContext) -> dict:
    entry, bench, smoke = ctx.entry, ctx.bench, ctx.params.round.smoke
    source = ctx.input("download", ctx.benchmark_name)
    engine = ctx.input("build")
    dataset = source / "dataset.json"
    conf = ctx.out / "user.conf"
    qsl_size = len(bench.load_samples(dataset))
    auto = {s for s in SERVER_LIKE if s in entry.scenarios and getattr(entry.loadgen, s).target_qps == "auto"}
    found: dict[str, float] = {}
    conf.write_text(user_conf(entry, smoke, qsl_size))
    metrics: dict = {"submittable": not smoke}
    for scenario in _order(entry.scenarios, bool(auto)):
        if scenario in auto:
            offline = metrics["Offline"]
            if not offline["valid"] or offline["samples_per_s"] <= 0:
                raise RoundError(
                    f"entries.{ctx.key}.loadgen.{scenario}.target_qps: auto needs a VALID Offline run with "
                    f"a throughput; it measured {offline['samples_per_s']:g} samples/s "
                    f"({offline['invalid_reason'] or 'invalid'})"
                )
            found[scenario] = getattr(entry.loadgen, scenario).auto_fraction * offline["samples_per_s"]
            conf.write_text(user_conf(entry, smoke, qsl_size, server_qps=found))
        run_dir = ctx.out / scenario
        run_test(
            {
                "engine": str(engine),
                "benchmark": ctx.benchmark_name,
                "dataset": str(dataset),
                "scenario": scenario,
                "mode": "PerformanceOnly",
                "user_conf": str(conf),
                "outdir": str(run_dir),
            },
            ctx.params.round.test_timeout_s,
        )
        metrics[scenario] = performance_metrics(run_dir, scenario)
        if scenario in SERVER_LIKE:
            metrics[scenario]["target_qps_auto"] = scenario in auto
        write_csv(ctx.plots / f"latency_{scenario}.csv", latency_distribution(run_dir))
        ctx.tracker.log_artifact(run_dir / "mlperf_log_summary.txt", scenario)
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("performance", "entry", body))
