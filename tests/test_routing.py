"""Entries on several systems: how the round's branches split into units of work per system (`flows.dag.route`),
as the Prefect flow sends them to each system's work queue. The split itself is checked here on DVC's own graph;
tests/test_prefect.py runs a round whose entries are on two systems, on two workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.dag import load_dag, route
from mlperf_round.params import load_params

from .conftest import copy_project, edit_params


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
