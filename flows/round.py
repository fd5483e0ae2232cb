"""The round as Prefect flows: `mlperf-round` fans the benchmark branches out, `mlperf-round-branch` runs one.

Each task runs one DVC stage (`dvc repro --single-item`), so DVC's lock file and run-cache
decide what runs: a stage already computed for the same inputs, here or on another worker,
is restored, never computed again. Branches run in their own workspaces (no DVC lock is
shared) and meet through a DVC remote; `package` runs in the round's workspace after
everything is fetched from it. Every stage logs to one MLflow tracking URI. A branch run again
in its workspace skips, without a DVC process each, the leading stages it computed and pushed.

Retries: a stage that exits with EX_TEMPFAIL (75: a download timed out), was killed, or found
DVC's lock busy is retried with backoff; bad params (2), bad input (3), a missed accuracy
target (4) or a failed audit (5) fail at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Container
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.dag import load_dag, route
from mlperf_round import workspace as workspaces
from mlperf_round.harness import timing_lock
from mlperf_round.runner import REPORT_ENV

REMOTE = "round-remote"  # the DVC remote's name in every workspace (a --local setting)
PUSHED = ".dvc/tmp/round-pushed.json"  # per workspace: the remote, and each stage's dvc.lock entry last pushed there
TRANSIENT_EXIT_CODES = {75, -9, -15, 137, 143}  # EX_TEMPFAIL, and a stage killed under us
_LOCK_BUSY = re.compile(r"Unable to acquire lock|is busy, it is being blocked by")


class StageFailed(Exception):
    def __init__(self, stage: str, code: int, reason: str, transient: bool):
        super().__init__(f"{stage}: exit {code}: {reason}")
        self.stage, self.code, self.reason, self.transient = stage, code, reason, transient

    def __reduce__(self):  # Prefect pickles task exceptions into their states
        return (StageFailed, (self.stage, self.code, self.reason, self.transient))


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as err:
        return err.transient
    except Exception:  # an error of the orchestration itself (a worker lost): worth another try
        return True
    return False


def _dvc(ws: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """A DVC command (push, fetch, remote) under the host's shared timing lock, like a stage."""
    hold = timing_lock.SharedHold(f"dvc {args[0]}")  # per call: tasks of a flow run in threads
    try:
        hold.acquire()
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True)
    finally:
        hold.close()
    if check and proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} in {ws} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


def _reports(path: Path) -> dict[str, dict]:
    """What the stages themselves reported (mlperf_round.runner): stage -> its start and end records."""
    out: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:  # a line being written, or cut short by a kill, is no record yet
                rec = json.loads(line)
                out.setdefault(rec["stage"], {})[rec["event"]] = rec
            except (ValueError, KeyError, TypeError):
                continue
    return out


def _failure(stage: str, proc: subprocess.CompletedProcess, reports: dict[str, dict]) -> StageFailed:
    """Why `dvc repro` failed: from the stage's own report; a start with no end is a killed stage; no report
    at all is DVC itself (its repository lock busy is worth a retry, anything else is not)."""
    for name, rec in reports.items():
        end = rec.get("end")
        if end is None:
            return StageFailed(name, -9, "killed before it ended", True)
        if end["exit_code"] != 0:
            code = end["exit_code"]
            return StageFailed(name, code, "; ".join(end["errors"]) or f"exit {code}", code in TRANSIENT_EXIT_CODES)
    reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return StageFailed(stage, proc.returncode, f"dvc: {reason}", bool(_LOCK_BUSY.search(proc.stdout + proc.stderr)))


def _lock_entries(ws: Path) -> dict:
    lock = ws / "dvc.lock"  # a round's is about 75 kB: libyaml's parser, not PyYAML's pure-Python one
    if not lock.exists():
        return {}
    return (yaml.load(lock.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("stages", {})


def _digest(entry: object) -> str:
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def _pushed(ws: Path) -> dict:
    """What this workspace knows is in its remote: {"remote": url, "stages": {stage: digest of its lock entry}}."""
    try:
        return json.loads((ws / PUSHED).read_text())
    except (OSError, ValueError):
        return {"remote": None, "stages": {}}


def _write_pushed(ws: Path, record: dict) -> None:
    path = ws / PUSHED
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True))
    tmp.replace(path)  # a worker killed while writing leaves the old record, never half of one


def current_prefix(ws: Path, stages: list[str], env: dict[str, str]) -> list[str]:
    """The leading stages (in run order) that are up to date here and whose outputs this workspace pushed: they
    need no DVC process of their own. Their lock entries must be the ones pushed, and `dvc status` must find
    nothing changed (params, code, outputs); the first stage that fails either ends the prefix. One status of the
    whole project: DVC parses dvc.lock once per target, so naming a branch's thirteen stages costs three times
    as much."""
    pushed, locks = _pushed(ws)["stages"], _lock_entries(ws)
    candidates = []
    for stage in stages:
        if stage not in locks or pushed.get(stage) != _digest(locks[stage]):
            break
        candidates.append(stage)
    if not candidates:
        return []
    proc = _dvc(ws, "status", "--json", env=env, check=False)
    try:
        changed = set(json.loads(proc.stdout)) if proc.returncode == 0 else None
    except ValueError:
        changed = None
    if changed is None:  # DVC could not say: every stage goes through `dvc repro`, which will
        return []
    prefix = []
    for stage in candidates:
        if stage in changed:
            break
        prefix.append(stage)
    return prefix


def _repro(ws: Path, targets: list[str], env: dict[str, str], *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`dvc repro` with the stages reporting to a file of their own (so retries never read a stale report).

    DVC's own work (hashing dependencies before a stage, committing outputs after) holds the
    host's timing lock shared, so no timed LoadGen run on this host overlaps it; while a stage
    runs, the stage holds its own share and this one is given back, or the stage's timed runs
    could never have the host alone."""
    hold = timing_lock.SharedHold(f"dvc repro {' '.join(targets)}")
    with tempfile.TemporaryDirectory(prefix="stage-report-") as tmp:
        report = Path(tmp) / "report.jsonl"
        proc = None
        try:
            hold.acquire()
            proc = subprocess.Popen(
                [sys.executable, "-m", "dvc", "repro", "--pull", *flags, *targets],
                cwd=ws,
                env={**env, REPORT_ENV: str(report)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            out: dict[str, str] = {}
            readers = [
                threading.Thread(target=lambda k, f: out.__setitem__(k, f.read()), args=(k, f), daemon=True)
                for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))
            ]
            for t in readers:
                t.start()
            while proc.poll() is None:
                time.sleep(0.2)
                if any("end" not in r for r in _reports(report).values()):
                    hold.release()  # a stage is running: it holds its own share
                else:
                    hold.acquire()
            for t in readers:
                t.join()
        finally:
            if (
                proc is not None and proc.poll() is None
            ):  # this task is unwinding: DVC must not outlive it holding its lock
                proc.kill()
                proc.wait()
            hold.close()
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out.get("stdout", ""), out.get("stderr", ""))
        return done, _reports(report)


def _steps(ws: Path, stages: list[str], env: dict[str, str], push: bool) -> list[dict]:
    """Stages in one `dvc repro --single-item`, in order; their outputs and run-cache entries pushed for the other
    workers.

    --pull: a run-cache hit brings its outputs from the remote. Whether a stage ran comes from
    its own report; whether it was restored, from its dvc.lock entry changing without a run."""
    before = _lock_entries(ws)
    proc, reports = _repro(ws, stages, env, "--single-item")
    if proc.returncode != 0:
        raise _failure(" ".join(stages), proc, reports)
    locks = _lock_entries(ws)
    out = []
    for stage in stages:
        ran = stage in reports
        out.append({"stage": stage, "ran": ran, "restored": not ran and locks.get(stage) != before.get(stage)})
    if push:
        _push(ws, stages, env, restored={r["stage"] for r in out if r["restored"]}, locks=locks)
    return out


def _push(
    ws: Path, stages: list[str], env: dict[str, str], restored: Container[str] = (), locks: dict | None = None
) -> None:
    """Push the stages' outputs and run-cache entries, but not those restored (they came from the remote) nor
    those whose current lock entry this workspace pushed before; a stage that ran, or one whose push failed
    before a retry, is pushed. `locks`: dvc.lock's entries, when the caller has just read them."""
    locks, record = _lock_entries(ws) if locks is None else locks, _pushed(ws)
    unpushed = [s for s in stages if s not in restored and record["stages"].get(s) != _digest(locks.get(s))]
    if unpushed:
        _dvc(ws, "push", "--run-cache", "-r", REMOTE, *unpushed, env=env)
    record["stages"].update({s: _digest(locks.get(s)) for s in stages})
    _write_pushed(ws, record)


STAGE_TASK = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.2,
    retry_condition_fn=_retry_transient,
)


@task(**STAGE_TASK, task_run_name="{stage}")
def run_stage(ws: str, stage: str, env: dict[str, str], push: bool) -> dict:
    """One DVC stage in its workspace (a task of its own: its retries, its state in the UI)."""
    return _logged(_steps(Path(ws), [stage], env, push))[0]


@task(**STAGE_TASK, task_run_name="restore {unit}")
def restore_unit(ws: str, unit: str, stages: list[str], env: dict[str, str]) -> list[dict]:
    """The stages of the unit this one comes after, which that unit computed and pushed: one DVC process
    restores them all from the run-cache (one that is somehow missing there is computed, as by `run_stage`)."""
    return _logged(_steps(Path(ws), stages, env, push=True))


def _logged(results: list[dict]) -> list[dict]:
    logger = get_run_logger()
    for r in results:
        how = "ran" if r["ran"] else "restored from the run-cache" if r["restored"] else "up to date"
        logger.info("%s: %s", r["stage"], how)
    return results


def check_remote(url: str) -> str:
    """A remote URL carries no secret: Prefect keeps flow parameters in its database and shows them in its UI.
    Credentials come from the worker's environment (ssh-agent or ~/.ssh for ssh://, AWS_* or ~/.aws for s3://)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url) if "://" in url else None
    if parts is not None and parts.password is not None:
        raise ValueError(
            f"dvc_remote: {parts.scheme}://{parts.username}:***@{parts.hostname}: a password in the URL; give "
            "credentials through the worker's environment (ssh-agent or ~/.ssh, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY)"
        )
    return url


def _resolve(workspace_root: str, dvc_remote: str, mlflow_tracking_uri: str) -> tuple[Path, Path, str, str]:
    """Where this worker keeps workspaces, the shared remote and tracking URI: params, then environment, then
    defaults."""
    source = Path.cwd()
    root = Path(workspace_root or os.environ.get("MLPERF_ROUND_WORKSPACES") or source / ".workspaces").resolve()
    remote = check_remote(dvc_remote or os.environ.get("MLPERF_ROUND_DVC_REMOTE") or str(root / "dvc-remote"))
    uri = (
        mlflow_tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(source / 'mlruns' / 'mlflow.db').resolve()}"
    )
    return source, root, remote, uri


def _workspace(source: Path, ws: Path, remote: str, overrides: dict | None, benchmarks: list[str] | None) -> Path:
    workspaces.sync(source, ws)
    workspaces.write_params(ws, overrides, benchmarks)
    if "://" not in remote:
        Path(remote).mkdir(parents=True, exist_ok=True)
    _dvc(ws, "remote", "add", "--local", "--force", "--default", REMOTE, remote)
    if _pushed(ws)["remote"] != remote:  # another remote: nothing is known to be in it
        _write_pushed(ws, {"remote": remote, "stages": {}})
    return ws


def _params(ws: Path):
    from mlperf_round.params import load_params

    return load_params(ws / "params.yaml")


def _units(ws: Path, split_entries: bool):
    return route(load_dag(ws), _params(ws), split_entries)


async def system_queue(system: str, pool: str = "mlperf-round") -> str:
    """The work queue of a system in the pool (made on first use): only workers started with
    `--work-queue <system>`, or polling every queue of the pool, take that system's branches."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        try:
            await client.create_work_queue(name=system, work_pool_name=pool)
        except ObjectAlreadyExists:
            pass
    return system


def _stage_env(uri: str, commit: str) -> dict[str, str]:
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=uri,
        MLPERF_ROUND_GIT_COMMIT=commit,
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml's `python` is ours
    env.pop("PYTHONPATH", None)  # stages import the workspace's own code
    return env


@flow(name="mlperf-round-branch", flow_run_name="{branch}")
def branch_flow(
    branch: str,
    benchmarks: list[str] | None = None,
    params_overrides: dict | None = None,
    dvc_remote: str = "",
    mlflow_tracking_uri: str = "",
    workspace_root: str = "",
    git_commit: str = "",
    split_entries: bool = False,
) -> dict:
    """One unit's stages (`flows.dag.route`: a benchmark, its entries on one system, or one entry), in order, in
    this worker's workspace for that unit."""
    from mlperf_round import hostfacts, tracking

    logger = get_run_logger()
    source, root, remote, uri = _resolve(workspace_root, dvc_remote, mlflow_tracking_uri)
    ws = _workspace(source, root / branch, remote, params_overrides, benchmarks)
    units = _units(ws, split_entries)
    unit = units[branch]
    system, facts = _params(ws).round.all_systems[unit.system], hostfacts.facts()
    logger.info("host %s", ", ".join(f"{k} {v}" for k, v in facts.items()))
    why = hostfacts.mismatch(system, facts)
    if why:  # before any stage: this worker's results would describe another machine
        raise RuntimeError(f"{why}: this worker takes no work for {system.name}")
    env = _stage_env(uri, git_commit or tracking.git_commit())
    # a benchmark split over systems: its stages ran once, in the unit this one comes after; here they are
    # restored from the remote's run-cache (never computed), so the entry stages find their inputs
    inputs = units[unit.after].stages if unit.after else []
    current = current_prefix(ws, [*inputs, *unit.stages], env)  # a re-run: what it already computed and pushed
    if current:
        logger.info("up to date and in the remote: %s", ", ".join(current))
    results = []
    if len(current) < len(inputs) + len(unit.stages):
        _dvc(ws, "fetch", "--run-cache", "-r", REMOTE, env=env)  # what other workers already computed
    if len(current) < len(inputs):
        results += restore_unit(str(ws), unit.after, inputs[len(current) :], env)
    results += [run_stage(str(ws), stage, env, push=True) for stage in unit.stages if stage not in current]
    return {
        "branch": branch,
        "system": system.name,
        "workspace": str(ws),
        "ran": [r["stage"] for r in results if r["ran"]],
        "restored": [r["stage"] for r in results if r["restored"]],
        "current": current,
    }


@flow(name="mlperf-round")
async def round_flow(
    benchmarks: list[str] | None = None,
    params_overrides: dict | None = None,
    dvc_remote: str = "",
    mlflow_tracking_uri: str = "",
    workspace_root: str = "",
    branch_deployment: str = "mlperf-round-branch/default",
    split_entries: bool = False,
) -> dict:
    """The whole round: branches in parallel (as deployment runs when `branch_deployment` names one), then `package`.

    `split_entries`: each entry is a branch of its own, after its benchmark's stages, so that several workers of
    one system share a benchmark's entries. Start those workers with --limit 1, or one worker runs them all at
    once."""
    from mlperf_round import tracking

    logger = get_run_logger()
    source, root, remote, uri = _resolve(workspace_root, dvc_remote, mlflow_tracking_uri)
    ws = _workspace(source, root / "round", remote, params_overrides, benchmarks)
    commit = tracking.git_commit()
    env = _stage_env(uri, commit)
    tracking.open_round(ws / "params.yaml", uri, commit)  # one parent run, before branches race to create it
    dag = load_dag(ws)
    units = route(dag, _params(ws), split_entries)
    shared = {
        "benchmarks": benchmarks,
        "params_overrides": params_overrides,
        "dvc_remote": dvc_remote or remote,
        "mlflow_tracking_uri": uri,
        "git_commit": commit,
        "split_entries": split_entries,
    }
    logger.info(
        "branches %s, then %s", ", ".join(f"{u.name} on {u.system}" for u in units.values()), ", ".join(dag.joins)
    )
    lost: set[str] = set()

    async def run_unit(name: str) -> str | None:
        """None when the unit completed, else why not."""
        unit = units[name]
        if unit.after is not None and await tasks[unit.after] is not None:
            return f"{name} (not started: {unit.after} failed)"
        if branch_deployment:
            from prefect.deployments import arun_deployment

            queue = await system_queue(unit.system)  # only that system's workers take it
            run = await arun_deployment(  # polled each second: a unit waiting on this one starts sooner
                branch_deployment,
                parameters={"branch": name, **shared},
                timeout=None,
                poll_interval=1,
                work_queue_name=queue,
            )
            if run.state.is_crashed():
                lost.add(name)
            return None if run.state.is_completed() else f"{name} ({run.state.name})"
        try:
            await asyncio.to_thread(branch_flow, branch=name, workspace_root=str(root), **shared)
            return None
        except Exception as err:  # noqa: BLE001 - reported per branch below
            return f"{name} ({err})"

    tasks: dict[str, asyncio.Task] = {}
    for name in units:  # a unit's `after` comes before it
        tasks[name] = asyncio.ensure_future(run_unit(name))
    failed = [f for f in await asyncio.gather(*tasks.values()) if f]
    if failed:
        if lost:  # their worker died mid-stage: MLflow must not keep those stages RUNNING
            keys = {s.split("@", 1)[-1] for b in lost for s in units[b].stages}
            closed = tracking.close_lost_runs(
                uri, _params(ws).round.name, keys, "its worker was lost (flow run crashed)"
            )
            logger.error("closed as KILLED in MLflow: %s", ", ".join(closed) or "none")
        raise RuntimeError(f"branches failed: {'; '.join(failed)}; nothing was packaged (re-run to resume)")
    _dvc(ws, "fetch", "--run-cache", "-r", REMOTE, env=env)
    proc, reports = _repro(ws, dag.joins, env)  # restores every branch stage, runs the joins
    if proc.returncode != 0:
        raise _failure(" ".join(dag.joins), proc, reports)
    _push(ws, dag.joins, env)  # the next round, on any worker, restores them
    ran = list(reports)
    recomputed = [s for s in ran if s not in dag.joins]
    if recomputed:
        logger.warning("recomputed where results meet (not in the remote's run-cache): %s", ", ".join(recomputed))
    return {
        "workspace": str(ws),
        "branches": list(units),
        "joins_ran": [s for s in ran if s in dag.joins],
        "recomputed": recomputed,
    }
