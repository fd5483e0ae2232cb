"""Reading what LoadGen wrote: summary, detail and accuracy logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..jsonfile import read_json

SUMMARY = "mlperf_log_summary.txt"
DETAIL = "mlperf_log_detail.txt"
ACCURACY = "mlperf_log_accuracy.json"


def read_detail(path: Path, performance: bool = False) -> dict[str, object]:
    """Last value of every key in mlperf_log_detail.txt (errors are counted, not overwritten).

    A performance log must carry its result: one cut at a line boundary parses cleanly up to
    the settings and would otherwise read as a run that measured nothing."""
    out: dict[str, object] = {"error_count": 0}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: missing; the LoadGen run did not finish") from None
    for n, line in enumerate(lines, 1):
        if not line.startswith(":::MLLOG"):
            continue
        try:
            rec = json.loads(line[len(":::MLLOG") :])
        except json.JSONDecodeError:
            raise InputError(f"{path}: line {n} is not a valid MLLOG record (truncated log?)") from None
        if rec.get("metadata", {}).get("is_error"):
            out["error_count"] = int(out["error_count"]) + 1
        out[rec["key"]] = rec["value"]
    if "result_validity" not in out and "effective_test_mode" not in out:
        raise InputError(f"{path}: no LoadGen settings or result recorded (truncated log?)")
    if performance and "result_validity" not in out:
        raise InputError(f"{path}: no LoadGen result recorded (truncated log?)")
    return out


_SUMMARY_LINE = re.compile(r"^\s*([^:]+?)\s*:\s*(.+?)\s*$")


def read_summary(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: missing; the LoadGen run did not finish") from None
    out = {}
    for line in text.splitlines():
        m = _SUMMARY_LINE.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    m = re.search(r"(\d+) ERRORS? encountered", text)
    out["errors"] = m.group(1) if m else "0"
    if "No errors encountered" not in text and not m:
        raise InputError(f"{path}: incomplete summary (no error footer; truncated log?)")
    return out


def read_accuracy(path: Path, dtype: str = "int32") -> dict[int, np.ndarray]:
    """qsl_idx -> decoded response, from mlperf_log_accuracy.json."""
    rows = read_json(path, "missing; the accuracy run did not finish")
    out = {}
    for row in rows:
        out[int(row["qsl_idx"])] = np.frombuffer(bytes.fromhex(row["data"]), dtype=dtype)
    return out


def performance_metrics(run_dir: Path, scenario: str) -> dict[str, float | str | bool]:
    """The figures a round compares: throughput, latency percentiles, validity and why."""
    d = read_detail(run_dir / DETAIL, performance=True)
    s = read_summary(run_dir / SUMMARY)
    valid = d.get("result_validity") == "VALID"
    errors = int(s["errors"])
    m: dict[str, float | str | bool] = {
        "valid": valid and errors == 0,
        "loadgen_valid": valid,
        "errors": errors,
        "invalid_reason": str(d.get("result_invalid_reason", "")).strip(),
        "query_count": float(d.get("result_query_count", 0) or 0),
    }
    if scenario == "Offline":
        m["samples_per_s"] = float(d.get("result_samples_per_second", 0.0))
        tps = d.get("result_tokens_per_second", d.get("result_inferred_tokens_per_second"))
    elif scenario == "SingleStream":  # the metric is the 90th percentile latency of one query at a time
        m["latency_p90_ms"] = float(d.get("result_90.00_percentile_latency_ns", 0)) / 1e6
        m["latency_p99_ms"] = float(d.get("result_99.00_percentile_latency_ns", 0)) / 1e6
        mean = float(d.get("result_mean_latency_ns", 0) or 0)
        m["samples_per_s"] = 1e9 / mean if mean else 0.0
        tps = None
    else:
        m["samples_per_s"] = float(d.get("result_completed_samples_per_sec", 0.0))
        m["scheduled_samples_per_s"] = float(d.get("result_scheduled_samples_per_sec", 0.0))
        m["target_qps"] = float(d.get("effective_target_qps", 0.0) or 0.0)
        tps = d.get("result_completed_tokens_per_second", d.get("result_inferred_completed_tokens_per_second"))
        for p in ("50.00", "90.00", "99.00"):
            m[f"latency_p{p[:2]}_ms"] = float(d.get(f"result_{p}_percentile_latency_ns", 0)) / 1e6
            if f"result_first_token_{p}_percentile_latency_ns" in d:
                m[f"ttft_p{p[:2]}_ms"] = float(d[f"result_first_token_{p}_percentile_latency_ns"]) / 1e6
                m[f"tpot_p{p[:2]}_ms"] = float(d.get(f"result_time_per_output_token_{p}_percentile_ns", 0)) / 1e6
    if tps is not None:
        m["tokens_per_s"] = float(tps)
    m["qsl_rng_seed"] = str(d.get("effective_qsl_rng_seed", ""))
    return m


PERCENTILES = (
    ("min", 0.0),
    ("50.00", 50.0),
    ("90.00", 90.0),
    ("95.00", 95.0),
    ("97.00", 97.0),
    ("99.00", 99.0),
    ("99.90", 99.9),
    ("max", 100.0),
)


def latency_distribution(run_dir: Path) -> list[dict[str, float]]:
    """The query latency distribution LoadGen logs (min, the percentiles it reports, max), in ms:
    the one latency picture every scenario has, the trace being off."""
    d = read_detail(run_dir / DETAIL)
    rows = []
    for name, pct in PERCENTILES:
        key = f"result_{name}_latency_ns" if name in ("min", "max") else f"result_{name}_percentile_latency_ns"
        if key in d:
            rows.append({"percentile": pct, "latency_ms": float(d[key]) / 1e6})
    return rows
