"""One command for a local Prefect setup: server, MLflow server, process work pool, workers, the deployments.

    python -m flows.local up --workers 2      # Prefect on 127.0.0.1:4200, MLflow on :5000, 2 workers, deployments
    python -m flows.local run                 # prefect deployment run 'mlperf-round/default' --watch
    python -m flows.local down                # stops what `up` started

The deployments are prefect.yaml's: every flow run clones the project at the commit deployed (HEAD
when `up` ran) into its own directory. State (Prefect's database, logs, pids) lives in .prefect/;
each worker gets its own workspace root (.workspaces/<worker>/), so branches never share a DVC lock,
and all of them track into the one MLflow server. Workers on other machines join with
`prefect worker start --pool mlperf-round` and PREFECT_API_URL set to this server (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlperf_round.tether import tethered

POOL = "mlperf-round"
ROUND_DEPLOYMENT = "mlperf-round/default"
BRANCH_DEPLOYMENT = "mlperf-round-branch/default"


def prefect_env(home: Path, port: int) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # workers run this venv's python
    return dict(
        os.environ,
        PATH=path,
        PREFECT_HOME=str(home / "home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_STATIC_DIRECTORY=str(home / "ui"),
        DO_NOT_TRACK="1",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="2",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
    )


def _prefect() -> list[str]:
    return [str(Path(sys.executable).with_name("prefect"))]


def _spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path, tether: bool = False) -> subprocess.Popen:
    """In its own session: `down` (or a test) stops the whole process group. `tether`: it and everything it
    starts also die with the calling process (a test run killed by a timeout leaves nothing running)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            tethered(cmd) if tether else cmd,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def start_server(home: Path, port: int, project: Path, ui: bool = True, tether: bool = False) -> subprocess.Popen:
    env = prefect_env(home, port)
    proc = _spawn(
        [*_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--ui" if ui else "--no-ui"],
        env,
        home / "logs" / "server.log",
        project,
        tether,
    )
    wait_http(f"http://127.0.0.1:{port}/api/health")
    return proc


def start_mlflow(home: Path, port: int, project: Path, store: Path, tether: bool = False) -> subprocess.Popen:
    """One MLflow tracking server for every worker (SQLite store and artifacts under `store`), on loopback."""
    store.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{store.resolve()}/mlflow.db"]
    cmd += ["--artifacts-destination", str(store.resolve() / "artifacts")]
    env = prefect_env(home, 0) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = _spawn(cmd, env, home / "logs" / "mlflow.log", project, tether)
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def start_worker(
    home: Path,
    port: int,
    project: Path,
    name: str,
    workspaces: Path,
    extra_env: dict | None = None,
    tether: bool = False,
    queues: list[str] | None = None,
    cpus: str = "",
    limit: int = 0,
) -> subprocess.Popen:
    """A process worker of the pool; `queues`: only those work queues (a system's, e.g. h200x1), else all.
    `cpus` (a taskset list, e.g. "0-15"): the worker and its flow runs use only those CPUs, with one OpenMP
    thread per CPU, as a machine of their own would (one worker per socket of a large host).
    `limit`: flow runs at once (Prefect's --limit). A process worker otherwise takes every flow run it is
    offered, so one GPU machine would take every branch while the others wait."""
    env = prefect_env(home, port) | {"MLPERF_ROUND_WORKSPACES": str(workspaces)} | (extra_env or {})
    only = [arg for q in queues or [] for arg in ("--work-queue", q)]
    if limit:
        only += ["--limit", str(limit)]
    if queues:
        make_queues(home, port, project, queues)
    pin = []
    if cpus:
        taskset = shutil.which("taskset")
        if taskset is None:
            raise SystemExit("--cpus needs taskset (util-linux), which is not on the PATH")
        pin = [taskset, "-c", cpus]
        env["OMP_NUM_THREADS"] = str(len(_cpu_list(cpus)))
    return _spawn(
        [*pin, *_prefect(), "worker", "start", "--pool", POOL, "--name", name, "--type", "process", *only],
        env,
        home / "logs" / f"{name}.log",
        project,
        tether,
    )


def _cpu_list(cpus: str) -> list[int]:
    """taskset's list syntax ("0-3,8"), checked against the CPUs this host has."""
    out = []
    try:
        for part in cpus.split(","):
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise SystemExit(f"--cpus {cpus}: not a CPU list such as 0-3,8") from None
    missing = sorted(set(out) - os.sched_getaffinity(0))
    if missing or not out:
        raise SystemExit(f"--cpus {cpus}: this host has no CPU {missing[0] if missing else cpus}")
    return out


def head_commit(project: Path) -> str:
    """The commit the deployments pull; uncommitted edits are not deployed, and `up` says so."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{project}: no git commit to deploy (deployments pull the project at a commit); commit it")
    return proc.stdout.strip()


def deploy(home: Path, port: int, project: Path, repo: str | None = None, commit: str | None = None) -> str:
    """The process pool and both deployments of prefect.yaml, pulling `repo` (default: this checkout) at `commit`
    (default: its HEAD). Deploying again updates the same deployments; returns the commit deployed."""
    env = prefect_env(home, port)
    subprocess.run(
        [*_prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
        env=env,
        cwd=project,
        check=True,
        capture_output=True,
    )
    commit = commit or head_commit(project)
    source = {"MLPERF_ROUND_REPO": repo or os.environ.get("MLPERF_ROUND_REPO") or str(project.resolve())}
    proc = subprocess.run(
        [*_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", str(project / "prefect.yaml")],
        env=env | source | {"MLPERF_ROUND_COMMIT": commit},
        cwd=project,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"prefect deploy failed: {(proc.stdout + proc.stderr).strip()[-1500:]}")
    return commit


CRASH_AUTOMATION = "mlperf-round: crash flow runs whose heartbeats stop"


def make_queues(home: Path, port: int, project: Path, queues: list[str]) -> None:
    """The pool's work queues a worker polls, made if missing: a Prefect 3.9 worker polling one queue that does
    not exist yet gets no flow run from any of its queues."""
    code = (  # in the project, with this server's settings (flows.round.system_queue, as routing makes them)
        "import asyncio, sys\n"
        "from flows.round import system_queue\n"
        f"for name in sys.argv[1:]: asyncio.run(system_queue(name, {POOL!r}))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, *queues], env=prefect_env(home, port), cwd=project, check=True, capture_output=True
    )


def crash_lost_runs_automation(home: Path, port: int, project: Path, within_s: int = 90) -> None:
    """Prefect's zombie detection: a flow run without a heartbeat for `within_s` (its worker died) becomes
    Crashed, so the round waiting on it fails instead of waiting forever, and can be re-run."""
    code = (
        "from datetime import timedelta\n"
        "from prefect.automations import Automation\n"
        "from prefect.client.schemas.objects import StateType\n"
        "from prefect.events.actions import ChangeFlowRunState\n"
        "from prefect.events.schemas.automations import EventTrigger, Posture\n"
        "from prefect.events.schemas.events import ResourceSpecification\n"
        f"name = {CRASH_AUTOMATION!r}\n"
        "try:\n"
        "    Automation.read(name=name)\n"
        "except Exception:\n"
        "    Automation(name=name, trigger=EventTrigger(\n"
        "        after={'prefect.flow-run.heartbeat'},\n"
        "        expect={'prefect.flow-run.heartbeat', 'prefect.flow-run.Completed', 'prefect.flow-run.Failed',\n"
        "                'prefect.flow-run.Cancelled', 'prefect.flow-run.Crashed'},\n"
        "        match=ResourceSpecification({'prefect.resource.id': ['prefect.flow-run.*']}),\n"
        "        for_each={'prefect.resource.id'}, posture=Posture.Proactive, threshold=1,\n"
        f"        within=timedelta(seconds={within_s})),\n"
        "        actions=[ChangeFlowRunState(state=StateType.CRASHED, message='no heartbeat: its worker was "
        "lost')]).create()\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], env=prefect_env(home, port), cwd=project, check=True, capture_output=True
    )


def stop(procs: list[int]) -> None:
    """TERM each process group, then KILL what is left (a worker needs a second signal when SIGINT is ignored)."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in procs:
            try:
                os.killpg(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local", description="a local Prefect setup for the round")
    parser.add_argument("command", choices=("up", "run", "down"))
    parser.add_argument("--workers", type=int, default=1, help="process workers to start (up)")
    parser.add_argument("--port", type=int, default=4200, help="the Prefect server's port on 127.0.0.1")
    parser.add_argument("--mlflow-port", type=int, default=5000, help="the MLflow server's port on 127.0.0.1")
    parser.add_argument("--home", type=Path, default=Path(".prefect"), help="server database, logs and pids")
    args = parser.parse_args(argv)
    project, home = Path.cwd(), args.home.resolve()
    pids_file = home / "pids.json"
    if args.command == "up":
        pids = [start_server(home, args.port, project).pid]
        pids.append(start_mlflow(home, args.mlflow_port, project, project / "mlruns").pid)
        commit = deploy(home, args.port, project)
        crash_lost_runs_automation(home, args.port, project)
        shared = {  # what every worker on this host shares: one tracking server, one DVC remote
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{args.mlflow_port}",
            "MLPERF_ROUND_DVC_REMOTE": str(project / ".workspaces" / "dvc-remote"),
        }
        pids += [
            start_worker(home, args.port, project, f"worker-{i}", project / ".workspaces" / f"worker-{i}", shared).pid
            for i in range(1, args.workers + 1)
        ]
        pids_file.write_text(json.dumps(pids))
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=project, capture_output=True
        )
        print(
            f"Prefect on http://127.0.0.1:{args.port} with {args.workers} worker(s) in pool {POOL}; deployments "
            f"{ROUND_DEPLOYMENT} and {BRANCH_DEPLOYMENT} pull commit {commit[:12]}"
            + (" (uncommitted edits are not deployed)" if dirty.stdout.strip() else "")
            + f"; MLflow on http://127.0.0.1:{args.mlflow_port}.\n"
            f"export PREFECT_API_URL=http://127.0.0.1:{args.port}/api"
        )
    elif args.command == "run":
        return subprocess.run(
            [*_prefect(), "deployment", "run", ROUND_DEPLOYMENT, "--watch", "--watch-interval", "2"],
            env=prefect_env(home, args.port),
        ).returncode
    else:
        stop(json.loads(pids_file.read_text()) if pids_file.exists() else [])
        pids_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
