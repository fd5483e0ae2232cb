"""compliance: the audits MLPerf requires of a closed entry, run and verified.

The audits each version requires of the entry's submission id (versions.py): TEST06 for the
Llama LLMs; TEST01 and TEST04 for text-to-image, verified against this entry's accuracy and
performance runs as MLCommons' run_verification.py does. A failed
verification fails the stage, so nothing downstream packages the entry. Open entries, and
benchmarks that need no audit, produce an empty record.
"""

import sys

from mlperf_round.errors import ComplianceError
from mlperf_round.harness import compliance
from mlperf_round.harness.run import run_test
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    entry, bench = ctx.entry, ctx.bench
    tests = bench.compliance_tests(ctx.params.round.version, entry.mlperf_id) if entry.division == "closed" else ()
    metrics: dict = {"tests": list(tests)}
    if not tests:
        return metrics
    source = ctx.input("download", ctx.benchmark_name)
    engine = ctx.input("build")
    dataset = source / "dataset.json"
    accuracy, performance = ctx.input("accuracy"), ctx.input("performance")  # what the audits are judged against
    conf = ctx.out / "user.conf"  # the performance run's settings, Server's found target_qps included
    conf.write_text((performance / "user.conf").read_text())
    failed = []
    for test in tests:
        audit = ctx.out / f"{test}.audit.config"
        audit.write_text(compliance.audit_config(test, ctx.params.round.mlcommons_inference, bench.loadgen_model))
        for scenario in entry.scenarios:
            run_dir = ctx.out / scenario / test / "run"
            run_test(
                {
                    "engine": str(engine),
                    "benchmark": ctx.benchmark_name,
                    "dataset": str(dataset),
                    "scenario": scenario,
                    "mode": "PerformanceOnly",
                    "user_conf": str(conf),
                    "outdir": str(run_dir),
                    "audit_config": str(audit.resolve()),
                    "label": f"{test} {scenario}",
                },
                ctx.params.round.test_timeout_s,
            )
            result = compliance.verdict(
                test,
                run_dir,
                ctx.out / scenario / test,
                bench.loadgen_scenario(scenario),  # Interactive runs as Server
                accuracy_run=accuracy / scenario,
                performance_run=performance / scenario,
                engine=engine,
                response_dtype=bench.kind.RESPONSE_DTYPE,
                version=ctx.params.round.version,
                smoke=ctx.params.round.smoke,
            )
            metrics[f"{scenario}.{test}"] = {k: v for k, v in result.items() if k != "failures"}
            if not result["passed"]:
                failed.append(f"{test} {scenario}: {result['failures'][0]}")
    if failed:
        raise ComplianceError(f"{entry.mlperf_id} failed compliance: {'; '.join(failed)}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("compliance", "entry", body))
