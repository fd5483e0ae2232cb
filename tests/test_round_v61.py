"""A v6.1 round: its LoadGen (6.0.17, the v6.1 seeds), its benchmarks and its tree layout.

v6.1 has llama2-70b-99.9 (datacenter) and stable-diffusion-xl (edge only), so the system is
`datacenter,edge` and SDXL adds SingleStream. The release that carries v6.1's seeds is put
in front of the project's own (v5.0's) through PYTHONPATH, for this round only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlperf_round.versions import VERSIONS

from .conftest import copy_project, edit_params, env

LONG = "MLPERF_ROUND_LONG_TESTS"  # a second whole round (about 9 minutes on 2 cores): opt-in, to keep CI under an hour
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get(LONG), reason=f"a whole v6.1 round; set {LONG}=1 to run it"),
]
ORG = "closed/MLPerfRound"
SYSTEM = "cpu-smoke"


def v61(data: dict) -> None:
    data["round"].update(version="v6.1")
    data["round"]["system"]["system_type"] = "datacenter,edge"
    del data["benchmarks"]["gptj"]
    for key in ("gptj-99", "gptj-99-pruned", "llama2-70b-sparse", "stable-diffusion-xl-deepcache"):
        del data["entries"][key]
    data["entries"]["stable-diffusion-xl"]["scenarios"] = ["SingleStream", "Offline", "Server"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("v61")
    loadgen = base / "loadgen-6.0.17"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(loadgen),
            "mlcommons-loadgen==6.0.17",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    ws = copy_project(base / "project")
    edit_params(ws, v61)
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([".", str(loadgen)])
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=ws, env=e, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return ws


def test_v61_tree_has_every_required_file_in_the_new_layout(workspace: Path):
    org = workspace / "submission/package/tree" / ORG
    assert (org / "src").is_dir() and not (org / "code").exists()
    assert not (org / "measurements").exists() and not (org / "compliance").exists()
    assert json.loads((org / f"systems/{SYSTEM}.json").read_text())["system_type"] == "datacenter,edge"
    assert (org / "calibration.md").read_text().count("## ") == 2
    wanted = {
        "llama2-70b-99.9": (("Offline", "Server"), ("TEST06",)),
        "stable-diffusion-xl": (("SingleStream", "Offline", "Server"), ("TEST01", "TEST04")),
    }
    for mlperf_id, (scenarios, tests) in wanted.items():
        for scenario in scenarios:
            res = org / "results" / SYSTEM / mlperf_id / scenario
            files = [
                "measurements.json",
                "user.conf",
                "README.md",
                "mlperf.conf",
                "performance/run_1/mlperf_log_detail.txt",
                "performance/run_1/mlperf_log_summary.txt",
                "accuracy/accuracy.txt",
                "accuracy/mlperf_log_accuracy.json",
            ]
            files += {
                "TEST06": ["TEST06/verify_accuracy.txt"],
                "TEST01": [
                    "TEST01/verify_accuracy.txt",
                    "TEST01/verify_performance.txt",
                    "TEST01/performance/run_1/mlperf_log_detail.txt",
                    "TEST01/accuracy/accuracy.txt",
                    "TEST01/accuracy/mlperf_log_accuracy.json",
                ],
                "TEST04": ["TEST04/verify_performance.txt", "TEST04/performance/run_1/mlperf_log_detail.txt"],
            }[tests[0]]
            files += ["TEST04/verify_performance.txt"] if "TEST04" in tests else []
            for f in files:
                assert (res / f).is_file() and (res / f).stat().st_size, res / f
            assert "*.*.qsl_rng_seed = 2085463073848966840" in (res / "mlperf.conf").read_text()
    check = (workspace / "submission/package/check.txt").read_text()
    assert check.splitlines()[-1].startswith("check: 5 results,") and check.splitlines()[-1].endswith("0 are defects")
    assert "[seeds]" not in check


def test_v61_runs_carry_v61_seeds_and_single_stream_reports_its_latency(workspace: Path):
    from mlperf_round import layout

    perf = json.loads((workspace / layout.metrics_path("stable-diffusion-xl", "performance")).read_text())
    assert perf["SingleStream"]["valid"] and perf["SingleStream"]["latency_p90_ms"] > 0
    assert all(perf[s]["qsl_rng_seed"] == str(VERSIONS["v6.1"].seeds[0]) for s in ("SingleStream", "Offline", "Server"))
    comp = json.loads((workspace / layout.metrics_path("stable-diffusion-xl", "compliance")).read_text())
    assert comp["SingleStream.TEST04"]["passed"] and comp["SingleStream.TEST01"]["matched"] > 0
    conf = (workspace / layout.out_dir("stable-diffusion-xl", "performance") / "user.conf").read_text()
    assert "stable-diffusion-xl.SingleStream.target_latency = " in conf


MLCOMMONS = Path(__file__).resolve().parent.parent.parent / "shared" / "mlcommons"


@pytest.mark.skipif(not (MLCOMMONS / "main-b66003e1").is_dir(), reason=f"MLCommons' checker is not at {MLCOMMONS}")
def test_mlcommons_current_checker_finds_nothing_but_what_a_smoke_round_cannot_meet(workspace: Path, tmp_path: Path):
    """MLCommons' current checker (master, pinned) on the v6.1 tree, as strict as the v5.0 one (test_round.py)."""
    from mlperf_round.submission.mlcommons import run_checker

    from .checker_findings import unexplained

    verdict = run_checker(MLCOMMONS / "main-b66003e1", workspace / "submission/package/tree", "v6.1", tmp_path)
    log = (tmp_path / "mlcommons_checker.log").read_text()
    assert not verdict["passed"] and " ERROR] " in log, log[-2000:]
    assert unexplained(log) == []
