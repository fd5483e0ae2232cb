"""The submission tree MLCommons' checker reads, laid out for the round's version.

v5.0 / v5.1: code/, measurements/<system>/..., compliance/<system>/...
v6.0 / v6.1: src/, results/<system>/<bench>/<scenario>/measurements.json, TEST0x under results/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..jsonfile import read_json

ACCURACY_KEEP = 4096  # bytes kept at each end of a published mlperf_log_accuracy.json
MAX_ACCURACY_LOG = 10240  # the checker takes a larger accuracy log for an untruncated one


@dataclass(frozen=True)
class Layout:
    version: str
    root: Path  # <division>/<submitter>
    system: str

    @property
    def new_style(self) -> bool:
        return self.version in ("v6.0", "v6.1")

    def code(self, bench: str) -> Path:
        return self.root / ("src" if self.new_style else "code") / bench

    def systems(self) -> Path:
        return self.root / "systems" / f"{self.system}.json"

    def results(self, bench: str, scenario: str) -> Path:
        return self.root / "results" / self.system / bench / scenario

    def measurements(self, bench: str, scenario: str) -> Path:
        if self.new_style:
            return self.results(bench, scenario)
        return self.root / "measurements" / self.system / bench / scenario

    def measurements_json(self, bench: str, scenario: str, impl: str) -> Path:
        if self.new_style:
            return self.results(bench, scenario) / "measurements.json"
        return self.measurements(bench, scenario) / f"{self.system}_{impl}_{scenario}.json"

    def compliance(self, bench: str, scenario: str, test: str) -> Path:
        if self.new_style:
            return self.results(bench, scenario) / test
        return self.root / "compliance" / self.system / bench / scenario / test


def truncate_accuracy_log(src: Path, dst_dir: Path) -> str:
    """Copy the accuracy log as MLPerf publishes it: ends kept around '...'; return the full file's sha256."""
    data = src.read_bytes()
    rows = read_json(src, "missing; the accuracy run did not finish")  # a log cut short is refused, not published
    if not isinstance(rows, list):
        raise InputError(f"{src}: not a LoadGen accuracy log (a JSON list of responses)")
    digest = hashlib.sha256(data).hexdigest()
    dst = dst_dir / src.name
    if len(data) > 2 * ACCURACY_KEEP:
        dst.write_bytes(data[:ACCURACY_KEEP] + b"\n...\n" + data[-ACCURACY_KEEP:])
    else:
        dst.write_bytes(data)
    return digest


def copy_accuracy(run_dir: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy2(run_dir / name, dst / name)
    digest = truncate_accuracy_log(run_dir / "mlperf_log_accuracy.json", dst)
    text = (run_dir / "accuracy.txt").read_text().rstrip("\n")
    (dst / "accuracy.txt").write_text(f"{text}\nhash={digest}\n")


def copy_performance(run_dir: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy2(run_dir / name, dst / name)


def copy_compliance(test_dir: Path, dst: Path) -> None:
    """A verified audit: verify_*.txt, its performance run (TEST01, TEST04) and its accuracy log
    (published truncated, like every accuracy log)."""
    dst.mkdir(parents=True, exist_ok=True)
    for verify in sorted(test_dir.glob("verify_*.txt")):
        shutil.copy2(verify, dst / verify.name)
    if (test_dir / "performance" / "run_1").is_dir():
        shutil.copytree(test_dir / "performance" / "run_1", dst / "performance" / "run_1", dirs_exist_ok=True)
    if (test_dir / "accuracy").is_dir():
        (dst / "accuracy").mkdir(exist_ok=True)
        digest = truncate_accuracy_log(test_dir / "accuracy" / "mlperf_log_accuracy.json", dst / "accuracy")
        (dst / "accuracy" / "accuracy.txt").write_text(f"hash={digest}\n")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
