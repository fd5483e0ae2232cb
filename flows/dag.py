"""The round's DAG as DVC sees it, split into benchmark branches and the stages where branches meet.

Nothing here is a hand-written list of stages: the graph is DVC's own (`Repo.index.graph`).
A stage belongs to the branch of the one source stage (a stage with no upstream, such as
`download@gptj`) it descends from; a stage that descends from several (`package`) is a join
stage and runs after every branch, where all results meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RoundDAG:
    branches: dict[str, list[str]]  # branch name -> stage addressings, in an order DVC can run them
    joins: list[str]  # stages that need several branches, in order


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
    branches: dict[str, list[str]] = {}
    joins = []
    for addressing in order:
        if len(roots[addressing]) == 1:
            branches.setdefault(_branch_name(next(iter(roots[addressing]))), []).append(addressing)
        else:
            joins.append(addressing)
    return RoundDAG(branches, joins)
