"""package: the submission tree, systems description, results table and tarball; refuses what the checker would reject."""

import sys
from pathlib import Path

from mlperf_round.errors import RoundError
from mlperf_round.runner import StageContext, run_stage
from mlperf_round.submission.mlcommons import run_checker
from mlperf_round.submission.package import TREE, package_round


def body(ctx: StageContext) -> dict:
    rnd = ctx.params.round
    report = package_round(ctx.params, ctx.out)
    ctx.tracker.log_round_metrics(report["headline"])
    for name in ("results.md", "results.csv", "check.txt"):
        ctx.tracker.log_artifact(ctx.out / name)
    for name in ("results.md", "results.csv"):
        ctx.tracker.log_round_artifact(ctx.out / name)
    ctx.tracker.log_dict(report["provenance"], "provenance.json")
    ctx.tracker.set_tag("mlperf.unmet_rules", " ".join(report["unmet_rules"]) or "none")
    ctx.tracker.set_tag("mlperf.submittable", str(report["submittable"]).lower())
    print((ctx.out / "check.txt").read_text().splitlines()[-1], file=sys.stderr)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = {k: v for k, v in report.items() if k not in ("warnings", "provenance", "headline")}
    metrics["warnings"] = len(report["warnings"])
    if rnd.mlcommons_inference:
        verdict = run_checker(Path(rnd.mlcommons_inference), ctx.out / TREE, rnd.version, ctx.out)
        ctx.tracker.log_artifact(ctx.out / "mlcommons_checker.log")
        ctx.tracker.set_tag("mlperf.mlcommons_checker", verdict["summary"])
        print(f"MLCommons checker: {verdict['summary']} (exit {verdict['returncode']})", file=sys.stderr)
        metrics["mlcommons_checker"] = verdict
        if not verdict["passed"] and not rnd.smoke:
            raise RoundError(f"MLCommons' submission checker rejects the tree: {verdict['summary']} "
                             f"(see {ctx.out.name}/mlcommons_checker.log)")
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage("package", "round", body))
