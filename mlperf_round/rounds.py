"""A round other than params.yaml's, run beside it: `mlperf-round repro --round rounds/v6.1.yaml`.

Each MLPerf version's RNG seeds are compiled into the LoadGen releases of its round, and one
environment holds one mlcommons-loadgen. So the round's version picks its release
(`versions.VERSIONS[v].loadgen`): the installed one when it carries the seeds, otherwise that
release installed once, alone, under `.venv/loadgen/<release>` and put first on the round's
PYTHONPATH. The round runs in a workspace of its own (`.workspaces/<round name>`), a copy of the
project whose params.yaml is the round file, with its own DVC outputs, lock and cache; it tracks
into the project's MLflow store, so `make ui` and `mlperf-round compare` see both rounds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed
from pathlib import Path

from . import workspace
from .errors import ParamsError, RoundError, TransientError
from .params import _version_tuple, load_params
from .versions import VERSIONS

LOADGEN_DIR = Path(sys.prefix) / "loadgen"  # beside the environment's own packages (.venv/loadgen)


def release_for(version: str) -> str | None:
    """None when the installed LoadGen carries the version's seeds; else the release to use."""
    low, high = VERSIONS[version].loadgen
    try:
        have = installed("mlcommons-loadgen")
    except PackageNotFoundError:
        return high
    return None if _version_tuple(low) <= _version_tuple(have) <= _version_tuple(high) else high


def loadgen_path(release: str, root: Path = LOADGEN_DIR) -> Path:
    """That release, installed alone (no dependencies) into a folder of its own, once."""
    target = root / release
    if (target / ".complete").is_file():
        return target.resolve()
    partial = root / f"{release}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(partial),
            f"mlcommons-loadgen=={release}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode:
        shutil.rmtree(partial, ignore_errors=True)
        why = (proc.stderr.strip().splitlines() or ["pip failed"])[-1][:200]
        raise TransientError(f"mlcommons-loadgen=={release}: pip could not install it ({why})")
    (partial / ".complete").write_text(release + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target.resolve()


def environment(version: str, base: dict | None = None) -> dict:
    """The environment a round of `version` runs in: its LoadGen first on PYTHONPATH where the installed one differs."""
    env = dict(os.environ if base is None else base)
    release = release_for(version)
    if release is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(loadgen_path(release)), ".", env.get("PYTHONPATH", "")) if p
        )
    return env


def prepare(round_file: Path, project: Path = Path(".")) -> tuple[Path, str]:
    """The round's workspace, synced with the project's code and the round file as its params.yaml (validated
    first: one line naming a bad key, before anything is copied), and the round's version."""
    params = load_params(round_file)
    dest = workspace.sync(project, project / ".workspaces" / params.round.name)
    shutil.copy2(round_file, dest / "params.yaml")
    return dest, params.round.version


def repro(round_file: Path, project: Path = Path(".")) -> int:
    if not round_file.is_file():
        raise ParamsError(f"--round {round_file}: no such file")
    dest, version = prepare(round_file, project)
    env = environment(version)
    from .tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative: the project's store
        env["MLFLOW_TRACKING_URI"] = "sqlite:///" + str((project / uri.removeprefix("sqlite:///")).resolve())
    print(
        f"{round_file}: MLPerf Inference {version} in {dest} (LoadGen "
        f"{release_for(version) or installed('mlcommons-loadgen')})",
        flush=True,
    )
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=dest, env=env)
    if proc.returncode:
        raise RoundError(f"{round_file}: dvc repro failed in {dest} (exit {proc.returncode})")
    return 0
