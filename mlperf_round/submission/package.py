"""Packaging: what the round measured, laid out as a submission; what would be rejected is refused."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..errors import AccuracyError, ComplianceError, RoundError
from ..params import EntryParams, RoundParams
from ..sources import verify_manifest
from .system import describe
from .tree import Layout, copy_accuracy, copy_compliance, copy_performance, write_json

WEIGHT_TYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8 (e4m3)", "int8_sq": "int8"}
SCORES = ("rouge1", "rouge2", "rougeL", "tokens_per_sample", "FID_SCORE", "CLIP_SCORE")
HEADLINE = ("samples_per_s", "tokens_per_s", "latency_p99_ms", "ttft_p99_ms", "tpot_p99_ms", "valid")


@dataclass
class EntryResults:
    key: str
    entry: EntryParams
    engine: dict
    accuracy: dict
    performance: dict
    accuracy_dir: Path
    performance_dir: Path
    compliance: dict
    compliance_dir: Path
    quantize: dict


def _load(key: str, entry: EntryParams, root: Path) -> EntryResults:
    dirs = {s: layout.out_dir(key, s, root) for s in ("quantize", "build", "accuracy", "performance", "compliance")}
    for d in dirs.values():
        verify_manifest(d)
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    metrics = {s: read(layout.metrics_path(key, s, root)) for s in ("quantize", "accuracy", "performance", "compliance")}
    return EntryResults(
        key, entry, read(dirs["build"] / "engine.json"), metrics["accuracy"], metrics["performance"],
        dirs["accuracy"], dirs["performance"], metrics["compliance"], dirs["compliance"], metrics["quantize"],
    )


def _gate(r: EntryResults, smoke: bool) -> list[str]:
    """Refuse what the checker would reject; return warnings a smoke round carries instead."""
    warnings = []
    if r.entry.division == "closed" and not r.accuracy.get("passed"):
        raise AccuracyError(f"{r.key}: {r.entry.mlperf_id} missed its accuracy target; a closed result is not packaged")
    for test in r.compliance.get("tests", []):
        for scenario in r.entry.scenarios:
            if not r.compliance.get(f"{scenario}.{test}", {}).get("passed"):
                raise ComplianceError(f"{r.key} {scenario}: {test} did not pass; not packaged")
    for scenario in r.entry.scenarios:
        perf = r.performance[scenario]
        if perf["valid"]:
            continue
        why = perf["invalid_reason"] or (f"{perf['errors']} LoadGen errors" if perf["errors"] else "INVALID")
        if not smoke:
            raise RoundError(f"{r.key} {scenario}: the performance run is not valid ({why}); not packaged")
        warnings.append(f"{r.key} {scenario}: INVALID ({why})")
    return warnings


def _measurements(r: EntryResults, source: str) -> dict:
    precision, recipe = r.engine["precision"], r.entry.recipe
    image = r.engine.get("kind") == "text-to-image"
    if precision in ("fp32", "fp16", "bf16"):
        transforms = [] if precision == "fp32" else [f"weights cast to {precision}"]
    elif image:
        transforms = [f"post-training quantization of the UNet to {WEIGHT_TYPES[precision]} (NVIDIA Model Optimizer): ResBlock "
                      "convolutions, attention Q/K/V and feed-forward linears, SmoothQuant on those linears, activation "
                      "ranges from the first calibration denoising steps"]
    else:
        transforms = [f"post-training quantization to {WEIGHT_TYPES[precision]} (NVIDIA Model Optimizer)"]
    if image and r.engine.get("deepcache_interval"):
        transforms.append(f"DeepCache: a full UNet step every {r.engine['deepcache_interval']} steps, shallow steps reuse "
                          f"cached deep features (branch {r.engine['deepcache_branch']}); no retraining")
    if recipe.sparsity != "none":
        transforms.insert(0, f"{recipe.sparsity} structured sparsity on every attention and MLP linear layer "
                             f"({recipe.sparsity_method}, NVIDIA Model Optimizer), post-training, no fine-tuning")
    return {
        "input_data_types": "int32 (CLIP token ids), fp32 initial latents" if image else "int32 (token ids)",
        "retraining": "no",
        "starting_weights_filename": source,
        "weight_data_types": WEIGHT_TYPES[precision],
        "weight_transformations": "; ".join(transforms) or "none",
    }


def _readme(r: EntryResults, scenario: str, smoke: bool) -> str:
    lines = [
        f"# {r.entry.mlperf_id} {scenario}",
        "",
        f"Produced by the mlperf-round pipeline, entry `{r.key}`: `dvc repro` runs download, calibrate, quantize,",
        "build, accuracy, performance and package; `params.yaml` and `dvc.lock` pin every input.",
        "",
        f"- backend: {r.engine['backend']}, precision {r.engine['precision']}, dtype {r.engine['dtype']}, "
        f"max batch {r.engine['max_batch_size']}, "
        + (f"{r.engine['steps']} denoising steps, guidance {r.engine['guidance_scale']}, {r.engine['image_size']} px"
           if "steps" in r.engine else f"beam width {r.engine['beam_width']}"),
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(r.engine['versions'].items()))}",
    ]
    if r.engine.get("scheduler") == "inflight":
        lines.append(f"- in-flight batching, paged KV cache: {r.engine['kv_pool_blocks']} blocks of {r.engine['kv_block_size']} "
                     f"tokens, stored as {'fp8 (e4m3)' if r.engine.get('kv_cache') == 'fp8' else r.engine['dtype']}")
    if r.engine.get("deepcache_interval"):
        lines.append(f"- DeepCache: full UNet step every {r.engine['deepcache_interval']} steps, branch {r.engine['deepcache_branch']}")
    if r.engine["precision"] in ("fp8", "int8_sq"):
        lines.append("- calibration: per-channel activation absmax over the benchmark's calibration list (calibrate stage"
                     + (", the first denoising steps only)" if "steps" in r.engine else ")"))
    if "sparsity" in r.quantize:
        sp = r.quantize["sparsity"]
        lines.append(f"- 2:4 sparsity: {sp['groups_24_share']:.4f} of groups are 2:4 in {sp['layers']} layers; "
                     f"compressed checkpoint {sp['checkpoint_bytes_24']} bytes vs {sp['checkpoint_bytes_dense']} dense")
    if smoke:
        lines += ["", "**Smoke round: shortened LoadGen runs. NOT submittable.**"]
    return "\n".join(lines) + "\n"


def package_round(params: RoundParams, out: Path, root: Path = layout.ARTIFACTS) -> dict:
    smoke, rnd = params.round.smoke, params.round
    results = [_load(k, e, root) for k, e in params.entries.items()]
    warnings = [w for r in results for w in _gate(r, smoke)]
    versions = results[0].engine["versions"] if results else {}
    rows, headline = [], {}
    for division in sorted({r.entry.division for r in results}):
        tree = Layout(rnd.version, out / division / rnd.submitter, rnd.system.name)
        write_json(tree.systems(), describe(params, division, versions))
        for r in (r for r in results if r.entry.division == division):
            bench, bp = r.entry.mlperf_id, params.benchmarks[r.entry.benchmark]
            source = f"{bp.model.hf.repo}@{bp.model.hf.revision}" if bp.model.source == "hf" else "tiny model built from params (seeded)"
            code = tree.code(bench)
            code.mkdir(parents=True, exist_ok=True)
            (code / "README.md").write_text(
                f"# {bench}\n\nReproduce with the mlperf-round pipeline: set `params.yaml` as in this round and run `dvc repro`.\n"
            )
            for scenario in r.entry.scenarios:
                res = tree.results(bench, scenario)
                copy_performance(r.performance_dir / scenario, res / "performance" / "run_1")
                copy_accuracy(r.accuracy_dir / scenario, res / "accuracy")
                for test in r.compliance.get("tests", []):
                    copy_compliance(r.compliance_dir / scenario / test, tree.compliance(bench, scenario, test))
                meas = tree.measurements(bench, scenario)
                meas.mkdir(parents=True, exist_ok=True)
                (meas / "user.conf").write_text((r.performance_dir / "user.conf").read_text())
                (meas / "README.md").write_text(_readme(r, scenario, smoke))
                write_json(tree.measurements_json(bench, scenario, r.engine["backend"]), _measurements(r, source))
                perf, acc = r.performance[scenario], r.accuracy[scenario]
                row = {"division": division, "entry": r.key, "benchmark": bench, "scenario": scenario,
                       "samples_per_s": perf["samples_per_s"], "tokens_per_s": perf.get("tokens_per_s", ""),
                       "latency_p99_ms": perf.get("latency_p99_ms", ""), "ttft_p99_ms": perf.get("ttft_p99_ms", ""),
                       "tpot_p99_ms": perf.get("tpot_p99_ms", ""), "valid": perf["valid"],
                       "accuracy_worst_ratio": round(r.accuracy["worst_ratio"], 4), "accuracy_passed": r.accuracy["passed"],
                       "submittable": bool(perf["valid"] and not smoke)}
                rows.append(row)
                for k in HEADLINE:
                    if k in perf:
                        headline[f"{r.key}/{scenario}/{k}"] = float(perf[k])
                for k in SCORES:
                    if k in acc:
                        headline[f"{r.key}/{scenario}/{k}"] = float(acc[k])
            headline[f"{r.key}/accuracy_worst_ratio"] = float(r.accuracy["worst_ratio"])
    _write_tables(out, rows, smoke, warnings)
    return {"entries": len(results), "rows": len(rows), "submittable": not smoke and not warnings,
            "warnings": warnings, "headline": headline}


def _write_tables(out: Path, rows: list[dict], smoke: bool, warnings: list[str]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (out / "results.csv").write_text(buf.getvalue())
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(fmt(v) for v in row.values()) + " |" for row in rows]
    if smoke:
        md += ["", "Smoke round: LoadGen durations and query counts were shortened. **Not submittable.**"]
    md += [f"- {w}" for w in warnings]
    (out / "results.md").write_text("\n".join(md) + "\n")
