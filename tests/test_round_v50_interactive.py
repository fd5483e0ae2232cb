"""v5.0's Interactive: a benchmark id of its own (llama2-70b-interactive-99.9), its result a Server run held to
mlperf.conf's interactive bounds, beside a copy of the entry's Offline result; MLCommons' v5.0.1 checker reads it.

A second whole (Llama-only) round, about 2 minutes: opt-in, to keep `make test` within its budget.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mlperf_round import layout
from mlperf_round.workspace import select_benchmarks

from .conftest import copy_project, edit_params, run

LONG = "MLPERF_ROUND_LONG_TESTS"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get(LONG), reason=f"a second whole round; set {LONG}=1 to run it"),
]
ENTRY = "llama2-70b-99p9"
MLCOMMONS = Path(__file__).resolve().parent.parent.parent / "shared" / "mlcommons"


def interactive(d: dict) -> None:
    d["round"]["name"] = "smoke-v50-interactive"
    d.update(select_benchmarks(d, ["llama2-70b"]))
    d["entries"] = {ENTRY: d["entries"][ENTRY]}
    d["entries"][ENTRY]["scenarios"] = ["Offline", "Server", "Interactive"]
    d["entries"][ENTRY]["loadgen"]["Interactive"] = {
        "target_qps": "auto",
        "auto_fraction": 0.25,
        "min_query_count": 460,
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = copy_project(tmp_path_factory.mktemp("v50i") / "project")
    edit_params(ws, interactive)
    proc = run([sys.executable, "-m", "dvc", "repro"], ws, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return ws


def test_interactive_is_the_interactive_ids_server_result_under_450_40_ms(workspace: Path):
    res = workspace / "submission/package/tree/closed/MLPerfRound/results/cpu-smoke"
    assert sorted(p.name for p in res.iterdir()) == ["llama2-70b-99.9", "llama2-70b-interactive-99.9"]
    assert sorted(p.name for p in (res / "llama2-70b-interactive-99.9").iterdir()) == ["Offline", "Server"]
    conf = (workspace / layout.out_dir(ENTRY, "performance") / "user.conf").read_text()
    assert (
        "llama2-70b-interactive.Server.ttft_latency = 450" in conf
        and "llama2-70b-interactive.Server.tpot_latency = 40" in conf
    )
    perf = json.loads((workspace / layout.metrics_path(ENTRY, "performance")).read_text())
    assert perf["Interactive"]["valid"] and 0 < perf["Interactive"]["target_qps"] < perf["Server"]["target_qps"]
    ran = (res / "llama2-70b-interactive-99.9/Server/performance/run_1/mlperf_log_detail.txt").read_text()
    assert '"key": "effective_scenario", "value": "Server"' in ran
    offline = "performance/run_1/mlperf_log_summary.txt"  # the entry's Offline result, filed under both ids
    assert (res / "llama2-70b-99.9/Offline" / offline).read_text() == (
        res / "llama2-70b-interactive-99.9/Offline" / offline
    ).read_text()
    comp = json.loads((workspace / layout.metrics_path(ENTRY, "compliance")).read_text())
    assert comp["Interactive.TEST06"]["passed"]
    audit = workspace / "submission/package/tree/closed/MLPerfRound/compliance/cpu-smoke/llama2-70b-interactive-99.9"
    assert (audit / "Server/TEST06/verify_accuracy.txt").is_file() and (audit / "Offline/TEST06").is_dir()
    check = (workspace / "submission/package/check.txt").read_text().splitlines()[-1]
    assert check.startswith("check: 4 results,") and check.endswith("0 are defects"), check


@pytest.mark.skipif(not (MLCOMMONS / "v5.0.1").is_dir(), reason=f"MLCommons' checker is not at {MLCOMMONS}")
def test_mlcommons_v50_checker_reads_the_interactive_id(workspace: Path, tmp_path: Path):
    from mlperf_round.submission.mlcommons import run_checker

    from .checker_findings import unexplained

    run_checker(MLCOMMONS / "v5.0.1", workspace / "submission/package/tree", "v5.0", tmp_path)
    log = (tmp_path / "mlcommons_checker.log").read_text()
    assert "llama2-70b-interactive-99.9/Server/performance/run_1" in log
    assert unexplained(log) == [], log[-3000:]
