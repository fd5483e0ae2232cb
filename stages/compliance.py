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
from mlperf_round.harness.logs import ACCURACY
from mlperf_round.harness.run import run_test
from mlperf_round.runner import StageContext, run_stage


def _verify(ctx: StageContext, bench, test: str, scenario: str, run_dir) -> dict:
    scenario_run = bench.loadgen_scenario(scenario)  # Interactive runs as Server
    if test == "TEST06":
        from mlperf_round.backends.torch_llm import read_spec

        result = compliance.verify_test06(run_dir / ACCURACY, scenario_run, read_spec(ctx.input("build")).eos_token_id)
        compliance.write_test06(result, run_dir / ACCURACY, ctx.out / scenario / test)
        return result
    accuracy = None
    if test == "TEST01":
        accuracy = compliance.verify_test01_accuracy(
            ctx.input("accuracy") / scenario / ACCURACY, run_dir / ACCURACY, bench.kind.RESPONSE_DTYPE
        )
    threshold = compliance.SMOKE_PERFORMANCE_THRESHOLD if ctx.params.round.smoke else compliance.PERFORMANCE_THRESHOLD
    performance = compliance.verify_performance(
        ctx.input("performance") / scenario, run_dir, scenario_run, test, ctx.params.round.version, threshold
    )
    compliance.write_audit(test, accuracy, performance, run_dir, ctx.out / scenario / test)
    failures = list((accuracy or {}).get("failures", []))
    if not performance["passed"]:
        failures.append(
            f"{performance['reason']}: score {performance['test_score']:.3f} against the performance "
            f"run's {performance['reference_score']:.3f} (ratio {performance['ratio']:.3f})"
        )
    return {
        "passed": (accuracy is None or accuracy["passed"]) and performance["passed"],
        "failures": failures,
        "performance_ratio": performance["ratio"],
        "performance_threshold": threshold,
        **({"identical": accuracy["identical"], "matched": accuracy["matched"]} if accuracy else {}),
    }


def body(ctx: StageContext) -> dict:
    entry, bench = ctx.entry, ctx.bench
    tests = bench.compliance_tests(ctx.params.round.version, entry.mlperf_id) if entry.division == "closed" else ()
    metrics: dict = {"tests": list(tests)}
    if not tests:
        return metrics
    source = ctx.input("download", ctx.benchmark_name)
    engine = ctx.input("build")
    dataset = source / "dataset.json"
    conf = ctx.out / "user.conf"  # the performance run's settings, Server's found target_qps included
    conf.write_text((ctx.input("performance") / "user.conf").read_text())
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
            result = _verify(ctx, bench, test, scenario, run_dir)
            metrics[f"{scenario}.{test}"] = {k: v for k, v in result.items() if k != "failures"}
            if not result["passed"]:
                failed.append(f"{test} {scenario}: {result['failures'][0]}")
    if failed:
        raise ComplianceError(f"{entry.mlperf_id} failed compliance: {'; '.join(failed)}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("compliance", "entry", body))
