"""The round's DAG as DVC sees it, split into benchmark branches and the stages where branches meet.

Nothing here is a hand-written list of stages: the graph is DVC's own (`Repo.index.graph`).
A stage belongs to the branch of the one source stage (a stage with no upstream, such as
`download@gptj`) it descends from; a stage that descends from several, or a round-wide stage
(`package`, with no `@<key>`) even in a round of one benchmark, is a join stage and runs after
every branch, where all results meet. `route` then splits the branches by the system each entry
names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RoundDAG:
    branches: dict[str, list[str]]  # branch name -> stage addressings, in an order DVC can run them
    joins: list[str]  # stages that need several branches, in order
    upstream: dict[str, frozenset[str]] = field(default_factory=dict)  # stage -> every stage it needs


@dataclass(frozen=True)
class Unit:
    """Stages that run together in one workspace, on a worker of one system."""

    name: str
    system: str
    stages: list[str]
    after: str | None = None  # the unit whose stages these need (pushed to the remote before these start)


def _branch_name(addressing: str) -> str:
    return addressing.split("@", 1)[1] if "@" in addressing else addressing


def load_dag(workspace: Path) -> RoundDAG:
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        graph = repo.index.graph  # edges point downstream -> upstream
        names = {stage: stage.name for stage in graph.nodes}  # one dvc.yaml: names are what `dvc repro` takes
        order = [names[s] for s in reversed(list(nx.topological_sort(graph)))]
        sources = {names[s] for s in graph.nodes if graph.out_degree(s) == 0}
        roots = {names[s]: {names[u] for u in nx.descendants(graph, s) | {s}} & sources for s in graph.nodes}
        upstream = {names[s]: frozenset(names[u] for u in nx.descendants(graph, s)) for s in graph.nodes}
    branches: dict[str, list[str]] = {}
    joins = []
    for addressing in order:
        if len(roots[addressing]) == 1 and "@" in addressing:  # a round-wide stage (package) joins even one branch
            branches.setdefault(_branch_name(next(iter(roots[addressing]))), []).append(addressing)
        else:
            joins.append(addressing)
    return RoundDAG(branches, joins, upstream)


def route(dag: RoundDAG, params) -> dict[str, Unit]:
    """The branches as units of work per system (`entries.<key>.system`). A benchmark whose entries all run on
    one system is one unit, named after the benchmark. One whose entries are on several is split: its benchmark
    stages (download, calibrate, reference) run once, on the system of its first entry in params, and then each
    system's entry stages run on that system, restoring the benchmark stages from the remote."""
    units: dict[str, Unit] = {}
    for bench, stages in dag.branches.items():
        shared, by_system = [], {}
        first = [params.system_of(e).name for e in params.entries.values() if e.benchmark == bench]
        for system in first:
            by_system.setdefault(system, [])
        for stage in stages:
            key = _branch_name(stage)
            if key in params.entries:
                by_system[params.system_of(params.entries[key]).name].append(stage)
            else:
                shared.append(stage)
        by_system = {k: v for k, v in by_system.items() if v}
        if len(by_system) <= 1:
            units[bench] = Unit(bench, next(iter(by_system), params.round.system.name), stages)
            continue
        units[bench] = Unit(bench, first[0], shared)
        for system, own in by_system.items():
            need = set().union(*(dag.upstream.get(s, frozenset()) for s in own)) - set(shared) - set(own)
            if need:  # an entry that needs another system's entry: they cannot run apart
                raise ValueError(
                    f"{own[0]} on {system} needs {sorted(need)[0]}, which runs on another system; "
                    "give both entries one system"
                )
            units[f"{bench}.{system}"] = Unit(f"{bench}.{system}", system, own, after=bench)
    return units
