"""Entries on several systems: how the round's branches split into units of work per system (`flows.dag.route`),
as the Prefect flow sends them to each system's work queue. The split itself is checked here on DVC's own graph;
tests/test_prefect.py runs a round whose entries are on two systems, on two workers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from flows.dag import load_dag, route
from mlperf_round.params import load_params

from .conftest import copy_project, edit_params

SHARED = {"download", "calibrate", "reference"}  # dvc.yaml's `foreach: ${benchmarks}` stages


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("routing") / "project")


def units_of(project: Path, edit):
    edit_params(project, edit)
    return route(load_dag(project), load_params(project / "params.yaml"))


def test_one_system_keeps_one_unit_per_benchmark(project: Path):
    units = units_of(project, lambda d: None)
    assert set(units) == {"gptj", "llama2-70b", "stable-diffusion-xl"}
    assert {u.system for u in units.values()} == {"cpu-smoke"} and not any(u.after for u in units.values())
    assert "performance@gptj-99-pruned" in units["gptj"].stages and "download@gptj" in units["gptj"].stages


def test_a_benchmark_split_over_two_systems_runs_its_shared_stages_once_first(project: Path):
    def edit(d):
        d["round"]["systems"] = {"cpu-b": {"hw_notes": "the second CPU box"}}
        d["entries"]["gptj-99-pruned"]["system"] = "cpu-b"
        d["entries"]["llama2-70b-99p9"]["system"] = "cpu-b"  # llama's entries now on two systems as well
        d["entries"]["llama2-70b-sparse"]["system"] = "cpu-b"

    units = units_of(project, edit)
    assert set(units) == {"gptj", "gptj.cpu-smoke", "gptj.cpu-b", "llama2-70b", "stable-diffusion-xl"}
    shared = units["gptj"]
    assert shared.system == "cpu-smoke" and shared.after is None  # the system of gptj's first entry in params
    assert set(shared.stages) == {"download@gptj", "calibrate@gptj", "reference@gptj"}
    pruned = units["gptj.cpu-b"]
    assert pruned.system == "cpu-b" and pruned.after == "gptj"
    assert pruned.stages[0] == "quantize@gptj-99-pruned" and all("@gptj-99-pruned" in s for s in pruned.stages)
    assert all(s.endswith("@gptj-99") for s in units["gptj.cpu-smoke"].stages)
    assert units["llama2-70b"].system == "cpu-b" and "download@llama2-70b" in units["llama2-70b"].stages
    every = [s for u in units.values() for s in u.stages]
    assert len(every) == len(set(every)) == sum(len(b) for b in load_dag(project).branches.values())


def test_split_entries_gives_each_entry_a_unit_after_its_benchmark_stages(tmp_path: Path):
    """Several workers of one system share a benchmark's entries. `download@stable-diffusion-xl` stays the
    benchmark's stage although an entry has the benchmark's key."""
    fresh = copy_project(tmp_path / "project")
    dag, params = load_dag(fresh), load_params(fresh / "params.yaml")
    units = route(dag, params, split_entries=True)
    entries = {k: e.benchmark for k, e in params.entries.items()}
    assert set(units) == set(dag.branches) | {f"{b}.{k}" for k, b in entries.items()}
    for key, bench in entries.items():
        unit = units[f"{bench}.{key}"]
        assert unit.after == bench and unit.system == "cpu-smoke" and unit.stages[0] == f"quantize@{key}"
        assert all(s.endswith(f"@{key}") for s in unit.stages)
    sdxl = units["stable-diffusion-xl"]
    assert sdxl.stages == [s for s in dag.branches["stable-diffusion-xl"] if s.split("@")[0] in SHARED]
    every = [s for u in units.values() for s in u.stages]
    assert sorted(every) == sorted(s for b in dag.branches.values() for s in b)


def test_an_entry_that_needs_another_runs_with_it_or_is_refused_across_systems(tmp_path: Path):
    fresh = copy_project(tmp_path / "project")
    dag, params = load_dag(fresh), load_params(fresh / "params.yaml")
    # a recipe that starts from another entry's quantized model: the pruned entry needs gptj-99's quantize
    upstream = dict(dag.upstream)
    upstream["quantize@gptj-99-pruned"] = upstream["quantize@gptj-99-pruned"] | {"quantize@gptj-99"}
    needing = replace(dag, upstream=upstream)
    units = route(needing, params, split_entries=True)
    assert units["gptj"].stages == dag.branches["gptj"] and not any(u.startswith("gptj.") for u in units)
    assert "llama2-70b.llama2-70b-sparse" in units  # the other benchmarks' entries are still apart

    edit_params(
        fresh,
        lambda d: d["round"].update(systems={"cpu-b": {}}) or d["entries"]["gptj-99-pruned"].update(system="cpu-b"),
    )
    with pytest.raises(
        ValueError,
        match=r"^quantize@gptj-99-pruned on cpu-b needs quantize@gptj-99, which runs on "
        r"another system; give both entries one system$",
    ):
        route(needing, load_params(fresh / "params.yaml"))
