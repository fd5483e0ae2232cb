"""Where every stage's outputs live: one place, so stages, dvc.yaml and tests agree."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path("artifacts")

# stage -> name of its single cached output directory
STAGE_OUT = {
    "download": "source",
    "calibrate": "stats",
    "reference": "scores",
    "quantize": "checkpoint",
    "build": "engine",
    "accuracy": "logs",
    "performance": "logs",
    "compliance": "logs",
}


def stage_dir(key: str, stage: str, root: Path = ARTIFACTS) -> Path:
    return root / key / stage


def out_dir(key: str, stage: str, root: Path = ARTIFACTS) -> Path:
    return stage_dir(key, stage, root) / STAGE_OUT[stage]


def metrics_path(key: str, stage: str, root: Path = ARTIFACTS) -> Path:
    return stage_dir(key, stage, root) / "metrics.json"


def plots_dir(key: str, stage: str, root: Path = ARTIFACTS) -> Path:
    """A stage's DVC plots (CSV files), an output of its own so `dvc plots` finds them by stage."""
    return stage_dir(key, stage, root) / "plots"


# beside artifacts/, not in it: package depends on the whole of artifacts/, which holds every entry
SUBMISSION_DIR = Path("submission")
SUBMISSION_OUT = SUBMISSION_DIR / "package"  # tree/ (the MLPerf root), results tables, check findings, tarball
SUBMISSION_METRICS = SUBMISSION_DIR / "metrics.json"
SUBMISSION_PLOTS = SUBMISSION_DIR / "plots"
