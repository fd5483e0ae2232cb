"""What one DVC command costs in a finished round, with ruamel's C YAML loader and without it (pure Python).

    python perf/dvc_overhead.py PROJECT [--runs 7] [--stage performance@gptj-99]

DVC parses dvc.lock for every stage it looks at, and the round's lock (40 stages) is about 75 kB.
Every `dvc repro` the round runs, and every stage the Prefect flow runs or restores, pays that parse.
Both variants run in turn (A B A B ...) in the same project, so drift on a noisy machine hits both alike;
the "without" runs hide the C module from ruamel, as an install without ruamel.yaml.clib would.
Prints each command's median wall time per variant and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DVC = "import sys\n{hide}from dvc.cli import main\nsys.exit(main(sys.argv[1:]))\n"
HIDE_C_LOADER = "sys.modules['_ruamel_yaml'] = None  # ruamel falls back to its pure-Python parser\n"


def timed(project: Path, args: list[str], c_loader: bool) -> float:
    code = DVC.format(hide="" if c_loader else HIDE_C_LOADER)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=project, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} in {project} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=Path, help="a project where the round has run (dvc.lock present)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--stage", default="performance@gptj-99", help="an up-to-date stage to `dvc repro`")
    args = parser.parse_args()
    if not (args.project / "dvc.lock").is_file():
        raise SystemExit(f"{args.project}: no dvc.lock; run the round there first")
    try:
        import _ruamel_yaml  # noqa: F401
    except ImportError:
        raise SystemExit("ruamel.yaml.clib is not installed here: nothing to compare against") from None
    commands = {
        "dvc status --json (whole project)": ["status", "--json"],
        f"dvc repro --single-item {args.stage}": ["repro", "-q", "--single-item", args.stage],
    }
    kb = (args.project / "dvc.lock").stat().st_size / 1e3
    print(f"{args.project}: dvc.lock {kb:.0f} kB; {args.runs} runs of each, alternating, after one warm-up")
    for name, dvc_args in commands.items():
        times: dict[bool, list[float]] = {True: [], False: []}
        for c_loader in (True, False):
            timed(args.project, dvc_args, c_loader)
        for _ in range(args.runs):
            for c_loader in (True, False):
                times[c_loader].append(timed(args.project, dvc_args, c_loader))
        with_c, without = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name:55s} C loader {with_c:6.2f} s   pure Python {without:6.2f} s   ratio {with_c / without:.2f}")


if __name__ == "__main__":
    main()
