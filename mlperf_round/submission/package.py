"""Packaging: what the round measured, laid out as a submission; what would be rejected is refused."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .. import backends, hostfacts, layout
from ..errors import RoundError
from ..harness import mlperf_conf
from ..harness.logs import performance_metrics
from ..params import EntryParams, RoundParams
from ..sources import verify_manifest
from ..versions import scenarios_for
from . import code
from .check import SMOKE_RULES, Finding, check_tree, summarize
from .provenance import Provenance, markdown
from .system import describe, measured_host
from .tree import Layout, copy_accuracy, copy_compliance, copy_performance, write_json

TREE = "tree"  # the MLPerf root inside the stage's output: closed/ and open/ only

WEIGHT_TYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8 (e4m3)", "int8_sq": "int8"}
HEADLINE = ("samples_per_s", "tokens_per_s", "latency_p90_ms", "latency_p99_ms", "ttft_p99_ms", "tpot_p99_ms", "valid")


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
    for scenario in entry.scenarios:  # a manifest proves the bytes are the stage's, not that its logs are whole
        if (dirs["performance"] / scenario).is_dir():
            performance_metrics(dirs["performance"] / scenario, scenario)
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    metrics = {
        s: read(layout.metrics_path(key, s, root)) for s in ("quantize", "accuracy", "performance", "compliance")
    }
    return EntryResults(
        key,
        entry,
        read(dirs["build"] / "engine.json"),
        metrics["accuracy"],
        metrics["performance"],
        dirs["accuracy"],
        dirs["performance"],
        metrics["compliance"],
        dirs["compliance"],
        metrics["quantize"],
    )


class PackagingError(RoundError):
    """Results the checker would reject: one line per problem."""

    def __init__(self, problems: list[str], limit: int = 25):
        shown = problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])
        super().__init__("\n".join(shown))
        self.problems = problems


def _refusals(r: EntryResults, params: RoundParams) -> tuple[list[str], list[str]]:
    """What the checker would reject (problems), and what a smoke round carries instead (warnings)."""
    problems, warnings, smoke = [], [], params.round.smoke
    if r.entry.division == "closed" and not r.accuracy.get("passed"):
        problems.append(
            f"{r.key}: {r.entry.mlperf_id} missed its accuracy target (worst ratio to the reference "
            f"{r.accuracy.get('worst_ratio', 0):.4f})"
        )
    measured = [s for s in r.entry.scenarios if s in r.performance]
    folders: dict[str, set[str]] = {}
    for p in params.placements(r.entry):
        folders.setdefault(p.mlperf_id, set()).update({p.folder} if p.scenario in r.performance else set())
    missing = []
    for mlperf_id, have in folders.items():
        need = scenarios_for(params.round.version, params.system_of(r.entry).system_type, mlperf_id)
        missing += need.missing(have) if need and r.entry.division == "closed" else []
    missing += [s for s in r.entry.scenarios if s not in r.performance and s not in missing]
    if missing:
        problems.append(f"{r.key}: required scenario {', '.join(dict.fromkeys(missing))} has no performance result")
    for test in r.compliance.get("tests", []):
        for scenario in measured:
            if not r.compliance.get(f"{scenario}.{test}", {}).get("passed"):
                problems.append(f"{r.key} {scenario}: compliance {test} did not pass")
    for scenario in measured:
        perf = r.performance[scenario]
        if perf["valid"]:
            continue
        why = perf["invalid_reason"] or (f"{perf['errors']} LoadGen errors" if perf["errors"] else "INVALID")
        (warnings if smoke else problems).append(f"{r.key} {scenario}: the performance run is INVALID ({why})")
    return problems, warnings


def recipe_label(r: EntryResults) -> str:
    """The recipe in a few words, for plots and the report: precision, sparsity, DeepCache."""
    parts = [r.engine["precision"]]
    if r.entry.recipe.sparsity != "none":
        parts.append(f"{r.entry.recipe.sparsity} {r.entry.recipe.sparsity_method}")
    if r.engine.get("deepcache_interval"):
        parts.append(f"DeepCache/{r.engine['deepcache_interval']}")
    if r.entry.recipe.prune.active:
        parts.append("pruned" + (" + KD" if r.entry.recipe.distill.steps else ""))
    return " + ".join(parts)


def _measurements(r: EntryResults, source: str) -> dict:
    precision, recipe = r.engine["precision"], r.entry.recipe
    image = r.engine.get("kind") == "text-to-image"
    if precision in ("fp32", "fp16", "bf16"):
        transforms = [] if precision == "fp32" else [f"weights cast to {precision}"]
    elif image:
        transforms = [
            f"post-training quantization of the UNet to {WEIGHT_TYPES[precision]} (NVIDIA Model Optimizer): ResBlock "
            "convolutions, attention Q/K/V and feed-forward linears, SmoothQuant on those linears, activation "
            "ranges from the first calibration denoising steps"
        ]
    else:
        transforms = [f"post-training quantization to {WEIGHT_TYPES[precision]} (NVIDIA Model Optimizer)"]
    if image and r.engine.get("deepcache_interval"):
        transforms.append(
            f"DeepCache: a full UNet step every {r.engine['deepcache_interval']} steps, shallow steps reuse "
            f"cached deep features (branch {r.engine['deepcache_branch']}); no retraining"
        )
    if recipe.sparsity != "none":
        transforms.insert(
            0,
            f"{recipe.sparsity} structured sparsity on every attention and MLP linear layer "
            f"({recipe.sparsity_method}, NVIDIA Model Optimizer), post-training, no fine-tuning",
        )
    pruned = r.quantize.get("pruning")
    if pruned:
        kd = recipe.distill
        steps = [
            f"structured pruning to {pruned['layers']} decoder layers and {pruned['heads_per_layer']} attention heads "
            f"per layer ({pruned['parameters_before']:,} -> {pruned['parameters_after']:,} parameters), layers by "
            f"block "
            "influence and heads by output norm on the calibration list"
        ]
        if kd.steps:
            steps.append(
                f"knowledge distillation from the unpruned model: KL divergence of logits at temperature "
                f"{kd.temperature:g}, {kd.steps} steps, AdamW lr {kd.lr:g}, on the calibration list "
                "(NVIDIA Model Optimizer distillation)"
            )
        transforms[:0] = steps
    return {
        "input_data_types": "int32 (CLIP token ids), fp32 initial latents" if image else "int32 (token ids)",
        "retraining": "yes: knowledge distillation on the calibration list"
        if pruned and recipe.distill.steps
        else "no",
        "starting_weights_filename": source,
        "weight_data_types": WEIGHT_TYPES[precision],
        "weight_transformations": "; ".join(transforms) or "none",
    }


def _readme(r: EntryResults, mlperf_id: str, scenario: str, smoke: bool, provenance: list[dict[str, str]]) -> str:
    lines = [
        f"# {mlperf_id} {scenario}",
        "",
        f"Produced by the mlperf-round pipeline, entry `{r.key}`: `dvc repro` runs download, calibrate, quantize,",
        "build, accuracy, performance, compliance and package; `params.yaml` and `dvc.lock` pin every input.",
        "",
    ]
    lines += backends.get(r.engine["backend"]).describe(r.engine)
    if r.engine["precision"] in ("fp8", "int8_sq"):
        lines.append("- calibration: see calibration.md in the submitter folder")
    if "sparsity" in r.quantize:
        sp = r.quantize["sparsity"]
        lines.append(
            f"- 2:4 sparsity: {sp['groups_24_share']:.4f} of groups are 2:4 in {sp['layers']} layers; "
            f"compressed checkpoint {sp['checkpoint_bytes_24']} bytes vs {sp['checkpoint_bytes_dense']} dense"
        )
    if smoke:
        lines += ["", "**Smoke round: shortened LoadGen runs. NOT submittable.**"]
    lines += [""] + markdown(provenance)
    return "\n".join(lines) + "\n"


def _calibration_md(results: list[EntryResults], params: RoundParams, root: Path) -> str:
    """How each quantized entry was calibrated (the checker requires this document from v5.1)."""
    lines = ["# Calibration", ""]
    for r in results:
        if r.engine["precision"] not in ("fp8", "int8_sq"):
            continue
        bp, bench = params.benchmarks[r.entry.benchmark], r.entry.benchmark
        stats = json.loads(layout.metrics_path(bench, "calibrate", root).read_text())
        lines += [
            f"## {r.entry.mlperf_id} ({r.key}): {r.engine['precision']}",
            "",
            f"- calibration set: {bp.dataset.calibration_size} samples of the benchmark's calibration list "
            f"({'MLPerf' if bp.dataset.source == 'url' else 'generated'}), disjoint from the accuracy set",
            f"- statistics: per-channel absolute maxima of the inputs of {stats.get('layers')} layers "
            f"(NVIDIA Model Optimizer max calibration), {stats.get('samples')} samples",
        ]
        if "steps_collected" in stats:
            lines.append(
                f"- denoising steps: collected on the first {stats['steps_collected']} of {stats['total_steps']} "
                f"steps ({stats.get('unet_calls_collected')} UNet calls)"
            )
        if r.engine["precision"] == "int8_sq":
            lines.append(
                f"- SmoothQuant, alpha {r.entry.recipe.smoothquant_alpha}; INT8 weights per channel, "
                "activations per tensor"
            )
        else:
            lines.append(
                "- FP8 (E4M3) weights and activations, per-tensor scales from the maxima"
                + ("; FP8 KV cache with per-layer K and V scales" if r.engine.get("kv_cache") == "fp8" else "")
            )
        lines.append("")
    return "\n".join(lines)


def _round_targets(results: list[EntryResults], params: RoundParams) -> dict[tuple[str, str], tuple[dict, dict]]:
    """The targets this round measured: a tiny round's reference is its own unoptimized model.

    accuracy.txt prints scores to 4 decimals, so the bounds it is checked against are rounded alike: rounding is
    monotonic, so a score the accuracy stage passed never fails here on the last digit."""

    def printed(bounds: dict) -> dict:
        return {k: round(float(v), 4) for k, v in bounds.items()}

    return {
        (r.entry.division, p.mlperf_id): (printed(r.accuracy["target"]), printed(r.accuracy.get("upper_limit", {})))
        for r in results
        if params.benchmarks[r.entry.benchmark].reference.source == "measured"
        for p in params.placements(r.entry)
    }


def package_round(
    params: RoundParams,
    out: Path,
    root: Path = layout.ARTIFACTS,
    lock: Path = Path("dvc.lock"),
    project: Path = Path("."),
) -> dict:
    smoke, rnd = params.round.smoke, params.round
    results = [_load(k, e, root) for k, e in params.entries.items()]
    problems, warnings = [], []
    for r in results:
        p, w = _refusals(r, params)
        problems += p
        warnings += w
    if problems:
        raise PackagingError(problems)
    provenance = Provenance.load(lock)
    versions = results[0].engine["versions"] if results else {}
    tree_root = out / TREE
    source_code = code.snapshot(project)  # once: every benchmark's code/ folder holds the same archive
    conf_text, conf_sha1 = mlperf_conf.embedded()
    rows, headline, records = [], {}, {}
    hosts = {  # each system is described from the host its performance stages ran on
        name: measured_host([r.performance for r in results if params.system_of(r.entry).name == name], name)
        for name in dict.fromkeys(params.system_of(r.entry).name for r in results)
    }
    here = hostfacts.facts()  # results with no recorded host: describe() takes them as measured here
    wrong = [hostfacts.mismatch(rnd.all_systems[n], h or here) for n, h in hosts.items()]
    if any(wrong):  # results measured on one machine, labelled as another system
        raise PackagingError([f"{w.replace('this host', 'the host')}: its performance ran there" for w in wrong if w])
    for division in sorted({r.entry.division for r in results}):
        org = tree_root / division / rnd.submitter
        org.mkdir(parents=True, exist_ok=True)
        in_division = [r for r in results if r.entry.division == division]
        if division == "closed":
            (org / "calibration.md").write_text(_calibration_md(in_division, params, root))
        for r in in_division:
            system = params.system_of(r.entry)
            tree = Layout(rnd.version, org, system.name)
            if not tree.systems().exists():
                write_json(tree.systems(), describe(params, division, versions, hosts[system.name], system))
            bp = params.benchmarks[r.entry.benchmark]
            source = _model_source(bp.model)
            records[r.key] = provenance.entry(r.key, r.entry.benchmark, root)
            placements = params.placements(r.entry)
            for bench in dict.fromkeys(p.mlperf_id for p in placements):
                code.write(tree.code(bench), bench, source_code, rnd.version)
            for bench, folder, scenario in ((p.mlperf_id, p.folder, p.scenario) for p in placements):
                res = tree.results(bench, folder)
                copy_performance(r.performance_dir / scenario, res / "performance" / "run_1")
                copy_accuracy(r.accuracy_dir / scenario, res / "accuracy")
                for test in r.compliance.get("tests", []):
                    copy_compliance(r.compliance_dir / scenario / test, tree.compliance(bench, folder, test))
                meas = tree.measurements(bench, folder)
                meas.mkdir(parents=True, exist_ok=True)
                (meas / "user.conf").write_text((r.performance_dir / "user.conf").read_text())
                (meas / "mlperf.conf").write_text(
                    conf_text
                )  # LoadGen's compiled-in copy; check compares the logs' sha1
                (meas / "README.md").write_text(_readme(r, bench, folder, smoke, records[r.key]))
                write_json(tree.measurements_json(bench, folder, r.engine["backend"]), _measurements(r, source))
                rows.append(_row(division, system.name, r, bench, folder, scenario))
                _headline(headline, r, scenario)
            headline[f"{r.key}/accuracy_worst_ratio"] = float(r.accuracy["worst_ratio"])
    findings, n_results = check_tree(tree_root, rnd.version, _round_targets(results, params))
    unmet = _unmet_rules(findings, results, params)
    defects = [f for f in findings if not (smoke and f.rule in SMOKE_RULES)]
    (out / "check.txt").write_text("".join(f"{f}\n" for f in findings) + summarize(findings, n_results) + "\n")
    if defects:
        raise PackagingError([f"check: {f}" for f in defects])
    for row in rows:
        slot = (row["division"], row["system"], row["benchmark"], row["scenario"])
        row["unmet_rules"] = " ".join(sorted(unmet.get(slot, ())))
        row["submittable"] = bool(row["valid"] and not smoke and not row["unmet_rules"])
    _write_tables(out, rows, smoke, warnings, sorted({r for rules in unmet.values() for r in rules}))
    with tarfile.open(out / f"{rnd.submitter}-{rnd.name}-{rnd.version}.tar.gz", "w:gz") as tar:
        tar.add(tree_root, arcname=f"{rnd.submitter}-{rnd.version}")
    accuracy = [
        {
            "entry": r.key,
            "recipe": recipe_label(r),
            "accuracy_ratio": round(float(r.accuracy["worst_ratio"]), 4),
            "target_ratio": r.entry.accuracy_target if isinstance(r.entry.accuracy_target, float) else "",
            "passed": r.accuracy["passed"],
        }
        for r in results
    ]
    return {
        "entries": len(results),
        "rows": len(rows),
        "table": rows,
        "accuracy": accuracy,
        "submittable": not smoke and not warnings and not findings,
        "warnings": warnings,
        "headline": headline,
        "findings": len(findings),
        "defects": len(defects),
        "unmet_rules": sorted({r for rules in unmet.values() for r in rules}),
        "mlperf_conf_sha1": conf_sha1,
        "provenance": records,
    }


def _row(division: str, system: str, r: EntryResults, mlperf_id: str, folder: str, scenario: str) -> dict:
    """One result as the tree holds it (`folder`), measured by the entry's `scenario` run."""
    perf = r.performance[scenario]
    return {
        "division": division,
        "system": system,
        "entry": r.key,
        "benchmark": mlperf_id,
        "scenario": folder,
        "samples_per_s": perf["samples_per_s"],
        "target_qps": perf.get("target_qps", ""),
        "tokens_per_s": perf.get("tokens_per_s", ""),
        "latency_p90_ms": perf.get("latency_p90_ms", ""),
        "latency_p99_ms": perf.get("latency_p99_ms", ""),
        "ttft_p99_ms": perf.get("ttft_p99_ms", ""),
        "tpot_p99_ms": perf.get("tpot_p99_ms", ""),
        "valid": perf["valid"],
        "accuracy_worst_ratio": round(r.accuracy["worst_ratio"], 4),
        "accuracy_passed": r.accuracy["passed"],
        "submittable": False,
        "unmet_rules": "",
    }


def _headline(headline: dict, r: EntryResults, scenario: str) -> None:
    perf, acc = r.performance[scenario], r.accuracy[scenario]
    for k in HEADLINE:
        if k in perf:
            headline[f"{r.key}/{scenario}/{k}"] = float(perf[k])
    for k in (*r.entry.bench.score_keys, "tokens_per_sample"):
        if k in acc:
            headline[f"{r.key}/{scenario}/{k}"] = float(acc[k])


def _unmet_rules(findings: list[Finding], results: list[EntryResults], params: RoundParams) -> dict[tuple, set[str]]:
    """(division, system, benchmark, scenario) -> the smoke rules its results do not meet."""
    out: dict[tuple, set[str]] = {}
    for f in findings:
        parts = Path(f.path).parts
        if f.rule in SMOKE_RULES and len(parts) > 5:
            # <division>/<org>/results|measurements|compliance/<system>/<benchmark>/<scenario>/...
            out.setdefault((parts[0], parts[3], parts[4], parts[5]), set()).add(f.rule)
    for r in results:
        if params.benchmarks[r.entry.benchmark].reference.source == "measured":
            for p in params.placements(r.entry):
                slot = (r.entry.division, params.system_of(r.entry).name, p.mlperf_id, p.folder)
                out.setdefault(slot, set()).add("reference")
    return out


def _write_tables(out: Path, rows: list[dict], smoke: bool, warnings: list[str], unmet: list[str]) -> None:
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
    if unmet:
        md += ["", "Rules this round does not meet (see check.txt for every finding):"]
        md += [f"- `{rule}`: {SMOKE_RULES[rule]}" for rule in unmet]
    md += [f"- {w}" for w in warnings]
    (out / "results.md").write_text("\n".join(md) + "\n")


def _model_source(model) -> str:
    if model.source == "tiny":
        return "tiny model built from params (seeded)"
    if model.hf.repo:
        return f"{model.hf.repo}@{model.hf.revision}" + (" (read from disk)" if model.source == "local" else "")
    return f"checkpoint read from disk, verified against {len(model.hf.files)} pinned sha256"
