"""Where each packaged result came from: the git commit, DVC's hashes of every stage output, the MLflow runs.

The runner writes each stage's MLflow run id and commit into its metrics.json when it
publishes the output; DVC records the content hash of every output in dvc.lock as each
stage finishes. Together they trace a number in the tree back to the exact code, inputs and
run that produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import layout

ENTRY_STAGES = ("quantize", "build", "accuracy", "performance", "compliance")
BENCHMARK_STAGES = ("download", "calibrate", "reference")


@dataclass
class Provenance:
    lock: dict = field(default_factory=dict)

    @classmethod
    def load(cls, lock_file: Path = Path("dvc.lock")) -> Provenance:
        try:
            return cls((yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}))
        except (OSError, yaml.YAMLError):
            return cls({})  # not run through `dvc repro`: hashes are reported as unknown

    def dvc_hash(self, stage: str, key: str) -> str:
        outs = self.lock.get(f"{stage}@{key}", {}).get("outs", [])
        main = [o for o in outs if not o["path"].endswith("metrics.json")]
        return main[0].get("md5", "unknown") if main else "unknown (not run through dvc repro)"

    def entry(self, key: str, benchmark: str, root: Path = layout.ARTIFACTS) -> list[dict[str, str]]:
        """One record per stage the entry's results depend on."""
        out = []
        for stage, owner in [(s, benchmark) for s in BENCHMARK_STAGES] + [(s, key) for s in ENTRY_STAGES]:
            try:
                meta = json.loads(layout.metrics_path(owner, stage, root).read_text()).get("provenance", {})
            except (OSError, json.JSONDecodeError):
                meta = {}
            out.append(
                {
                    "stage": f"{stage}@{owner}",
                    "dvc_md5": self.dvc_hash(stage, owner),
                    "mlflow_run_id": meta.get("mlflow_run_id", "unknown"),
                    "git_commit": meta.get("git_commit", "unknown"),
                }
            )
        return out


def markdown(records: list[dict[str, str]]) -> list[str]:
    lines = ["## Provenance", "", "| stage | DVC output md5 | MLflow run | git commit |", "|---|---|---|---|"]
    lines += [
        f"| {r['stage']} | `{r['dvc_md5']}` | `{r['mlflow_run_id']}` | `{r['git_commit'][:12]}` |" for r in records
    ]
    return lines
