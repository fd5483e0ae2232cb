"""Wall time of the round through Prefect with one worker vs two, and the Prefect path's overhead on a no-op round.

    python perf/prefect_workers.py [--benchmarks gptj llama2-70b stable-diffusion-xl] [--out DIR]
    python perf/prefect_workers.py --one-cpu-machines --benchmarks gptj llama2-70b [--split-entries] [--workers 2]

Everything in one process, on a throwaway copy of the project: a Prefect server on a free
port, the deployments, then for N in (1, 2) fresh workers, a fresh DVC remote and MLflow
store, and one `prefect deployment run` of the round, timed. The round flow has a worker of its
own (the pool's default queue); each branch worker takes one flow run at a time (--limit 1).
Then the no-op case: a second deployment run (every stage restored or up to date) against
`dvc repro` in a workspace where the round is complete. Prints a table and ratios.

--one-cpu-machines: worker i runs on CPU i alone (taskset, one OpenMP thread) with a timing lock
of its own, so each worker is a one-CPU machine: one such machine against two. Memory
bandwidth and the last-level cache are still shared, which separate machines would not share.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows import local  # noqa: E402
from mlperf_round.workspace import commit, sync  # noqa: E402


def deployment_run(home: Path, port: int, project: Path, params: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "deployment",
            "run",
            local.ROUND_DEPLOYMENT,
            "--params",
            json.dumps(params),
            "--watch",
            "--watch-interval",
            "1",
        ],
        env=local.prefect_env(home, port),
        cwd=project,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"deployment run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def table(path: Path) -> list[dict]:
    """The results table without what is timed: two computations of one round must agree on the rest."""
    import csv

    keep = ("division", "system", "entry", "benchmark", "scenario", "accuracy_worst_ratio", "accuracy_passed")
    with open(path) as f:
        return sorted(({k: row[k] for k in keep} for row in csv.DictReader(f)), key=lambda r: tuple(r.values()))


def branch_hosts(run_dir: Path) -> dict[str, list[str]]:
    """worker -> the branch workspaces it made: which worker each branch ran on."""
    return {
        w.name: sorted(d.name for d in w.iterdir() if d.is_dir() and d.name != "dvc-remote")
        for w in sorted(run_dir.glob("w[0-9]*"))
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--benchmarks", nargs="*", default=None, help="a subset of the round (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="keep the scratch directory here")
    parser.add_argument(
        "--one-cpu-machines", action="store_true", help="worker i on CPU i alone, with its own timing lock"
    )
    parser.add_argument(
        "--split-entries", action="store_true", help="each entry a branch of its own (round_flow's split_entries)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], choices=[1, 2], help="which runs to time (default: both)"
    )
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="prefect-bench-"))
    project = sync(ROOT, base / "project")
    home = base / "prefect"
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [local.start_server(home, port, project, ui=False).pid]
    from mlperf_round.params import load_params

    systems = list(load_params(project / "params.yaml").round.all_systems)
    results: dict[str, float] = {}
    tables: dict[int, list[dict]] = {}
    try:
        local.deploy(home, port, project, commit=commit(project, "the benchmarked round"))
        for n in args.workers:
            run_dir = base / f"workers-{n}"
            # the round flow on a worker of its own (the pool's default queue), as on an orchestrating machine;
            # each branch worker takes one branch at a time from the systems' queues, as a GPU machine would
            orchestrator = local.start_worker(
                home, port, project, f"bench{n}-round", run_dir / "w-round", None, queues=["default"]
            )
            workers = [orchestrator.pid] + [
                local.start_worker(
                    home,
                    port,
                    project,
                    f"bench{n}-{i}",
                    run_dir / f"w{i}",
                    {"MLPERF_ROUND_TIMING_LOCK": str(run_dir / f"timing-{i}.lock")} if args.one_cpu_machines else None,
                    queues=systems,
                    cpus=str(i) if args.one_cpu_machines else "",
                    limit=1,
                ).pid
                for i in range(n)
            ]
            params = {
                "benchmarks": args.benchmarks,
                "dvc_remote": str(run_dir / "remote"),
                "mlflow_tracking_uri": f"sqlite:///{run_dir}/mlflow.db",
                "split_entries": args.split_entries,
            }
            results[f"round, {n} worker(s)"] = deployment_run(home, port, project, params)
            tables[n] = table(run_dir / "w-round/round/submission/package/results.csv")
            print(f"{n} worker(s): {results[f'round, {n} worker(s)']:.1f} s; branches ran on", branch_hosts(run_dir))
            if n == 2:
                results["no-op round, Prefect (2 workers)"] = deployment_run(home, port, project, params)
            local.stop(workers)
        ws = base / "workers-2" / "w-round" / "round"
        if ws.is_dir():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, check=True, capture_output=True)
            results["no-op round, dvc repro"] = time.perf_counter() - start
    finally:
        local.stop(procs)
    for name, seconds in results.items():
        print(f"{name:36s} {seconds:8.1f} s")
    if "no-op round, dvc repro" in results:
        prefect_s, dvc_s = results["no-op round, Prefect (2 workers)"], results["no-op round, dvc repro"]
        print(f"no-op overhead of the Prefect path: {prefect_s / dvc_s:.1f}x (+{prefect_s - dvc_s:.1f} s)")
    if len(tables) == 2:
        print(f"two workers vs one: {results['round, 1 worker(s)'] / results['round, 2 worker(s)']:.2f}x faster")
        same = tables[1] == tables[2]
        print(f"results tables (what is deterministic: rows, validity, accuracy): {'the same' if same else 'DIFFER'}")
        if not same:
            for one, two in zip(tables[1], tables[2]):
                if one != two:
                    print(f"  1 worker: {one}\n  2 workers: {two}")
    if args.out is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
