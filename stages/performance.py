"""performance: LoadGen PerformanceOnly for every scenario of the entry.

`Server.target_qps: auto` is found here, as MLCommons' find-performance does: the Offline run goes
first, and the Server run is offered `auto_fraction` of its samples/s, so a smoke Server run is
neither overloaded on a slow machine nor idle on a fast one. The value used is in user.conf.
"""

import sys

from mlperf_round import benchmarks
from mlperf_round.errors import RoundError
from mlperf_round.harness.logs import latency_distribution, performance_metrics
from mlperf_round.harness.run import run_test
from mlperf_round.harness.settings import user_conf
from mlperf_round.plots import write_csv
from mlperf_round.runner import StageContext, run_stage


def _order(scenarios: list[str], auto: bool) -> list[str]:
    """Offline before Server when Server's load comes from Offline's throughput; otherwise as listed."""
    return sorted(scenarios, key=lambda s: s != "Offline") if auto else list(scenarios)


def body(ctx: StageContext) -> dict:
    entry, bench, smoke = ctx.entry, benchmarks.get(ctx.benchmark_name), ctx.params.round.smoke
    source = ctx.input("download", ctx.benchmark_name)
    engine = ctx.input("build")
    dataset = source / "dataset.json"
    conf = ctx.out / "user.conf"
    qsl_size = len(bench.load_samples(dataset))
    server = entry.loadgen.Server
    auto = "Server" in entry.scenarios and server.target_qps == "auto"
    conf.write_text(user_conf(bench.LOADGEN_MODEL, entry, smoke, qsl_size))
    metrics: dict = {"submittable": not smoke}
    for scenario in _order(entry.scenarios, auto):
        if scenario == "Server" and auto:
            offline = metrics["Offline"]
            if not offline["valid"] or offline["samples_per_s"] <= 0:
                raise RoundError(f"entries.{ctx.key}.loadgen.Server.target_qps: auto needs a VALID Offline run with a "
                                 f"throughput; it measured {offline['samples_per_s']:g} samples/s ({offline['invalid_reason'] or 'invalid'})")
            target = server.auto_fraction * offline["samples_per_s"]
            conf.write_text(user_conf(bench.LOADGEN_MODEL, entry, smoke, qsl_size, server_qps=target))
        run_dir = ctx.out / scenario
        run_test({"engine": str(engine), "benchmark": ctx.benchmark_name, "dataset": str(dataset), "scenario": scenario,
                  "mode": "PerformanceOnly", "user_conf": str(conf), "outdir": str(run_dir)}, ctx.params.round.test_timeout_s)
        metrics[scenario] = performance_metrics(run_dir, scenario)
        if scenario == "Server":
            metrics[scenario]["target_qps_auto"] = auto
        write_csv(ctx.plots / f"latency_{scenario}.csv", latency_distribution(run_dir))
        ctx.tracker.log_artifact(run_dir / "mlperf_log_summary.txt", scenario)
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("performance", "entry", body))
