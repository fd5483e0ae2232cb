"""package: the submission tree, systems description, results table and tarball; refuses what the checker would
reject."""

import csv
import sys
from pathlib import Path

from mlperf_round import layout
from mlperf_round.errors import RoundError
from mlperf_round.plots import write_csv
from mlperf_round.runner import StageContext, run_stage
from mlperf_round.submission.mlcommons import run_checker
from mlperf_round.submission.package import TREE, package_round
from mlperf_round.submission.report import REPORT, write_report


def body(ctx: StageContext) -> dict:
    rnd = ctx.params.round
    report = package_round(ctx.params, ctx.out)
    ctx.tracker.log_round_metrics(report["headline"])
    for name in ("results.md", "results.csv", "check.txt"):
        ctx.tracker.log_artifact(ctx.out / name)
    for name in ("results.md", "results.csv"):
        ctx.tracker.log_round_artifact(ctx.out / name)
    _plots_and_report(ctx, report)
    ctx.tracker.log_dict(report["provenance"], "provenance.json")
    ctx.tracker.set_tag("mlperf.unmet_rules", " ".join(report["unmet_rules"]) or "none")
    ctx.tracker.set_tag("mlperf.submittable", str(report["submittable"]).lower())
    print((ctx.out / "check.txt").read_text().splitlines()[-1], file=sys.stderr)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = {k: v for k, v in report.items() if k not in ("warnings", "provenance", "headline", "table", "accuracy")}
    metrics["warnings"] = len(report["warnings"])
    if rnd.mlcommons_inference:
        verdict = run_checker(Path(rnd.mlcommons_inference), ctx.out / TREE, rnd.version, ctx.out)
        ctx.tracker.log_artifact(ctx.out / "mlcommons_checker.log")
        ctx.tracker.set_tag("mlperf.mlcommons_checker", verdict["summary"])
        print(f"MLCommons checker: {verdict['summary']} (exit {verdict['returncode']})", file=sys.stderr)
        metrics["mlcommons_checker"] = verdict
        if not verdict["passed"] and not rnd.smoke:
            raise RoundError(
                f"MLCommons' submission checker rejects the tree: {verdict['summary']} "
                f"(see {ctx.out.name}/mlcommons_checker.log)"
            )
    return metrics


def _plots_and_report(ctx: StageContext, report: dict) -> None:
    """DVC plots (throughput per entry, accuracy per recipe) and the one-page HTML report, also on the round's run."""
    rows = report["table"]
    write_csv(
        ctx.plots / "throughput.csv",
        [{"entry": f"{r['entry']} {r['scenario']}", "samples_per_s": r["samples_per_s"]} for r in rows],
    )
    write_csv(
        ctx.plots / "accuracy.csv",
        [{"entry": f"{a['entry']} ({a['recipe']})", "accuracy_ratio": a["accuracy_ratio"]} for a in report["accuracy"]],
    )
    latency = {}
    for key in ctx.params.entries:
        for path in sorted(layout.plots_dir(key, "performance").glob("latency_*.csv")):
            with open(path) as f:
                latency[(key, path.stem.removeprefix("latency_"))] = [
                    {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)
                ]
    rnd = ctx.params.round
    systems = dict.fromkeys(ctx.params.system_of(e).name for e in ctx.params.entries.values())
    notes = [
        "Smoke round: shortened LoadGen runs, not submittable." if rnd.smoke else "",
        f"Unmet rules: {', '.join(report['unmet_rules'])}" if report["unmet_rules"] else "",
        *report["warnings"],
    ]
    write_report(
        ctx.out / REPORT,
        f"MLPerf Inference {rnd.version} round {rnd.name}: {rnd.submitter}, {', '.join(systems)}",
        rows,
        report["accuracy"],
        latency,
        [n for n in notes if n],
    )
    ctx.tracker.log_artifact(ctx.out / REPORT)
    ctx.tracker.log_round_artifact(ctx.out / REPORT)


if __name__ == "__main__":
    sys.exit(run_stage("package", "round", body))
