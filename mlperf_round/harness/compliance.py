"""Compliance audits: the audit.config LoadGen runs with, and the verification MLCommons expects.

TEST01 (text-to-image) logs sampled answers during a performance run; each must equal the
accuracy run's answer for the same sample (compared, as MLCommons' verify_accuracy.py
does, on the first element; whole-answer equality is counted too), and the run's
throughput must stay within 10% of the performance run's either way. TEST04 issues one
sample again and again; the run must not be more than 10% faster than the performance run
(a faster one means results are cached).

TEST06 (LLM output consistency) is a performance-mode run that logs 100 sampled answers;
its verification checks, per logged answer, that the first token reported equals the
answer's first token (latency scenarios), that at most one EOS ends it, and that the token
count given to LoadGen equals its length. The checks follow the published TEST06 README;
the verification text is written in the shape the submission checker reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..jsonfile import read_json
from .logs import ACCURACY

AUDITS = {
    "TEST06": (
        "# MLPerf compliance TEST06: output consistency of LLMs\n"
        "*.*.mode = 2\n"
        "*.*.accuracy_log_rng_seed = 720381539243781796\n"
        "*.*.accuracy_log_sampling_target = 100\n"
        "*.*.min_query_count = 100\n"
        "*.*.min_duration = 0\n"
        "*.*.sample_concatenate_permutation = 0\n"
    ),
    "TEST01": (
        "# MLPerf compliance TEST01: accuracy logging in performance mode\n"
        "*.*.mode = 2\n"
        "*.*.accuracy_log_rng_seed = 720381539243781796\n"
        "*.*.accuracy_log_sampling_target = 128\n"
    ),
    "TEST04": (
        "# MLPerf compliance TEST04: the same sample issued again and again\n"
        "*.*.mode = 2\n"
        "*.*.performance_issue_unique = 0\n"
        "*.*.performance_issue_same = 1\n"
        "*.*.performance_issue_same_index = 3\n"
        "stable-diffusion-xl.Offline.min_query_count = 500\n"
    ),
}


def audit_config(test: str, mlcommons_inference: str = "", model: str = "") -> str:
    """The audit.config LoadGen runs a test with: from a named clone of mlcommons/inference (its checked-out
    version's file, under compliance/nvidia/ in v5.0 and compliance/ later, per model where the test has one folder
    per model, as TEST01 does), else the settings above, which equal MLCommons' files of v5.0.1 and of current
    master (tests/test_mlcommons_verification.py compares them)."""
    if mlcommons_inference:
        for folder in ("compliance/nvidia", "compliance"):
            for path in (
                Path(mlcommons_inference) / folder / test / model / "audit.config",
                Path(mlcommons_inference) / folder / test / "audit.config",
            ):
                if path.is_file():
                    return path.read_text()
        raise InputError(
            f"{mlcommons_inference}: no compliance/{test}/{model + '/' if model else ''}audit.config "
            "(nor under compliance/nvidia/)"
        )
    return AUDITS[test]


PERFORMANCE_THRESHOLD = 0.10  # verify_performance.py, Offline and Server
# A smoke round's runs last seconds, where warm-up and a busy core move throughput by 10%;
# its audits still catch what TEST04 exists for (a cache answers many times faster).
SMOKE_PERFORMANCE_THRESHOLD = 0.50
_SCORE_LINE = {
    "Offline": ("Samples per second",),
    "Server": ("Completed samples per second",),
    "SingleStream": (
        "Early stopping 90th percentile estimate",
        "Early stopping 90.0th percentile estimate",
        "Early stopping 99.9th percentile estimate",
    ),
}
_DETAIL_FIELD = {
    "Offline": "result_samples_per_second",
    "Server": "result_completed_samples_per_sec",
    "SingleStream": "early_stopping_latency_ss",
}
_LATENCY_SCORED = {"SingleStream"}  # a latency: the audit compares its inverse, a rate, like the others


def _tokens(hex_data: str, dtype: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_data), dtype=dtype)


def verify_test06(log: Path, scenario: str, eos_token_id: int, dtype: str = "int32") -> dict:
    """The three TEST06 checks over a performance-mode accuracy log."""
    rows = read_json(log, "missing; the TEST06 run did not finish")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{log}: no logged answers; TEST06 needs accuracy logging in performance mode")
    first_ok = eos_ok = length_ok = True
    failures: list[str] = []
    for row in rows:
        data = _tokens(row["data"], dtype)
        qsl = row.get("qsl_idx")
        if scenario != "Offline":
            # as run_verification.py: the reported tokens must agree with the answer as far as both go
            token = _tokens(row["token_data"], dtype) if "token_data" in row else None
            n = 0 if token is None else min(token.size, data.size)
            if token is None or not np.array_equal(data[:n], token[:n]):
                first_ok = False
                failures.append(
                    f"sample {qsl}: first token {None if token is None else token.tolist()} is not the "
                    f"answer's {data[:1].tolist()}"
                )
        trailing = int(np.argmax(data[::-1] != eos_token_id)) if np.any(data != eos_token_id) else data.size
        if min(trailing, data.size - 1) >= 2:  # run_verification.py never looks at the answer's first token
            eos_ok = False
            failures.append(f"sample {qsl}: ends with {trailing} EOS tokens")
        if row.get("token_count") != data.size:
            length_ok = False
            failures.append(f"sample {qsl}: token_count {row.get('token_count')} != answer length {data.size}")
    return {
        "first_token": "Skipped" if scenario == "Offline" else first_ok,
        "eos": eos_ok,
        "sample_length": length_ok,
        "passed": first_ok and eos_ok and length_ok,
        "samples": len(rows),
        "failures": failures[:10],
    }


def write_test06(result: dict, log: Path, out: Path) -> None:
    """The TEST06 folder as MLCommons' verification leaves it: verify_accuracy.txt and the log."""
    (out / "accuracy").mkdir(parents=True, exist_ok=True)
    shutil.copy2(log, out / "accuracy" / log.name)
    lines = [
        f"First token check pass: {result['first_token']}",
        f"EOS check pass: {result['eos']}",
        f"Sample length check pass: {result['sample_length']}",
        "TEST06 verification complete" if result["passed"] else "TEST06 verification failed",
    ]
    (out / "verify_accuracy.txt").write_text("\n".join(lines) + "\n")


def verify_test01_accuracy(accuracy_log: Path, audit_log: Path, dtype: str) -> dict:
    """Every answer logged in performance mode against the accuracy run's answer for that sample."""
    reference = {}
    for row in read_json(accuracy_log, "missing; TEST01 needs the entry's accuracy run"):
        reference.setdefault(int(row["qsl_idx"]), row["data"])
    rows = read_json(audit_log, "missing; the TEST01 run did not finish")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{audit_log}: no logged answers; TEST01 needs accuracy logging in performance mode")
    matched = first_mismatch = exact = 0
    failures: list[str] = []
    for row in rows:
        qsl = int(row["qsl_idx"])
        if qsl not in reference:
            continue
        matched += 1
        ref, got = _tokens(reference[qsl], dtype), _tokens(row["data"], dtype)
        if (ref.size == 0 or got.size == 0) and ref.size != got.size or ref.size and got.size and ref[0] != got[0]:
            first_mismatch += 1  # as verify_accuracy.py: two empty answers agree
            failures.append(f"sample {qsl}: answer differs from the accuracy run's")
        elif np.array_equal(ref, got):
            exact += 1
    return {
        "passed": first_mismatch == 0 and matched > 0,
        "logged": len(rows),
        "matched": matched,
        "mismatched": first_mismatch,
        "identical": exact,
        "failures": failures[:10],
    }


def _summary_score(run_dir: Path, keys: tuple[str, ...], invert: bool) -> tuple[float | None, bool, None]:
    """What a summary-reading verify_performance.py takes: the last line ending in one of `keys` (its value inverted
    into a rate where the script does so), and whether LoadGen called the run VALID. None where no line matches:
    the script then compares a score of 0."""
    from .logs import SUMMARY, read_summary

    values = read_summary(run_dir / SUMMARY)
    found = [values[k] for k in values if any(k == want or k.endswith(" " + want) for want in keys)]
    if not found:
        return None, values.get("Result is") == "VALID", None
    value = float(found[-1])
    return (1e9 / value if invert and value else value), values.get("Result is") == "VALID", None


def _detail_score(run_dir: Path, scenario: str) -> tuple[float, bool, object]:
    """What the detail-reading verify_performance.py (v5.1 and later, TEST01) takes: the result field of the
    scenario (a latency in ns for SingleStream), result_validity, and Server's effective target latency."""
    from .logs import DETAIL, read_detail

    values = read_detail(run_dir / DETAIL, performance=True)
    field = _DETAIL_FIELD[scenario]
    if field not in values:
        raise InputError(f"{run_dir / DETAIL}: no {field}; not a {scenario} performance log")
    return float(values[field]), values.get("result_validity") == "VALID", values.get("effective_target_latency_ns")


def verify_performance(
    reference: Path, audit: Path, scenario: str, test: str, version: str, threshold: float | None = None
) -> dict:
    """MLCommons' verify_performance.py of the round's version on two run folders (summary and detail logs).

    TEST04, and TEST01 up to v5.0, read the summaries: an INVALID run fails; the score is a rate (SingleStream: one
    over the early-stopping latency estimate); TEST04 fails a test more than 10% faster, TEST01 one outside 10%
    either way. From v5.1 TEST01 reads the detail logs: result_validity, Server's target latency must match, and a
    SingleStream latency (in ns) within 10% either way. A SingleStream reference under 200,000 (rate, or ns) gets
    20%. `threshold` widens the band for a smoke round's seconds-long runs, never narrows it."""
    detail = test == "TEST01" and version != "v5.0"
    if detail:
        (ref, ref_valid, ref_target), (got, got_valid, got_target) = (
            _detail_score(reference, scenario),
            _detail_score(audit, scenario),
        )
    else:
        keys = _SCORE_LINE[scenario]
        if scenario == "SingleStream" and version == "v5.0":  # v5.0's scripts know the "90th" spelling only
            keys = ("Early stopping 90th percentile estimate",)
        invert = scenario in _LATENCY_SCORED and not (version == "v5.0" and test == "TEST01")  # v5.0 TEST01: ns as is
        (ref, ref_valid, ref_target), (got, got_valid, got_target) = (
            _summary_score(reference, keys, invert),
            _summary_score(audit, keys, invert),
        )
    missing = ref is None or got is None
    ref, got = ref or 0.0, got or 0.0
    limit = 0.20 if scenario == "SingleStream" and ref <= 200000 else PERFORMANCE_THRESHOLD
    limit = max(limit, threshold or 0.0)
    if missing:
        reason = f"no '{keys[0]}' line, the score verify_performance.py of {version} reads"
    elif not ref_valid:
        reason = "Reference results are invalid"
    elif not got_valid:
        reason = "Test results are invalid"
    elif detail and scenario == "Server" and ref_target != got_target:
        reason = "Server target latency mismatch"
    elif test == "TEST04":
        reason = "" if got < ref * (1 + limit) else "Test score invalid"
    elif detail:
        reason = "" if ref * (1 - limit) <= got <= ref * (1 + limit) else "Test score invalid"
    else:
        reason = "" if ref * (1 - limit) < got < ref * (1 + limit) else "Test score invalid"
    return {
        "passed": not reason,
        "reason": reason,
        "reference_score": ref,
        "test_score": got,
        "ratio": got / ref if ref else float("inf"),
        "threshold": limit,
    }


def write_audit(test: str, accuracy: dict | None, performance: dict, run_dir: Path, out: Path) -> None:
    """The TEST01 / TEST04 folder as MLCommons' run_verification.py leaves it."""
    perf_dir = out / "performance" / "run_1"
    perf_dir.mkdir(parents=True, exist_ok=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy2(run_dir / name, perf_dir / name)
    verdict = "TEST PASS" if performance["passed"] else f"TEST FAIL: {performance['reason']}"
    (out / "verify_performance.txt").write_text(
        f"reference score = {performance['reference_score']}\ntest score = {performance['test_score']}\n"
        f"threshold = {performance['threshold']}\n{verdict}\n"
    )
    if accuracy is not None:
        (out / "accuracy").mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / "mlperf_log_accuracy.json", out / "accuracy" / "mlperf_log_accuracy.json")
        lines = [
            f"num_perf_log_entries: {accuracy['logged']}",
            f"num_perf_log_qsl_idx_match: {accuracy['matched']}",
            f"num_perf_log_data_mismatch: {accuracy['mismatched']}",
            f"num_perf_log_data_identical: {accuracy['identical']}",
            "TEST PASS" if accuracy["passed"] else "TEST FAIL",
        ]
        (out / "verify_accuracy.txt").write_text("\n".join(lines) + "\n")


def verdict(
    test: str,
    run_dir: Path,
    out: Path,
    scenario: str,
    accuracy_run: Path,
    performance_run: Path,
    engine: Path,
    response_dtype: str,
    version: str,
    smoke: bool,
) -> dict:
    """One audit run judged as MLCommons' run_verification.py judges it, its verify_*.txt written to `out`.

    `scenario` is LoadGen's (Server for Interactive); a smoke round's throughput checks allow
    SMOKE_PERFORMANCE_THRESHOLD."""
    if test == "TEST06":
        from ..jsonfile import read_json

        eos = read_json(engine / "engine.json", "missing; TEST06 needs the engine's EOS token")["eos_token_id"]
        result = verify_test06(run_dir / ACCURACY, scenario, eos)
        write_test06(result, run_dir / ACCURACY, out)
        return result
    accuracy = None
    if test == "TEST01":
        accuracy = verify_test01_accuracy(accuracy_run / ACCURACY, run_dir / ACCURACY, response_dtype)
    threshold = SMOKE_PERFORMANCE_THRESHOLD if smoke else PERFORMANCE_THRESHOLD
    performance = verify_performance(performance_run, run_dir, scenario, test, version, threshold)
    write_audit(test, accuracy, performance, run_dir, out)
    failures = list((accuracy or {}).get("failures", []))
    if not performance["passed"]:
        failures.append(
            f"{performance['reason']}: score {performance['test_score']:.3f} against the performance "
            f"run's {performance['reference_score']:.3f} (ratio {performance['ratio']:.3f})"
        )
    return {
        "passed": (accuracy is None or accuracy["passed"]) and performance["passed"],
        "failures": failures,
        "performance_ratio": performance["ratio"],
        "performance_threshold": threshold,
        **({"identical": accuracy["identical"], "matched": accuracy["matched"]} if accuracy else {}),
    }
