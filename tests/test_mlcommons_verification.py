"""The round's compliance verification gives MLCommons' verdicts: their own scripts (v5.0.1 and current master, pinned
in ../shared/mlcommons) run on the same logs, passing and failing cases alike: verify_performance.py (TEST01, TEST04),
TEST01's verify_accuracy.py and TEST06's run_verification.py; and the audits run with MLCommons' audit.config.

The performance logs are real LoadGen runs of a SUT that answers after a set delay: a slower or faster audit, and a
Server run whose latency bound is missed (INVALID).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlperf_round.harness.compliance import verify_performance

from .conftest import ROOT

SNAPSHOTS = ROOT.parent / "shared" / "mlcommons"
pytestmark = pytest.mark.skipif(not SNAPSHOTS.is_dir(), reason=f"MLCommons' scripts are not at {SNAPSHOTS}")
SCRIPTS = {  # (version, test) -> MLCommons' script and how it takes the two runs
    ("v5.0", "TEST01"): ("v5.0.1/compliance/nvidia/TEST01/verify_performance.py", "summary"),
    ("v5.0", "TEST04"): ("v5.0.1/compliance/nvidia/TEST04/verify_performance.py", "summary"),
    ("v6.1", "TEST01"): ("main-b66003e1/compliance/TEST01/verify_performance.py", "detail"),
    ("v6.1", "TEST04"): ("main-b66003e1/compliance/TEST04/verify_performance.py", "summary"),
}


def _loadgen(out: Path, scenario: str, delay_s: float, target_latency_ms: int = 1000) -> Path:
    """A real LoadGen performance run of a SUT that answers every sample `delay_s` after it arrives."""
    import mlperf_loadgen as lg

    out.mkdir(parents=True)
    pending: list[threading.Thread] = []

    def answer(samples):
        time.sleep(delay_s * (len(samples) if scenario == "Offline" else 1))
        lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples])

    def issue(samples):
        t = threading.Thread(target=answer, args=(samples,))
        pending.append(t)
        t.start()

    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.PerformanceOnly
    ts.min_duration_ms = 0
    ts.min_query_count = 300 if scenario == "SingleStream" else 64
    ts.offline_expected_qps = 1 / delay_s
    ts.server_target_qps = 0.5 / delay_s
    ts.server_target_latency_ns = target_latency_ms * 1_000_000
    ts.single_stream_expected_latency_ns = int(delay_s * 1e9)
    log = lg.LogSettings()
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(16, 16, lambda s: None, lambda s: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, ts, log, "")
    finally:
        for t in pending:
            t.join()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    return out


def _mlcommons_passes(version: str, test: str, reference: Path, audit: Path) -> bool:
    script, reads = SCRIPTS[(version, test)]
    if reads == "summary":
        args = ["-r", str(reference / "mlperf_log_summary.txt"), "-t", str(audit / "mlperf_log_summary.txt")]
    else:
        args = [
            "--reference_log_details",
            str(reference / "mlperf_log_detail.txt"),
            "--test_log_details",
            str(audit / "mlperf_log_detail.txt"),
        ]
    proc = subprocess.run(
        [sys.executable, str(SNAPSHOTS / script), *args],
        capture_output=True,
        text=True,
        cwd=(SNAPSHOTS / script).parent,
        timeout=120,
    )
    return "TEST PASS" in proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Reference runs and audits: as fast, much faster (a cache), much slower, and a Server run over its bound."""
    root = tmp_path_factory.mktemp("loadgen")
    made = {}
    for scenario, delay in (("Offline", 0.01), ("Server", 0.01), ("SingleStream", 0.005)):
        made[scenario, "reference"] = _loadgen(root / scenario / "reference", scenario, delay)
        made[scenario, "same"] = _loadgen(root / scenario / "same", scenario, delay)
        made[scenario, "faster"] = _loadgen(root / scenario / "faster", scenario, delay / 10)
        made[scenario, "slower"] = _loadgen(root / scenario / "slower", scenario, delay * 4)
    made["Server", "invalid"] = _loadgen(root / "Server" / "invalid", "Server", 0.01, target_latency_ms=1)
    return made


@pytest.mark.parametrize("version, test", sorted(SCRIPTS))
@pytest.mark.parametrize("scenario", ["Offline", "Server", "SingleStream"])
def test_verdicts_are_mlcommons_verdicts_on_the_same_logs(runs, version, test, scenario):
    cases = ["same", "faster", "slower"] + (["invalid"] if scenario == "Server" else [])
    verdicts = {}
    for case in cases:
        ours = verify_performance(runs[scenario, "reference"], runs[scenario, case], scenario, test, version)
        theirs = _mlcommons_passes(version, test, runs[scenario, "reference"], runs[scenario, case])
        assert ours["passed"] is theirs, (case, ours)
        verdicts[case] = theirs
    assert not verdicts["faster"]  # a cache-like speedup fails every audit in every version
    if scenario == "Server":
        assert not verdicts["invalid"]


def _settings(text: str) -> dict[tuple[str, str, str], str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            name, value = (part.strip() for part in line.split("=", 1))
            model, scenario, key = name.split(".", 2)
            out[model, scenario, key] = value
    return out


def _effective(settings: dict, model: str, scenario: str) -> dict[str, str]:
    """What LoadGen applies for one model and scenario: the most specific line wins."""
    keys = {k for _, _, k in settings}
    found = {}
    for key in keys:
        for where in ((model, scenario), (model, "*"), ("*", scenario), ("*", "*")):
            if (*where, key) in settings:
                found[key] = settings[(*where, key)]
                break
    return found


@pytest.mark.parametrize("folder", ["v5.0.1/compliance/nvidia", "main-b66003e1/compliance"])
@pytest.mark.parametrize("test", ["TEST01", "TEST04", "TEST06"])
def test_audit_configs_are_mlcommons_own(folder, test, tmp_path):
    """The settings each audit runs with equal MLCommons' audit.config of that version, for every benchmark and
    scenario the round runs; with a clone named, its file is used as it is."""
    from mlperf_round.harness.compliance import audit_config

    path = SNAPSHOTS / folder / test / "audit.config"
    theirs = _settings(path.read_text()) if path.is_file() else None
    if theirs is None:  # TEST01 ships one per benchmark (its folders): the round's generic one is checked per model
        path = SNAPSHOTS / folder / test / "stable-diffusion-xl" / "audit.config"
        theirs = _settings(path.read_text())
    ours = _settings(audit_config(test))
    for model in ("gptj", "llama2-70b", "stable-diffusion-xl"):
        for scenario in ("Offline", "Server", "SingleStream"):
            assert _effective(ours, model, scenario) == _effective(theirs, model, scenario), (model, scenario)
    copy = tmp_path / "inference" / folder.split("/", 1)[1] / path.relative_to(SNAPSHOTS / folder)  # the clone's layout
    copy.parent.mkdir(parents=True)
    copy.write_text(path.read_text() + "# the clone's own\n")
    clone = tmp_path / "inference"
    assert audit_config(test, str(clone), "stable-diffusion-xl") == path.read_text() + "# the clone's own\n"


TEST06_LOGS = {  # one answer each (int32 token ids, EOS = 2, MLCommons' default), as LoadGen logs it
    "consistent": ([5, 6, 7, 2], [5], 4),
    "two-eos": ([5, 6, 2, 2], [5], 4),
    "only-eos": ([2, 2], [2], 2),
    "count-off": ([5, 6, 7], [5], 4),
    "first-differs": ([5, 6, 7], [9], 3),
    "first-empty": ([5, 6, 7], [], 3),
    "first-longer": ([5, 6], [5, 6, 7], 2),
}


@pytest.mark.parametrize("snapshot", ["v5.0.1/compliance/nvidia", "main-b66003e1/compliance"])
@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_test06_verdicts_are_mlcommons_verdicts(tmp_path, snapshot, scenario):
    import json

    import numpy as np

    from mlperf_round.harness.compliance import verify_test06

    for case, (answer, first, count) in TEST06_LOGS.items():
        run = tmp_path / case / "run"
        run.mkdir(parents=True)
        hexed = lambda tokens: np.asarray(tokens, dtype=np.int32).tobytes().hex().upper()  # noqa: E731
        (run / "mlperf_log_accuracy.json").write_text(
            json.dumps(
                [{"seq_id": 0, "qsl_idx": 3, "data": hexed(answer), "token_data": hexed(first), "token_count": count}]
            )
        )
        subprocess.run(
            [
                sys.executable,
                str(SNAPSHOTS / snapshot / "TEST06/run_verification.py"),
                "-c",
                str(run),
                "-o",
                str(tmp_path / case / "out"),
                "-s",
                scenario,
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        theirs = (tmp_path / case / "out/TEST06/verify_accuracy.txt").read_text()
        ours = verify_test06(run / "mlperf_log_accuracy.json", scenario, eos_token_id=2)
        assert ours["passed"] is ("TEST06 verification complete" in theirs), (case, ours, theirs)


TEST01_LOGS = {  # the performance run's logged answers against the accuracy run's {0: 10 11, 1: 20 21, 2: empty}
    "identical": {0: "1011", 1: "2021"},
    "later-byte-differs": {1: "2099"},
    "first-byte-differs": {1: "2121"},
    "both-empty": {2: ""},
    "one-empty": {2: "01"},
    "no-sample-in-common": {7: "10"},
}


@pytest.mark.parametrize("snapshot", ["v5.0.1/compliance/nvidia", "main-b66003e1/compliance"])
def test_test01_accuracy_verdicts_are_mlcommons_verdicts(tmp_path, snapshot):
    import json

    from mlperf_round.harness.compliance import verify_test01_accuracy

    def log(path: Path, rows: dict[int, str]) -> Path:
        path.write_text(json.dumps([{"seq_id": i, "qsl_idx": k, "data": v} for i, (k, v) in enumerate(rows.items())]))
        return path

    reference = log(tmp_path / "accuracy.json", {0: "1011", 1: "2021", 2: ""})
    for case, rows in TEST01_LOGS.items():
        audit = log(tmp_path / f"{case}.json", rows)
        proc = subprocess.run(
            [
                sys.executable,
                str(SNAPSHOTS / snapshot / "TEST01/verify_accuracy.py"),
                "-r",
                str(reference),
                "-t",
                str(audit),
                "--dtype",
                "byte",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        ours = verify_test01_accuracy(reference, audit, "uint8")
        assert ours["passed"] is ("TEST PASS" in proc.stdout), (case, ours, proc.stdout[-300:])
