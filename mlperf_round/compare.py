"""Rounds side by side: every metric they share, with ratio and delta against the first, and regressions.

Reads the rounds' parent runs through MLflow's client: package logs each round's headline
metrics there as `<entry>/<scenario>/<metric>` (and `<entry>/accuracy_worst_ratio`), so this
and MLflow's own run comparison show the same numbers.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ParamsError

HIGHER = {"samples_per_s", "tokens_per_s", "valid", "accuracy_worst_ratio"}
LOWER_PREFIXES = ("latency_", "ttft_", "tpot_")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@functools.cache
def _scores() -> tuple[frozenset[str], frozenset[str]]:
    """Every benchmark's scores, and those where less is better (FID): asked of the benchmarks once."""
    from .benchmarks import REGISTRY

    return (
        frozenset(k for b in REGISTRY.values() for k in b.score_keys),
        frozenset(k for b in REGISTRY.values() for k in b.lower_scores),
    )


def direction(metric: str) -> int:
    """+1 when more is better (throughput, accuracy, validity), -1 when less is (latency, FID), 0 when neither.
    Each benchmark says which of its scores are better lower."""
    scores, lower = _scores()
    if metric in lower or metric.startswith(LOWER_PREFIXES):
        return -1
    if metric in HIGHER or metric in scores:
        return 1
    return 0


@dataclass
class Round:
    ref: str
    name: str
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]


@dataclass
class Row:
    entry: str
    scenario: str
    metric: str
    values: list[float]
    ratios: list[float | None] = field(default_factory=list)  # round i / the first round, for i >= 1
    deltas: list[float] = field(default_factory=list)
    worse_pct: list[float] = field(default_factory=list)  # how much worse than the first, in percent (<= 0: not worse)


def load_rounds(refs: list[str], uri: str) -> list[Round]:
    """Each ref is a round name (its newest parent run) or a parent run's id; errors name the ref."""
    from . import tracking

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():  # reading makes none
        raise ParamsError(f"{uri}: no such MLflow store (no round has run here; --tracking-uri names another)")
    client = tracking._client(uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    if exp is None:
        raise ParamsError(f"{uri}: no '{tracking.EXPERIMENT}' experiment: no round has run against this tracking URI")
    rounds, parents = [], None
    for ref in refs:
        if _RUN_ID.fullmatch(ref):
            from mlflow.exceptions import MlflowException

            try:
                run = client.get_run(ref)
            except MlflowException:
                raise ParamsError(f"{ref}: no such run in {uri}") from None
            if run.data.tags.get("mlperf.kind") != "round":
                raise ParamsError(f"{ref}: run {run.info.run_name!r} is a stage run, not a round's parent run")
        else:
            if parents is None:  # matched here, not in a filter string a name could break out of
                parents = client.search_runs(
                    [exp.experiment_id],
                    filter_string="tags.`mlperf.kind` = 'round'",
                    order_by=["attributes.start_time DESC"],
                    max_results=5000,
                )
            found = [r for r in parents if r.data.tags.get("mlperf.round") == ref]
            if not found:
                have = {r.data.tags.get("mlperf.round") for r in parents}
                raise ParamsError(
                    f"{ref}: no such round in {uri} (have: {', '.join(sorted(h for h in have if h)) or 'none'})"
                )
            run = found[0]  # the newest
        headline = {k: v for k, v in run.data.metrics.items() if "/" in k}
        if not headline:
            raise ParamsError(
                f"{ref}: round {run.data.tags.get('mlperf.round')!r} has no results yet (its package stage has not run)"
            )
        rounds.append(Round(ref, run.data.tags.get("mlperf.round", ref), run.info.run_id, run.data.tags, headline))
    return rounds


def _split(name: str) -> tuple[str, str, str]:
    parts = name.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], "-", parts[-1])


def compare(rounds: list[Round]) -> list[Row]:
    shared = set.intersection(*(set(r.metrics) for r in rounds))
    rows = []
    for name in sorted(shared, key=_split):
        values = [r.metrics[name] for r in rounds]
        row = Row(*_split(name), values)
        base, sign = values[0], direction(row.metric)
        for v in values[1:]:
            row.ratios.append(v / base if base else None)
            row.deltas.append(v - base)
            if not sign:
                row.worse_pct.append(0.0)
            elif base:
                row.worse_pct.append(100.0 * sign * (base - v) / abs(base))
            else:
                row.worse_pct.append(math.inf if sign * (base - v) > 0 else 0.0)
        rows.append(row)
    return rows


def regressions(rounds: list[Round], rows: list[Row], pct: float) -> list[str]:
    out = []
    for row in rows:
        for i, worse in enumerate(row.worse_pct, start=1):
            if worse > pct:
                out.append(
                    f"{rounds[i].name}: {row.entry} {row.scenario} {row.metric} {row.values[0]:.6g} -> "
                    f"{row.values[i]:.6g} ({worse:.1f}% worse than {rounds[0].name}, over {pct:g}%)"
                )
    return out


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.6g}"


def _table(rounds: list[Round], rows: list[Row]) -> tuple[list[str], list[list]]:
    names = [r.name for r in rounds]
    head = ["entry", "scenario", "metric", *names]
    for n in names[1:]:
        head += [f"{n}/{names[0]}", f"{n}-{names[0]}"]
    body = []
    for row in rows:
        cells = [row.entry, row.scenario, row.metric, *row.values]
        for ratio, delta in zip(row.ratios, row.deltas):
            cells += [ratio, delta]
        body.append(cells)
    return head, body


def render(rounds: list[Round], rows: list[Row], fmt: str) -> str:
    head, body = _table(rounds, rows)
    if fmt == "json":
        finite = lambda vs: [v if v is None or math.isfinite(v) else None for v in vs]  # noqa: E731 (JSON has no inf)
        return json.dumps(
            {
                "rounds": [{"name": r.name, "run_id": r.run_id, "ref": r.ref} for r in rounds],
                "rows": [
                    {
                        "entry": r.entry,
                        "scenario": r.scenario,
                        "metric": r.metric,
                        "values": finite(r.values),
                        "ratios": finite(r.ratios),
                        "deltas": finite(r.deltas),
                        "worse_pct": finite(r.worse_pct),
                    }
                    for r in rows
                ],
            },
            indent=1,
            allow_nan=False,
        )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(head)
        writer.writerows([["" if c is None else c for c in cells] for cells in body])
        return buf.getvalue()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"
