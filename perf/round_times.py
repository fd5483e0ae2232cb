"""Where a finished round's time went, read from its MLflow runs: per stage, in total, and between stages.

    python perf/round_times.py [PROJECT] [--round NAME] [--json OUT]

Each stage's child run spans the stage's work (from its MLflow run's start to its end). The round
spans the first stage's start to the last stage's end; what is neither is overhead outside the
runs (process start, imports, params validation, DVC's hashing and caching). Also printed: the CPU
model, the kernels each quantized entry's build chose with both candidates' timings, and the
goals (the default round at most 10 minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

GOAL_S = 600.0


def _cpu_model() -> str:
    from mlperf_round.backends.kernel_choice import cpu_identity

    return f"{cpu_identity()} ({os.cpu_count()} cpus)"


def stage_runs(project: Path, round_name: str | None) -> tuple[str, list[dict]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project.resolve()}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("mlperf-round")
    if exp is None:
        raise SystemExit(f"{project}/mlruns: no mlperf-round experiment (run the round first)")
    rounds = client.search_runs(
        [exp.experiment_id], "tags.`mlperf.kind` = 'round'", order_by=["attributes.start_time DESC"]
    )
    if round_name:
        rounds = [r for r in rounds if r.data.tags.get("mlperf.round") == round_name]
    if not rounds:
        raise SystemExit(f"{project}/mlruns: no round{' named ' + round_name if round_name else ''}")
    parent = rounds[0]
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=5000,
        order_by=["attributes.start_time ASC"],
    )
    # a stage re-run (a knob changed) counts once: its latest finished run
    latest: dict[str, object] = {}
    for r in runs:
        if r.info.status == "FINISHED" and r.info.end_time:
            latest[r.data.tags.get("dvc.stage", r.info.run_name)] = r
    rows = [
        {
            "stage": name,
            "start": r.info.start_time / 1000,
            "end": r.info.end_time / 1000,
            "seconds": (r.info.end_time - r.info.start_time) / 1000,
            "kernels": {
                k.removeprefix("mlperf.kernels_"): v for k, v in r.data.tags.items() if k.startswith("mlperf.kernels_")
            },
            "timings": {k: v for k, v in r.data.metrics.items() if k.startswith("kernels_")},
        }
        for name, r in latest.items()
    ]
    return parent.data.tags.get("mlperf.round", ""), sorted(rows, key=lambda r: r["start"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", nargs="?", type=Path, default=Path("."))
    ap.add_argument("--round", help="round name (default: the newest)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    name, rows = stage_runs(args.project, args.round)
    if not rows:
        raise SystemExit("no finished stage runs in that round")
    first, last = min(r["start"] for r in rows), max(r["end"] for r in rows)
    total, inside = last - first, sum(r["seconds"] for r in rows)
    print(f"round {name}: {len(rows)} stages on {_cpu_model()}")
    print(f"{'stage':44s} {'seconds':>8s}")
    for r in sorted(rows, key=lambda r: -r["seconds"]):
        print(f"{r['stage']:44s} {r['seconds']:8.1f}")
    by_kind: dict[str, float] = {}
    for r in rows:
        kind = r["stage"].split("@")[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + r["seconds"]
    print("\nper stage kind: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    print(
        f"\nfirst stage start to last stage end: {total:.0f} s ({total / 60:.1f} min); goal {GOAL_S:.0f} s: "
        f"{'met' if total <= GOAL_S else 'MISSED'}"
    )
    print(
        f"inside stage runs: {inside:.0f} s; outside them (start-up, imports, DVC): {total - inside:.0f} s, "
        f"{(total - inside) / len(rows):.1f} s per stage"
    )
    chosen = [r for r in rows if r["kernels"]]
    if chosen:
        print("\nkernels chosen at build (auto), per entry: candidate timings for one forward of that kind's linears")
        for r in chosen:
            for kind, choice in sorted(r["kernels"].items()):
                t = r["timings"]
                native, emulated = (t.get(f"kernels_{kind}_{k}_us", float("nan")) for k in ("native", "emulated"))
                print(f"  {r['stage']:36s} {kind}: {choice:8s} native {native:10.0f} us  emulated {emulated:8.0f} us")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"round": name, "cpu": _cpu_model(), "total_s": total, "inside_s": inside, "stages": rows}, indent=1
            )
        )


if __name__ == "__main__":
    main()
