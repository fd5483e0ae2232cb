"""Compliance audits: the audit.config LoadGen runs with, and the verification MLCommons expects.

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

AUDITS = {
    "TEST06": (
        "# MLPerf compliance TEST06: output consistency of LLMs\n"
        "*.*.mode = 2\n"
        "*.*.accuracy_log_rng_seed = 720381539243781796\n"
        "*.*.accuracy_log_sampling_target = 100\n"
        "*.*.min_query_count = 100\n"
        "*.*.min_duration = 0\n"
    ),
}


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
            token = _tokens(row["token_data"], dtype) if "token_data" in row else np.zeros(0, dtype=dtype)
            if token.size == 0 or data.size < token.size or not np.array_equal(data[: token.size], token):
                first_ok = False
                failures.append(f"sample {qsl}: first token {token.tolist()} is not the answer's {data[:1].tolist()}")
        trailing = int(np.argmax(data[::-1] != eos_token_id)) if np.any(data != eos_token_id) else data.size
        if trailing > 1 and not (data.size == 2 and trailing == 2):
            eos_ok = False
            failures.append(f"sample {qsl}: ends with {trailing} EOS tokens")
        if row.get("token_count") != data.size:
            length_ok = False
            failures.append(f"sample {qsl}: token_count {row.get('token_count')} != answer length {data.size}")
    return {"first_token": "Skipped" if scenario == "Offline" else first_ok, "eos": eos_ok, "sample_length": length_ok,
            "passed": first_ok and eos_ok and length_ok, "samples": len(rows), "failures": failures[:10]}


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
