"""Workspaces: a copy of the project where one `dvc repro` at a time runs.

DVC holds a repository lock while it plans and records a stage, so two branches of a round
running at once each need their own workspace; they meet through a shared DVC remote. A
workspace is refreshed in place (code and params), keeping its dvc.lock, outputs and cache,
so DVC decides what is stale exactly as in the source project.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "stages",
    "mlperf_round",
    "flows",
    "prefect.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    ".dvc/plots_template.html",
)


def sync(source: Path, dest: Path) -> Path:
    """Make `dest` a workspace with `source`'s code and params (a git repository, which DVC wants)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src, dst = source / name, dest / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    if not (dest / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def commit(dest: Path, message: str) -> str:
    """Commit everything in a workspace (a throwaway copy the deployments are to pull); its HEAD."""
    git = ["git", "-c", "user.name=mlperf-round", "-c", "user.email=mlperf-round@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", message], cwd=dest, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dest, check=True, capture_output=True, text=True
    ).stdout.strip()


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge params overrides: mappings merge key by key, anything else replaces; None deletes."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def select_benchmarks(params: dict, benchmarks: list[str]) -> dict:
    """Keep only these benchmarks and the entries that submit them."""
    unknown = sorted(set(benchmarks) - set(params.get("benchmarks", {})))
    if unknown:
        from .errors import ParamsError

        raise ParamsError(
            f"benchmarks: {', '.join(unknown)} not in params.yaml (have: {', '.join(params['benchmarks'])})"
        )
    return {
        **params,
        "benchmarks": {k: v for k, v in params["benchmarks"].items() if k in benchmarks},
        "entries": {k: v for k, v in params["entries"].items() if v.get("benchmark") in benchmarks},
    }


def write_params(dest: Path, overrides: dict | None = None, benchmarks: list[str] | None = None) -> None:
    """Apply a round's overrides and benchmark selection to the workspace's params.yaml, validated."""
    from .params import parse_params, read_yaml

    path = dest / "params.yaml"
    data = read_yaml(path.read_text(), path)
    data = merge(data, overrides or {})
    if benchmarks:
        data = select_benchmarks(data, benchmarks)
    parse_params(data, str(path))  # one line naming the bad key, before any work
    path.write_text(yaml.safe_dump(data, sort_keys=False))
