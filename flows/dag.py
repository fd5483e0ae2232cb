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
    # stages of dvc.yaml's `foreach: ${entries}` groups: `download@stable-diffusion-xl` is a benchmark's stage
    # even where an entry has the benchmark's key
    of_entries: frozenset[str] = frozenset()


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
    import yaml
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        graph = repo.index.graph  # edges point downstream -> upstream
        names = {stage: stage.name for stage in graph.nodes}  # one dvc.yaml: names are what `dvc repro` takes
        order = [names[s] for s in reversed(list(nx.topological_sort(graph)))]
        sources = {names[s] for s in graph.nodes if graph.out_degree(s) == 0}
        roots = {names[s]: {names[u] for u in nx.descendants(graph, s) | {s}} & sources for s in graph.nodes}
        upstream = {names[s]: frozenset(names[u] for u in nx.descendants(graph, s)) for s in graph.nodes}
    groups = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    per_entry = {g for g, body in groups.items() if isinstance(body, dict) and body.get("foreach") == "${entries}"}
    of_entries = frozenset(s for s in order if s.split("@", 1)[0] in per_entry and "@" in s)
    branches: dict[str, list[str]] = {}
    joins = []
    for addressing in order:
        if len(roots[addressing]) == 1 and "@" in addressing:  # a round-wide stage (package) joins even one branch
            branches.setdefault(_branch_name(next(iter(roots[addressing]))), []).append(addressing)
        else:
            joins.append(addressing)
    return RoundDAG(branches, joins, upstream, of_entries)


def route(dag: RoundDAG, params, split_entries: bool = False) -> dict[str, Unit]:
    """The branches as units of work per system (`entries.<key>.system`). A benchmark whose entries all run on
    one system is one unit, named after the benchmark. One whose entries are on several is split: its benchmark
    stages (download, calibrate, reference) run once, on the system of its first entry in params, and then each
    system's entry stages run on that system (`<benchmark>.<system>`), restoring the benchmark stages from the
    remote. `split_entries`: each entry (with the entries it needs) is a unit of its own (`<benchmark>.<entry>`),
    so several workers of one system share a benchmark's entries."""
    units: dict[str, Unit] = {}
    for bench, stages in dag.branches.items():
        keys = [k for k, e in params.entries.items() if e.benchmark == bench]  # params order: the first decides
        system_of = {k: params.system_of(params.entries[k]).name for k in keys}
        own = {k: [s for s in stages if s in dag.of_entries and _branch_name(s) == k] for k in keys}
        shared = [s for s in stages if s not in dag.of_entries or _branch_name(s) not in system_of]
        groups = _entry_groups(dag, own, system_of, split_entries)
        if len(groups) <= 1:
            only = next(iter(groups.values()), None)
            units[bench] = Unit(bench, system_of[only[0]] if only else params.round.system.name, stages)
            continue
        units[bench] = Unit(bench, system_of[keys[0]], shared)
        for name, group in groups.items():
            member = [s for s in stages if s in dag.of_entries and _branch_name(s) in group]  # DVC's order
            units[f"{bench}.{name}"] = Unit(f"{bench}.{name}", system_of[group[0]], member, after=bench)
    return units


def _entry_groups(dag: RoundDAG, own: dict[str, list[str]], system_of: dict[str, str], split_entries: bool):
    """Entries that must run together: one group per system, or with `split_entries` per entry and the entries
    it needs. An entry that needs one on another system is refused: they cannot run apart."""
    stage_key = {s: k for k, stages in own.items() for s in stages}  # entry stages only: no benchmark stage
    group = {k: (k if split_entries else system_of[k]) for k in own}  # entry -> its group's name
    for key, stages in own.items():
        for stage in stages:
            for need in sorted(dag.upstream.get(stage, ())):
                other = stage_key.get(need, key)
                if system_of[other] != system_of[key]:
                    raise ValueError(
                        f"{stage} on {system_of[key]} needs {need}, which runs on another system; "
                        "give both entries one system"
                    )
                merged, into = group[key], group[other]  # one group from here on, named as the one needed
                group = {k: into if g == merged else g for k, g in group.items()}
    out: dict[str, list[str]] = {}
    for key in own:
        if own[key]:
            out.setdefault(group[key], []).append(key)
    return out
