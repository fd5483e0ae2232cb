"""package: the submission tree, systems description and results table; refuses bad results."""

import sys

from mlperf_round.runner import StageContext, run_stage
from mlperf_round.submission.package import package_round


def body(ctx: StageContext) -> dict:
    report = package_round(ctx.params, ctx.out)
    ctx.tracker.log_round_metrics(report["headline"])
    for name in ("results.md", "results.csv"):
        ctx.tracker.log_artifact(ctx.out / name)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return {k: v for k, v in report.items() if k != "warnings"} | {"warnings": len(report["warnings"])}


if __name__ == "__main__":
    sys.exit(run_stage("package", "round", body))
