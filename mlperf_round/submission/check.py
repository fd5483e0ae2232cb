"""check: a submission tree against the rules this project knows, one line per finding.

The rules are MLCommons' submission checker's (learnt from its public source, see
versions.py): structure, required files and fields, VALID runs with the round's seeds and
MLPerf's minimum duration, query count and sample counts, accuracy against the targets, and
the compliance audits. `package` runs it on every tree it writes; anyone can run it on any
tree: `mlperf-round-check TREE --version v5.0`.

Findings carry a rule id. A smoke round's shortened runs cannot meet SMOKE_RULES; every
other finding is a defect of the tree.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .. import benchmarks
from ..errors import InputError, OneLineParser, RoundError
from ..harness import mlperf_conf
from ..harness.logs import ACCURACY, DETAIL, SUMMARY, read_detail
from ..versions import SERVER_LIKE, VERSIONS, scenarios_for
from .system import MAY_BE_EMPTY, REQUIRED
from .tree import MAX_ACCURACY_LOG, Layout

FILE_SIZE_LIMIT = 50 * 1024 * 1024  # the checker refuses any file over 50 MB
MEASUREMENT_KEYS = (
    "input_data_types",
    "retraining",
    "starting_weights_filename",
    "weight_data_types",
    "weight_transformations",
)
# what a smoke round's shortened runs cannot meet, by design; listed, never hidden
SMOKE_RULES = {
    "min_duration": "runs shorter than MLPerf's 600 s minimum",
    "min_query_count": "fewer queries (Offline: samples per query) than MLPerf's minimum",
    "performance_sample_count": "a performance sample set smaller than the dataset",
    "dataset_size": "accuracy runs over a smaller dataset than MLPerf's",
    "early_stopping": "too few queries for MLPerf's early-stopping estimate",
    "reference": "accuracy targets relative to a tiny reference model, not MLPerf's published scores",
    "invalid-run": "a shortened run, on a machine shared with other work, can miss a latency bound (LoadGen: INVALID)",
    "token-latency": "the same for the LLM Server bounds on time to first token and time per output token",
}
_IGNORED = {"mlperf_log_trace.json", "results.json", ".gitkeep"}
_PERF_FILES = {SUMMARY, DETAIL}
_ACC_FILES = {SUMMARY, DETAIL, ACCURACY, "accuracy.txt"}
_TEST06_LINES = (
    {"First token check pass: True", "First token check pass: Skipped"},
    {"EOS check pass: True"},
    {"Sample length check pass: True"},
)
_TOKEN_LATENCY_FIELDS = {
    "ttft_latency_ms": "result_first_token_99.00_percentile_latency_ns",
    "tpot_latency_ms": "result_time_per_output_token_99.00_percentile_ns",
}


@dataclass(frozen=True)
class Finding:
    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.rule}]"


def run_scenario(mlperf_id: str, folder: str) -> str:
    """The scenario a result folder holds, in the round's terms: Interactive is its own folder from v5.1, and the
    Server folder of v5.0's -interactive ids."""
    bench = benchmarks.by_mlperf_id(mlperf_id)
    if folder == "Interactive" or (folder == "Server" and mlperf_id in bench.interactive_ids_v50.values()):
        return "Interactive"
    return folder


def published_targets(mlperf_id: str) -> tuple[dict[str, float], dict[str, float]]:
    """MLPerf's accuracy bounds for a submission id: lower and upper."""
    return benchmarks.by_mlperf_id(mlperf_id).published_targets(mlperf_id)


def read_accuracy_txt(path: Path) -> tuple[dict[str, float], bool]:
    """The scores the checker's patterns find in accuracy.txt, and whether a hash= line is there."""
    text = path.read_text(errors="replace")
    scores = {m.group(1): float(m.group(2)) for m in re.finditer(r"'(\w+)':\s+'?(\d+(?:\.\d*)?)", text)}
    return scores, bool(re.search(r"^hash=\w+$", text, re.M))


class Checker:
    def __init__(self, root: Path, version: str, targets: dict[tuple[str, str], tuple[dict, dict]] | None = None):
        if version not in VERSIONS:
            raise InputError(f"--version {version}: not a version this project knows ({', '.join(VERSIONS)})")
        self.root, self.version, self.targets = root, version, targets or {}
        self.findings: list[Finding] = []
        self.results = 0

    def add(self, path: Path, rule: str, message: str) -> None:
        self.findings.append(
            Finding(str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path), rule, message)
        )

    # ------------------------------------------------------------------ structure
    def run(self) -> list[Finding]:
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such submission tree")
        for p in sorted(self.root.iterdir()):
            if p.is_file() and p.suffix not in (".md", ".pdf"):
                self.add(p, "structure", "only .md and .pdf files may sit beside the division folders")
            elif p.is_dir() and p.name not in ("closed", "open", "network", ".git", ".github", "assets"):
                self.add(p, "structure", f"'{p.name}' is not a division (closed, open, network)")
        divisions = [d for d in sorted(self.root.iterdir()) if d.is_dir() and d.name in ("closed", "open")]
        if not divisions:
            self.add(self.root, "structure", "no closed/ or open/ division folder")
        for div in divisions:
            for p in sorted(div.iterdir()):
                if p.is_dir():
                    self._submitter(div.name, p)
                else:
                    self.add(p, "structure", "a division folder may hold submitter folders only")
        return self.findings

    def _files(self, org: Path) -> None:
        for p in sorted(org.rglob("*")):
            if p.name.startswith(".") or " " in p.name or p.name == "__pycache__":
                self.add(p, "structure", "a name the checker refuses (leading '.', a space, or __pycache__)")
            elif p.is_symlink() and not p.exists():
                self.add(p, "structure", "broken symbolic link")
            elif p.is_file() and p.stat().st_size > FILE_SIZE_LIMIT:
                self.add(p, "size", f"{p.stat().st_size / 2**20:.1f} MB is over the 50 MB file limit")
            elif p.is_dir() and not any(p.iterdir()):
                self.add(p, "structure", "empty folder")

    def _submitter(self, division: str, org: Path) -> None:
        self._files(org)
        layout_root = Layout(self.version, org, "")
        systems = {}
        for path in sorted((org / "systems").glob("*.json")):
            systems[path.stem] = self._system(division, org.name, path)
        if not systems:
            self.add(org / "systems", "missing-file", "no systems/<system>.json")
        if (
            division == "closed"
            and self.version != "v5.0"
            and not ((org / "calibration.md").is_file() or (org / "documentation" / "calibration.md").is_file())
        ):
            self.add(org, "missing-file", "calibration.md (or documentation/calibration.md) is required from v5.1")
        code_root = org / ("src" if layout_root.new_style else "code")
        if not code_root.is_dir():
            self.add(code_root, "missing-file", f"no {code_root.name}/ folder")
        results = org / "results"
        for system_dir in sorted(p for p in results.glob("*") if p.is_dir()):
            desc = systems.get(system_dir.name)
            if desc is None:
                self.add(system_dir, "missing-file", f"no systems/{system_dir.name}.json for these results")
            tree = Layout(self.version, org, system_dir.name)
            for bench_dir in sorted(p for p in system_dir.iterdir() if p.is_dir()):
                self._benchmark(division, tree, bench_dir, (desc or {}).get("system_type", "datacenter"))

    def _system(self, division: str, submitter: str, path: Path) -> dict:
        try:
            desc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            self.add(path, "system", f"not valid JSON ({err})")
            return {}
        for key in REQUIRED:
            if key not in desc:
                self.add(path, "system", f"{key}: required field is missing")
            elif key not in MAY_BE_EMPTY and not desc[key]:
                self.add(path, "system", f"{key}: must not be empty")
        if str(desc.get("division", "")) != division:
            self.add(path, "system", f"division: {desc.get('division')!r} but the tree says {division!r}")
        if str(desc.get("submitter", "")).lower() != submitter.lower():
            self.add(path, "system", f"submitter: {desc.get('submitter')!r} but the folder is {submitter!r}")
        if str(desc.get("status", "")).lower() not in ("available", "preview", "rdi"):
            self.add(path, "system", f"status: {desc.get('status')!r} is not available, preview or rdi")
        if desc.get("system_type") not in ("datacenter", "edge", "datacenter,edge", "edge,datacenter"):
            self.add(
                path, "system", f"system_type: {desc.get('system_type')!r} is not datacenter, edge or datacenter,edge"
            )
        return desc

    # ------------------------------------------------------------------ results
    def _benchmark(self, division: str, tree: Layout, bench_dir: Path, system_type: str) -> None:
        mlperf_id = bench_dir.name
        if mlperf_id not in VERSIONS[self.version].ids:
            self.add(bench_dir, "benchmark", f"{mlperf_id} is not a benchmark of MLPerf Inference {self.version}")
            return
        system_type = "datacenter,edge" if system_type == "edge,datacenter" else system_type
        scenarios = {p.name for p in bench_dir.iterdir() if p.is_dir()}
        need = scenarios_for(self.version, system_type, mlperf_id)
        if need is None:
            self.add(bench_dir, "benchmark", f"{mlperf_id} is not a {system_type} benchmark of {self.version}")
        elif division == "closed" and need.missing(scenarios):
            self.add(bench_dir, "scenarios", f"missing required scenarios: {', '.join(need.missing(scenarios))}")
        code = tree.code(mlperf_id)
        if not tree.new_style and not code.exists():
            self.add(code, "missing-file", f"no code/{mlperf_id}")
        for scenario in sorted(scenarios):
            self.results += 1
            self._scenario(division, tree, mlperf_id, scenario)

    def _scenario(self, division: str, tree: Layout, mlperf_id: str, scenario: str) -> None:
        res = tree.results(mlperf_id, scenario)
        self._performance(res / "performance" / "run_1", mlperf_id, scenario)
        self._accuracy(res / "accuracy", division, mlperf_id)
        self._measurements(tree, mlperf_id, scenario)
        if division == "closed":
            for test in VERSIONS[self.version].compliance.get(mlperf_id, ()):
                self._compliance(tree.compliance(mlperf_id, scenario, test), test, mlperf_id, scenario)

    def _exact_files(self, folder: Path, want: set[str], optional: set[str] = frozenset()) -> bool:
        if not folder.is_dir():
            self.add(folder, "missing-file", "missing")
            return False
        have = {p.name for p in folder.iterdir() if p.is_file()} - _IGNORED
        for name in sorted(want - have):
            self.add(folder / name, "missing-file", "missing")
        for name in sorted(have - want - optional):
            self.add(folder / name, "extra-file", "not a file the checker allows here")
        return want <= have

    def _performance(self, run: Path, mlperf_id: str, scenario: str) -> None:
        if not self._exact_files(run, _PERF_FILES, {ACCURACY}):
            return
        try:
            d = read_detail(run / DETAIL, performance=True)
        except InputError as err:
            self.add(run / DETAIL, "log", str(err).split(": ", 1)[-1])
            return
        path = run / DETAIL
        if d.get("result_validity") != "VALID":
            why = str(d.get("result_invalid_reason", "")).strip()
            self.add(
                path,
                "invalid-run",
                f"LoadGen says {d.get('result_validity', 'nothing')}" + (f" ({why})" if why else ""),
            )
        if d.get("error_count"):
            self.add(path, "loadgen-errors", f"{d['error_count']} LoadGen errors in the log")
        bench, held = benchmarks.by_mlperf_id(mlperf_id), run_scenario(mlperf_id, scenario)
        if d.get("effective_scenario") not in (bench.loadgen_scenario(scenario), None):
            self.add(path, "scenario", f"a {d.get('effective_scenario')} run in the {scenario} folder")
        for name, want in zip(("qsl", "sample_index", "schedule"), VERSIONS[self.version].seeds):
            found = d.get(f"effective_{name}_rng_seed")
            if found is not None and int(found) != want:
                self.add(
                    path,
                    "seeds",
                    f"{name}_rng_seed {found} is not {self.version}'s {want} "
                    f"(install mlcommons-loadgen=={VERSIONS[self.version].loadgen[1]})",
                )
        used = d.get("loadgen_file_sha1", {})
        conf_sha1 = mlperf_conf.embedded()[1]
        if isinstance(used, dict) and used.get("/mlperf.conf", conf_sha1) != conf_sha1:
            self.add(
                path,
                "mlperf-conf",
                f"ran with mlperf.conf {used['/mlperf.conf']}, the installed LoadGen has "
                f"{conf_sha1}; re-run the performance stage with this LoadGen",
            )
        rules = bench.conf(held)
        min_ms = int(rules.get("min_duration", 600000))
        if int(d.get("effective_min_duration_ms", 0)) < min_ms:
            self.add(path, "min_duration", f"min_duration {d.get('effective_min_duration_ms')} ms < {min_ms} ms")
        min_q = int(rules.get("min_query_count", 100))
        if held == "Offline":
            spq = int(d.get("effective_samples_per_query", 0))
            if spq < min_q:
                self.add(path, "min_query_count", f"{spq} samples per query < {min_q}")
        elif not d.get("early_stopping_met", True):
            self.add(
                path,
                "early_stopping",
                "early stopping not met: " + " ".join(str(d.get("early_stopping_result", "")).split())[:160],
            )
        if held != "Offline" and int(d.get("effective_min_query_count", 0)) < min_q:
            self.add(path, "min_query_count", f"min_query_count {d.get('effective_min_query_count')} < {min_q}")
        psc = int(rules.get("performance_sample_count_override", 0))
        if int(d.get("effective_performance_sample_count", 0)) < psc:
            self.add(
                path,
                "performance_sample_count",
                f"performance_sample_count {d.get('effective_performance_sample_count')} < {psc}",
            )
        if held in SERVER_LIKE:
            self._server_latency(path, d, bench, held)

    def _server_latency(self, path: Path, d: dict, bench, scenario: str) -> None:
        """The bounds mlperf.conf sets for the scenario: TTFT and TPOT p99 where token latencies are on."""
        bounds = bench.latency_bounds(scenario)
        if bench.token_latencies(scenario):
            if not d.get("requested_use_token_latencies"):
                self.add(path, "latency", f"use_token_latencies must be on for {bench.loadgen_name(scenario)}")
            for key, field in _TOKEN_LATENCY_FIELDS.items():
                got, bound_ms = float(d.get(field, 0)) / 1e6, bounds.get(key)
                if bound_ms and got >= bound_ms:
                    self.add(
                        path,
                        "token-latency",
                        f"{key[:4].upper()} p99 {got:.1f} ms is not under {bound_ms} ms ({scenario})",
                    )
        elif int(d.get("effective_target_latency_ns", 0)) > 20_000_000_000:
            self.add(path, "latency", f"target_latency {d['effective_target_latency_ns']} ns is over 20 s")

    def _accuracy(self, acc: Path, division: str, mlperf_id: str) -> None:
        if not self._exact_files(acc, _ACC_FILES):
            return
        log = acc / ACCURACY
        if log.stat().st_size > MAX_ACCURACY_LOG:
            self.add(log, "truncation", f"{log.stat().st_size} bytes: not truncated (at most {MAX_ACCURACY_LOG})")
        scores, hashed = read_accuracy_txt(acc / "accuracy.txt")
        if not hashed:
            self.add(acc / "accuracy.txt", "accuracy-hash", "no hash= line for mlperf_log_accuracy.json")
        low, high = self.targets.get((division, mlperf_id)) or published_targets(mlperf_id)
        for key, bound in low.items():
            if key not in scores:
                self.add(acc / "accuracy.txt", "accuracy", f"no '{key}' score")
            elif scores[key] < bound and division == "closed":
                self.add(acc / "accuracy.txt", "accuracy", f"{key} {scores[key]:g} < target {bound:g}")
        for key, bound in high.items():
            if key in scores and scores[key] > bound and division == "closed":
                self.add(acc / "accuracy.txt", "accuracy", f"{key} {scores[key]:g} > upper limit {bound:g}")
        try:
            d = read_detail(acc / DETAIL)
        except InputError as err:
            self.add(acc / DETAIL, "log", str(err).split(": ", 1)[-1])
            return
        if d.get("error_count"):
            self.add(acc / DETAIL, "loadgen-errors", f"{d['error_count']} LoadGen errors in the accuracy run")
        size = benchmarks.by_mlperf_id(mlperf_id).published_samples
        ran = int(d.get("effective_accuracy_sample_count", d.get("qsl_reported_total_count", 0)) or 0)
        if ran < size:
            self.add(acc / DETAIL, "dataset_size", f"the accuracy run covers {ran} samples, the dataset has {size}")

    def _measurements(self, tree: Layout, mlperf_id: str, scenario: str) -> None:
        meas = tree.measurements(mlperf_id, scenario)
        for name in ("user.conf", "README.md"):
            if not (meas / name).is_file() or not (meas / name).stat().st_size:
                self.add(meas / name, "missing-file", "missing or empty")
        if tree.new_style:
            found = meas / "measurements.json"
        else:
            candidates = sorted(meas.glob(f"{tree.system}*_{scenario}.json")) or sorted(
                meas.glob(f"{tree.system}*.json")
            )
            found = candidates[0] if candidates else meas / f"{tree.system}_<impl>_{scenario}.json"
        if not found.is_file():
            self.add(found, "missing-file", "missing measurements JSON")
            return
        try:
            data = json.loads(found.read_text())
        except json.JSONDecodeError:
            self.add(found, "measurements", "not valid JSON")
            return
        for key in MEASUREMENT_KEYS:
            if not data.get(key):
                self.add(found, "measurements", f"{key}: missing or empty")

    def _compliance(self, folder: Path, test: str, mlperf_id: str, scenario: str) -> None:
        if not folder.is_dir():
            self.add(folder, "compliance", f"{test} is required for {mlperf_id} and missing")
            return
        if test == "TEST06":
            text = (folder / "verify_accuracy.txt").read_text() if (folder / "verify_accuracy.txt").is_file() else ""
            lines = {ln.strip() for ln in text.splitlines()}
            if not text:
                self.add(folder / "verify_accuracy.txt", "compliance", "missing")
            elif not all(lines & ok for ok in _TEST06_LINES):
                self.add(folder / "verify_accuracy.txt", "compliance", "TEST06 did not pass (first token, EOS, length)")
            return
        verifies = (
            ("verify_accuracy.txt", "verify_performance.txt") if test == "TEST01" else ("verify_performance.txt",)
        )
        for name in verifies:
            path = folder / name
            if not path.is_file():
                self.add(path, "compliance", "missing")
            elif "TEST PASS" not in path.read_text():
                self.add(path, "compliance", f"{test} did not pass")
        self._performance(folder / "performance" / "run_1", mlperf_id, scenario)
        if test == "TEST01":
            self._exact_files(folder / "accuracy", {ACCURACY, "accuracy.txt"})


def check_tree(root: Path, version: str, targets: dict | None = None) -> tuple[list[Finding], int]:
    """Findings, and how many results (system, benchmark, scenario) the tree holds."""
    checker = Checker(root, version, targets)
    return checker.run(), checker.results


def summarize(findings: list[Finding], results: int) -> str:
    by_rule: dict[str, int] = defaultdict(int)
    for f in findings:
        by_rule[f.rule] += 1
    smoke = sum(n for r, n in by_rule.items() if r in SMOKE_RULES)
    other = len(findings) - smoke
    rules = ", ".join(f"{r} {n}" for r, n in sorted(by_rule.items()))
    return (
        f"check: {results} results, {len(findings)} findings ({rules or 'none'}); "
        f"{smoke} are what a smoke round cannot meet, {other} are defects"
    )


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="mlperf-round-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path, help="the submission root (holds closed/ and open/)")
    parser.add_argument("--version", required=True, choices=sorted(VERSIONS), help="the MLPerf Inference version")
    parser.add_argument(
        "--smoke", action="store_true", help="findings a smoke round cannot avoid do not fail the check"
    )
    try:
        args = parser.parse_args(argv)
        findings, results = check_tree(args.tree, args.version)
    except RoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for f in findings:
        print(f)
    print(summarize(findings, results))
    defects = [f for f in findings if not (args.smoke and f.rule in SMOKE_RULES)]
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
