"""What each MLPerf Inference version asks of a submission, for the benchmarks this project runs.

From MLCommons' submission checker (`tools/submission/submission_checker`, the v5.0 checker
as it stood at the v5.0 deadline, and main for v5.1 to v6.1; pinned copies in ../shared/mlcommons/). One place, so
params validation, packaging and `check` agree.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_TYPES = ("datacenter", "edge", "datacenter,edge")
SERVER_LIKE = ("Server", "Interactive")  # LoadGen Server runs, each with its own settings and latency bounds


@dataclass(frozen=True)
class Scenarios:
    required: tuple[str, ...]
    one_of: tuple[str, ...] = ()  # at least one of these too (the checker's optional scenarios)

    def missing(self, have: set[str]) -> list[str]:
        out = [s for s in self.required if s not in have]
        if self.one_of and not have & set(self.one_of):
            out.append(" or ".join(self.one_of))
        return out


_DC_BOTH = Scenarios(("Offline", "Server"))
_DC_LLM = Scenarios(("Offline",), ("Server", "Interactive"))
_EDGE = Scenarios(("SingleStream", "Offline"))
_DC_EDGE = Scenarios(("SingleStream", "Offline", "Server"))


@dataclass(frozen=True)
class Version:
    loadgen: tuple[str, str]  # mlcommons-loadgen releases that carry this round's RNG seeds
    seeds: tuple[int, int, int]  # qsl, sample_index, schedule: what the checker expects in every detail log
    scenarios: dict[str, dict[str, Scenarios]]  # system_type -> submission id -> scenarios
    compliance: dict[str, tuple[str, ...]]  # submission id -> audits a closed result needs

    @property
    def ids(self) -> set[str]:
        return {i for by_id in self.scenarios.values() for i in by_id}


_LLAMA = ("llama2-70b-99", "llama2-70b-99.9")
_LLAMA_INTERACTIVE_V50 = ("llama2-70b-interactive-99", "llama2-70b-interactive-99.9")  # v5.0: ids of their own
_V5_COMPLIANCE = {
    "gptj-99": (),
    "gptj-99.9": (),
    "llama2-70b-99": ("TEST06",),
    "llama2-70b-99.9": ("TEST06",),
    "llama2-70b-interactive-99": ("TEST06",),
    "llama2-70b-interactive-99.9": ("TEST06",),
    "stable-diffusion-xl": ("TEST01", "TEST04"),
}
_V51_COMPLIANCE = {**_V5_COMPLIANCE, "llama3.1-8b": ("TEST06",)}

VERSIONS: dict[str, Version] = {
    "v5.0": Version(
        ("5.0.9", "5.0.21"),
        (6023615788873153749, 15036839855038426416, 9933818062894767841),
        {
            "datacenter": {
                i: _DC_BOTH for i in ("gptj-99", "gptj-99.9", *_LLAMA, *_LLAMA_INTERACTIVE_V50, "stable-diffusion-xl")
            },
            "edge": {"gptj-99": _EDGE, "gptj-99.9": _EDGE, "stable-diffusion-xl": _EDGE},
            "datacenter,edge": {
                "gptj-99": _DC_EDGE,
                "gptj-99.9": _DC_EDGE,
                **{i: _DC_BOTH for i in (*_LLAMA, *_LLAMA_INTERACTIVE_V50)},
                "stable-diffusion-xl": _DC_EDGE,
            },
        },
        _V5_COMPLIANCE,  # gptj needs no audit in v5.0 (the checker's v5.0 compliance list)
    ),
    "v5.1": Version(
        ("5.0.22", "6.0.4"),
        (1780908523862526354, 14771362308971278857, 18209322760996052031),
        {
            "datacenter": {**{i: _DC_LLM for i in (*_LLAMA, "llama3.1-8b")}, "stable-diffusion-xl": _DC_BOTH},
            "edge": {"stable-diffusion-xl": _EDGE},
            "datacenter,edge": {**{i: _DC_LLM for i in (*_LLAMA, "llama3.1-8b")}, "stable-diffusion-xl": _DC_EDGE},
        },
        _V51_COMPLIANCE,
    ),
    "v6.0": Version(
        ("6.0.5", "6.0.15"),
        (2465351861681999779, 14276810075590677512, 3936089224930324775),
        {
            "datacenter": {i: _DC_LLM for i in (*_LLAMA, "llama3.1-8b")},  # SDXL left the datacenter suite: edge only
            "edge": {"stable-diffusion-xl": _EDGE},
            "datacenter,edge": {**{i: _DC_LLM for i in (*_LLAMA, "llama3.1-8b")}, "stable-diffusion-xl": _DC_EDGE},
        },
        _V51_COMPLIANCE,
    ),
    "v6.1": Version(
        ("6.0.16", "6.0.17"),
        (2085463073848966840, 2747215439041700203, 16159082839903944936),
        {
            "datacenter": {"llama2-70b-99.9": _DC_LLM, "llama3.1-8b": _DC_LLM},
            "edge": {"stable-diffusion-xl": _EDGE},
            "datacenter,edge": {"llama2-70b-99.9": _DC_LLM, "llama3.1-8b": _DC_LLM, "stable-diffusion-xl": _DC_EDGE},
        },
        _V51_COMPLIANCE,
    ),
}


def scenarios_for(version: str, system_type: str, mlperf_id: str) -> Scenarios | None:
    """The scenarios a closed result must have; None when the version has no such benchmark for that system type."""
    return VERSIONS[version].scenarios[system_type].get(mlperf_id)


def where_available(version: str, mlperf_id: str) -> list[str]:
    return [t for t in SYSTEM_TYPES if mlperf_id in VERSIONS[version].scenarios[t]]
