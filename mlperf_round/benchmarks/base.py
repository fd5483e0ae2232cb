"""One object per benchmark: what a new benchmark declares, and the rules read from their sources.

A benchmark is its module (readers, tiny model, scoring) plus a `Benchmark` that names it: the
params key (DVC-safe: DVC splits param paths at dots, so `llama3.1-8b` is keyed `llama3_1-8b`,
mlperf.conf's own name), its MLPerf ids, LoadGen's model name, its task kind (whose stage bodies
the stages call) and its params schema. Latency bounds and token-latency flags come from the
installed LoadGen's mlperf.conf; the audits a result needs from `versions.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ..versions import VERSIONS

INTERACTIVE = "Interactive"
# user.conf / params key -> LoadGen's mlperf.conf key
BOUND_KEYS = {
    "target_latency_ms": "target_latency",
    "ttft_latency_ms": "ttft_latency",
    "tpot_latency_ms": "tpot_latency",
}
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8_sq")


@dataclass(frozen=True)
class Placement:
    """Where one measured scenario lands in the submission tree."""

    mlperf_id: str
    folder: str  # the scenario folder the checker reads
    scenario: str  # the entry's scenario whose runs fill it


@dataclass(frozen=True, eq=False)
class Benchmark:
    key: str  # params key and artifact folder
    ids: dict  # accuracy_target (0.99, 0.999 or "range") -> MLPerf submission id
    loadgen_model: str  # the model name mlperf.conf knows
    kind: Any  # mlperf_round.kinds: the stage bodies of text generation or text to image
    schema: type  # the benchmarks.<key> section's params schema
    module: ModuleType  # readers, tiny model, scoring
    score_keys: tuple[str, ...]
    published_scores: dict[str, float]
    published_samples: int
    precisions: tuple[str, ...] = ALL_PRECISIONS
    prunable: bool = False  # structured pruning with distillation (GPT-J)
    lower_scores: tuple[str, ...] = ()  # scores where less is better (FID)
    # v5.0 submitted Interactive as a benchmark id of its own (accuracy target -> id), run as Server
    interactive_ids_v50: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        """The module's readers, builders and scoring: `bench.load_samples(...)`."""
        if name.startswith("__") or name == "module":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.module, name)

    # ------------------------------------------------------------ ids
    @property
    def targets_allowed(self) -> tuple:
        return tuple(self.ids)

    def mlperf_id(self, target) -> str:
        return self.ids[target]

    def all_ids(self) -> set[str]:
        return set(self.ids.values()) | set(self.interactive_ids_v50.values())

    def target_of(self, mlperf_id: str):
        """The accuracy target a submission id stands for."""
        for table in (self.ids, self.interactive_ids_v50):
            for target, i in table.items():
                if i == mlperf_id:
                    return target
        raise KeyError(mlperf_id)

    def has_interactive(self, version: str) -> bool:
        if version == "v5.0":
            return bool(self.interactive_ids_v50)
        return any(
            INTERACTIVE in s.one_of
            for by_id in VERSIONS[version].scenarios.values()
            for i, s in by_id.items()
            if i in self.ids.values()
        )

    def placements(self, version: str, target, scenarios: list[str]) -> list[Placement]:
        """Each measured scenario's folder. v5.0 has no Interactive scenario: its interactive result is the
        `-interactive` id's Server folder, beside a copy of the entry's Offline result (that id needs both)."""
        base = self.mlperf_id(target)
        out = [Placement(base, s, s) for s in scenarios if not (version == "v5.0" and s == INTERACTIVE)]
        if version == "v5.0" and INTERACTIVE in scenarios:
            interactive = self.interactive_ids_v50[target]
            out.append(Placement(interactive, "Server", INTERACTIVE))
            if "Offline" in scenarios:
                out.append(Placement(interactive, "Offline", "Offline"))
        return out

    # ------------------------------------------------------------ LoadGen, from mlperf.conf
    def loadgen_name(self, scenario: str) -> str:
        """mlperf.conf's model name for a scenario: Interactive has its own (`llama2-70b-interactive`)."""
        return f"{self.loadgen_model}-interactive" if scenario == INTERACTIVE else self.loadgen_model

    @staticmethod
    def loadgen_scenario(scenario: str) -> str:
        """LoadGen has no Interactive scenario: it is a Server run held to the interactive bounds."""
        return "Server" if scenario == INTERACTIVE else scenario

    def conf(self, scenario: str, text: str | None = None) -> dict[str, str]:
        from ..harness import mlperf_conf

        return mlperf_conf.settings(self.loadgen_name(scenario), self.loadgen_scenario(scenario), text)

    def latency_bounds(self, scenario: str, text: str | None = None) -> dict[str, int]:
        """The Server-like scenario's p99 bounds in ms, as mlperf.conf sets them (0 there means 'not bounded')."""
        conf = self.conf(scenario, text)
        out = {}
        for key, name in BOUND_KEYS.items():
            value = int(conf.get(name, 0) or 0)
            if value:
                out[key] = value
        return out

    def token_latencies(self, scenario: str = "Offline") -> bool:
        """mlperf.conf's use_token_latencies: LoadGen is told each answer's first token (TTFT, TPOT)."""
        return self.conf(scenario).get("use_token_latencies", "0") == "1"

    def known_to_loadgen(self, scenario: str = "Offline") -> bool:
        from ..harness import mlperf_conf

        models = {m for (m, _, _) in mlperf_conf.parse(mlperf_conf.embedded()[0])}
        return self.loadgen_name(scenario) in models

    # ------------------------------------------------------------ rules from versions.py
    @staticmethod
    def compliance_tests(version: str, mlperf_id: str) -> tuple[str, ...]:
        return VERSIONS[version].compliance.get(mlperf_id, ())

    def published_targets(self, mlperf_id: str) -> tuple[dict[str, float], dict[str, float]]:
        """MLPerf's accuracy bounds for one of this benchmark's ids: lower and upper."""
        target = self.target_of(mlperf_id)
        return self.targets(self.published_scores, target), self.upper_limits(self.published_scores)
