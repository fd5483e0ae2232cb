"""MLCommons' own submission checker, run on the packaged tree when a clone of mlcommons/inference is named.

v5.1 and later ship it as a package (`python -m submission_checker.main`, run from
tools/submission); a clone checked out at v5.0 has the single-file script. The verdict is
its exit code and its `SUMMARY:` line; both, and the whole log, are kept.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def checker_command(repo: Path, tree: Path, version: str, csv: Path) -> tuple[list[str], Path]:
    tools = repo / "tools" / "submission"
    args = ["--input", str(tree.resolve()), "--version", version, "--csv", str(csv.resolve()), "--skip-power-check"]
    if (tools / "submission_checker" / "main.py").is_file():
        return [sys.executable, "-m", "submission_checker.main", *args], tools
    return [sys.executable, str(tools / "submission_checker.py"), *args], tools


def run_checker(repo: Path, tree: Path, version: str, out: Path, timeout_s: float = 1800) -> dict:
    """Run it; write its log to `out/mlcommons_checker.log`; return the verdict."""
    cmd, cwd = checker_command(repo, tree, version, out / "mlcommons_summary.csv")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    log = proc.stdout + proc.stderr
    (out / "mlcommons_checker.log").write_text(log)
    summary = [ln.split("SUMMARY:", 1)[1].strip() for ln in log.splitlines() if "SUMMARY:" in ln]
    errors = sum(1 for ln in log.splitlines() if re.search(r"\bERROR\b", ln))
    return {
        "passed": proc.returncode == 0 and bool(summary) and "looks OK" in summary[-1],
        "returncode": proc.returncode,
        "summary": summary[-1] if summary else "no verdict (crashed?)",
        "error_lines": errors,
    }
