"""The current round: rounds/v6.1.yaml as `mlperf-round repro --round` runs it, checked by MLCommons' checker.

v6.1's datacenter LLMs: llama3.1-8b (Offline and Interactive) and llama2-70b-99.9 (Offline and Server). The test
runs the round file with llama3.1-8b alone, v6.1's new benchmark and scenario. Llama 2 70B, which the default
round (test_round.py) covers, is left out: that halved the test's minutes.
The round's version picks its LoadGen (6.0.17, v6.1's seeds), installed beside the project's (v5.0's).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from mlperf_round import layout
from mlperf_round.versions import VERSIONS
from mlperf_round.workspace import select_benchmarks

from .conftest import copy_project, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ORG = "closed/MLPerfRound"
SYSTEM = "cpu-smoke"
WANTED = {"llama3.1-8b": ("Offline", "Interactive")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("v61") / "project")
    shutil.copytree(ROOT / "rounds", project / "rounds")
    shipped = yaml.safe_load((project / "rounds/v6.1.yaml").read_text())
    (project / "rounds/v6.1-8b.yaml").write_text(yaml.safe_dump(select_benchmarks(shipped, ["llama3_1-8b"])))
    argv = [sys.executable, "-m", "mlperf_round.cli", "repro", "--round", "rounds/v6.1-8b.yaml"]
    proc = run(argv, project, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "MLPerf Inference v6.1" in proc.stdout and "LoadGen 6.0.17" in proc.stdout
    return project / ".workspaces" / "smoke-v61"


def test_v61_tree_has_every_required_file_in_the_new_layout(workspace: Path):
    org = workspace / "submission/package/tree" / ORG
    assert (org / "src").is_dir() and not (org / "code").exists()
    assert not (org / "measurements").exists() and not (org / "compliance").exists()
    assert (org / "calibration.md").read_text().count("## ") == 1
    for mlperf_id, scenarios in WANTED.items():
        assert sorted(p.name for p in (org / "results" / SYSTEM / mlperf_id).iterdir()) == sorted(scenarios)
        for scenario in scenarios:
            res = org / "results" / SYSTEM / mlperf_id / scenario
            for f in (
                "measurements.json",
                "user.conf",
                "README.md",
                "mlperf.conf",
                "performance/run_1/mlperf_log_detail.txt",
                "performance/run_1/mlperf_log_summary.txt",
                "accuracy/accuracy.txt",
                "accuracy/mlperf_log_accuracy.json",
                "TEST06/verify_accuracy.txt",
            ):
                assert (res / f).is_file() and (res / f).stat().st_size, res / f
            assert f"*.*.qsl_rng_seed = {VERSIONS['v6.1'].seeds[0]}" in (res / "mlperf.conf").read_text()
            scores = (res / "accuracy/accuracy.txt").read_text()
            if mlperf_id == "llama3.1-8b":  # what MLCommons' llama3.1-8b evaluation prints
                assert all(f"'{k}'" in scores for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len"))
    check = (workspace / "submission/package/check.txt").read_text().splitlines()[-1]
    assert check.startswith("check: 2 results,") and check.endswith("0 are defects"), check


def test_interactive_runs_as_server_under_its_own_bounds(workspace: Path):
    perf = json.loads((workspace / layout.metrics_path("llama3_1-8b", "performance")).read_text())
    assert (
        perf["Interactive"]["valid"]
        and perf["Interactive"]["ttft_p99_ms"] > 0
        and perf["Interactive"]["target_qps_auto"]
    )
    assert all(perf[s]["qsl_rng_seed"] == str(VERSIONS["v6.1"].seeds[0]) for s in ("Offline", "Interactive"))
    conf = (workspace / layout.out_dir("llama3_1-8b", "performance") / "user.conf").read_text()
    assert "llama3_1-8b-interactive.Server.ttft_latency = 500" in conf
    assert "llama3_1-8b-interactive.Server.tpot_latency = 30" in conf
    detail = (
        workspace / layout.out_dir("llama3_1-8b", "performance") / "Interactive/mlperf_log_detail.txt"
    ).read_text()
    assert '"key": "effective_scenario", "value": "Server"' in detail
    assert '"key": "requested_use_token_latencies", "value": true' in detail
    comp = json.loads((workspace / layout.metrics_path("llama3_1-8b", "compliance")).read_text())
    assert comp["tests"] == ["TEST06"] and comp["Interactive.TEST06"]["passed"] and comp["Offline.TEST06"]["passed"]


MLCOMMONS = ROOT.parent / "shared" / "mlcommons"


@pytest.mark.skipif(not (MLCOMMONS / "main-b66003e1").is_dir(), reason=f"MLCommons' checker is not at {MLCOMMONS}")
def test_mlcommons_current_checker_finds_nothing_but_what_a_smoke_round_cannot_meet(workspace: Path, tmp_path: Path):
    """MLCommons' current checker (master, pinned) on the v6.1 tree, as strict as the v5.0 one (test_round.py)."""
    from mlperf_round.submission.mlcommons import run_checker

    from .checker_findings import unexplained

    verdict = run_checker(MLCOMMONS / "main-b66003e1", workspace / "submission/package/tree", "v6.1", tmp_path)
    log = (tmp_path / "mlcommons_checker.log").read_text()
    assert not verdict["passed"] and " ERROR] " in log, log[-2000:]
    assert unexplained(log) == [], log[-3000:]
