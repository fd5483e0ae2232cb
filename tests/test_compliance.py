"""TEST06 verification on hand-made accuracy logs: each check can fail, and says where.

The passing case runs for real in test_round.py (LoadGen's own TEST06 logs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlperf_round.errors import InputError
from mlperf_round.harness.compliance import verify_test06, write_test06

EOS = 2


def entry(idx: int, tokens: list[int], first: list[int] | None = None, count: int | None = None) -> dict:
    row = {
        "seq_id": idx,
        "qsl_idx": idx,
        "data": np.asarray(tokens, dtype=np.int32).tobytes().hex(),
        "token_count": len(tokens) if count is None else count,
    }
    if first is not None:
        row["token_data"] = np.asarray(first, dtype=np.int32).tobytes().hex()
    return row


def log(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "mlperf_log_accuracy.json"
    path.write_text(json.dumps(rows))
    return path


def test_consistent_answers_pass(tmp_path: Path):
    rows = [entry(0, [5, 6, 7, EOS], first=[5]), entry(1, [EOS, EOS], first=[EOS]), entry(2, [9, 9], first=[9])]
    result = verify_test06(log(tmp_path, rows), "Server", EOS)
    assert result["passed"] and result["first_token"] is True and result["samples"] == 3
    write_test06(result, log(tmp_path, rows), tmp_path / "TEST06")
    text = (tmp_path / "TEST06/verify_accuracy.txt").read_text()
    assert text.splitlines()[-1] == "TEST06 verification complete"
    assert (tmp_path / "TEST06/accuracy/mlperf_log_accuracy.json").is_file()


@pytest.mark.parametrize(
    "row, check",
    [
        (entry(0, [5, 6, EOS], first=[6]), "first_token"),
        (entry(0, [5, 6, EOS], first=None), "first_token"),
        (entry(0, [5, 6, EOS, EOS], first=[5]), "eos"),
        (entry(0, [5, 6, EOS], first=[5], count=2), "sample_length"),
    ],
    ids=["wrong-first-token", "no-first-token", "two-eos", "wrong-count"],
)
def test_each_check_can_fail(tmp_path: Path, row, check):
    result = verify_test06(log(tmp_path, [entry(1, [3, 4], first=[3]), row]), "Server", EOS)
    assert result[check] is False and not result["passed"]
    assert result["failures"] and result["failures"][0].startswith("sample 0:")
    write_test06(result, log(tmp_path, [row]), tmp_path / "TEST06")
    assert "TEST06 verification failed" in (tmp_path / "TEST06/verify_accuracy.txt").read_text()


def test_offline_skips_the_first_token_check(tmp_path: Path):
    result = verify_test06(log(tmp_path, [entry(0, [5, 6, EOS])]), "Offline", EOS)
    assert result["first_token"] == "Skipped" and result["passed"]


def test_a_log_cut_in_half_is_one_line_naming_it(tmp_path: Path):
    path = log(tmp_path, [entry(0, [5, 6, EOS], first=[5])] * 4)
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(InputError, match=r"mlperf_log_accuracy.json: not valid JSON"):
        verify_test06(path, "Server", EOS)


def test_a_performance_log_cut_at_a_line_boundary_is_refused(tmp_path: Path):
    """Settings come before results in a detail log: cut between them, every line still parses."""
    from mlperf_round.harness.logs import read_detail

    def rec(key, value):
        return ":::MLLOG " + json.dumps({"key": key, "value": value, "metadata": {}})

    path = tmp_path / "mlperf_log_detail.txt"
    path.write_text(
        "\n".join([rec("effective_test_mode", "PerformanceOnly"), rec("effective_scenario", "Offline")]) + "\n"
    )
    assert read_detail(path)["effective_scenario"] == "Offline"  # an accuracy run logs no result: fine there
    with pytest.raises(InputError, match=r"mlperf_log_detail.txt: no LoadGen result recorded \(truncated log\?\)$"):
        read_detail(path, performance=True)
    path.write_text(path.read_text() + rec("result_validity", "VALID") + "\n")
    assert read_detail(path, performance=True)["result_validity"] == "VALID"
