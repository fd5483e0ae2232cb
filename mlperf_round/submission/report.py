"""The round on one page: results table and figures in a single HTML file that opens with no server.

Figures are PNGs inlined as data URIs, so the file can be mailed, attached to MLflow or opened
from the tarball on a machine with no network."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

REPORT = "report.html"
COLUMNS = (
    "division",
    "system",
    "entry",
    "benchmark",
    "scenario",
    "samples_per_s",
    "target_qps",
    "tokens_per_s",
    "latency_p99_ms",
    "ttft_p99_ms",
    "tpot_p99_ms",
    "valid",
    "accuracy_worst_ratio",
    "accuracy_passed",
    "unmet_rules",
)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _throughput(rows: list[dict]) -> str:
    import matplotlib.pyplot as plt

    labels = [f"{r['entry']} {r['scenario']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(
        labels,
        [float(r["samples_per_s"]) for r in rows],
        color=["tab:green" if r["valid"] else "tab:red" for r in rows],
    )
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (log; red: INVALID run)")
    ax.set_title("Throughput per entry and scenario")
    return _png(fig)


def _latency(latency: dict[tuple[str, str], list[dict]]) -> str:
    import matplotlib.pyplot as plt

    scenarios = sorted({s for _, s in latency})
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(5.5 * len(scenarios), 3.6), squeeze=False, layout="constrained"
    )
    for ax, scenario in zip(axes[0], scenarios):
        for (entry, s), rows in sorted(latency.items()):
            if s == scenario:
                ax.plot([r["percentile"] for r in rows], [r["latency_ms"] for r in rows], marker="o", label=entry)
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("query latency (ms, log)")
        ax.set_title(f"{scenario}: LoadGen latency distribution")
        ax.legend(fontsize=7)
    return _png(fig)


def _accuracy(rows: list[dict]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    labels = [f"{r['entry']} ({r['recipe']})" for r in rows]
    ax.barh(
        labels, [r["accuracy_ratio"] for r in rows], color=["tab:green" if r["passed"] else "tab:red" for r in rows]
    )
    for i, r in enumerate(rows):
        if r["target_ratio"] != "":
            ax.plot([r["target_ratio"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.invert_yaxis()
    ax.set_xlim(
        min([0.9] + [r["accuracy_ratio"] - 0.01 for r in rows]),
        max([1.01] + [r["accuracy_ratio"] + 0.01 for r in rows]),
    )
    ax.set_xlabel("worst score / reference (black: target)")
    ax.set_title("Accuracy against target")
    return _png(fig)


def _table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if rows and c in rows[0]]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    path: Path,
    title: str,
    rows: list[dict],
    accuracy: list[dict],
    latency: dict[tuple[str, str], list[dict]],
    notes: list[str],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Results</h2>", _table(rows)]
    parts += ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"] if notes else []
    if rows:
        parts += ["<h2>Throughput</h2>", _throughput(rows)]
    if latency:
        parts += ["<h2>Latency</h2>", _latency(latency)]
    if accuracy:
        parts += ["<h2>Accuracy</h2>", _accuracy(accuracy)]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}img{max-width:100%}"
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
