"""MLflow tracking: one experiment, one parent run per round, one child run per (key, stage).

The local store is SQLite under mlruns/ (MLflow 3 refuses its plain-file store);
MLFLOW_TRACKING_URI moves it to a server. A child run always ends FINISHED, FAILED or
KILLED; a run left RUNNING by a SIGKILLed process is closed as KILLED by the next stage
that runs for the same key.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import RoundError

if TYPE_CHECKING:
    from .tracker_process import TrackerProcess

EXPERIMENT = "mlperf-round"
DIED = "process died without reporting (killed)"  # the error of a stage's run whose process vanished
DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
ARTIFACT_ROOT = Path("mlruns/artifacts")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def _client(uri: str | None = None):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


@contextmanager
def _lock() -> Iterator[None]:
    """Serialises database creation and parent-run lookup between stage processes."""
    path = Path("mlruns/.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# the experiment's kind, as MLflow's UI labels it: model development, not GenAI (3.17's UI still starts a new
# browser on its GenAI pages whatever the kind says; `runs_page` is the link that opens on the runs)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def _experiment_id(client, uri: str | None = None) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        if exp.tags.get(KIND_TAG) != KIND:  # a store made by an earlier release of the project
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    location = None
    if (uri or tracking_uri()).startswith("sqlite:"):
        location = ARTIFACT_ROOT.resolve().as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location, tags={KIND_TAG: KIND})


def runs_page(base: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's UI. MLflow 3.17's UI remembers a workflow type per browser and starts new
    browsers on GenAI (traces, judges), whatever the experiment's kind: the link says which."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def print_ui_link(base: str = "http://127.0.0.1:5000") -> None:
    """What `make ui` prints before it starts the server: the link that opens on the round's runs."""
    client = _client()
    exp = client.get_experiment_by_name(EXPERIMENT)
    where = runs_page(base, exp.experiment_id) if exp else f"{base} (no round has run yet)"
    print(f"MLflow UI, on the rounds' runs: {where}", flush=True)


def _extend_round(client, parent_id: str) -> None:
    """The round's parent run ends when its latest stage does, so its duration spans the round."""
    now = int(time.time() * 1000)
    try:
        parent = client.get_run(parent_id)
        if (parent.info.end_time or 0) < now:
            client.set_terminated(parent_id, "FINISHED", end_time=now)
    except Exception as err:  # bookkeeping only: never fail a stage over it
        print(f"warning: round run {parent_id}: could not extend its end time ({type(err).__name__})", file=sys.stderr)


def git_commit() -> str:
    """HEAD of the project (with -dirty); an orchestrator running stages in copies passes the source's on."""
    if os.environ.get("MLPERF_ROUND_GIT_COMMIT"):
        return os.environ["MLPERF_ROUND_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "none"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def round_tags(params, commit: str | None = None) -> dict[str, str]:
    """The round's identity. Under `dvc exp run` each experiment is a round of its own, `<name>@<experiment>`,
    so a sweep's points compare side by side in MLflow and in `mlperf-round compare`."""
    rnd = params.round
    exp = os.environ.get("DVC_EXP_NAME", "")
    return {
        "mlperf.round": f"{rnd.name}@{exp}" if exp else rnd.name,
        **({"dvc.exp": exp} if exp else {}),
        "mlperf.version": rnd.version,
        "mlperf.system": ",".join(rnd.all_systems),  # a stage of an entry is tagged with the entry's own
        "mlperf.submitter": rnd.submitter,
        "mlperf.smoke": str(rnd.smoke).lower(),
        "git.commit": commit or git_commit(),
    }


def open_round(params_file: Path, uri: str, commit: str) -> str:
    """The experiment and the round's parent run, created once before parallel workers look them up."""
    from .params import load_params

    client = _client(uri)
    exp_id = _experiment_id(client, uri)
    return round_run_id(client, exp_id, round_tags(load_params(params_file), commit))


def round_run_id(client, exp_id: str, round_tags: dict[str, str]) -> str:
    """The round's parent run, created on first use. It is never left RUNNING."""
    name = round_tags["mlperf.round"]
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`mlperf.kind` = 'round' and tags.`mlperf.round` = '{name}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        changed = {k: v for k, v in round_tags.items() if found[0].data.tags.get(k) != v}
        if changed:  # one write, only when the round's identity moved on (a new commit)
            from mlflow.entities import RunTag

            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in changed.items()])
        return run_id
    run = client.create_run(exp_id, run_name=name, tags={"mlperf.kind": "round", **round_tags})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _pid_alive(host: str, pid: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell; leave it alone
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def close_stale_runs(client, exp_id: str, parent_id: str, key: str, stage: str) -> int:
    """Mark runs whose process died without reporting (SIGKILL, power loss) as KILLED."""
    runs = client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`mlperf.key` = '{key}' "
            f"and tags.`mlperf.stage` = '{stage}' and attributes.status = 'RUNNING'"
        ),
    )
    closed = 0
    for r in runs:
        if not _pid_alive(r.data.tags.get("mlperf.host", ""), r.data.tags.get("mlperf.pid", "")):
            client.set_tag(r.info.run_id, "mlperf.error", DIED)
            client.set_terminated(r.info.run_id, "KILLED")
            closed += 1
    return closed


def close_lost_runs(uri: str, round_name: str, keys: set[str], reason: str) -> list[str]:
    """Stage runs of these keys left RUNNING by a worker that died: KILLED, with the orchestrator's reason."""
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=(
            f"tags.`mlperf.round` = '{round_name}' and tags.`mlperf.kind` = 'stage' and attributes.status = 'RUNNING'"
        ),
    )
    closed = []
    for r in runs:
        if r.data.tags.get("mlperf.key") in keys:
            client.set_tag(r.info.run_id, "mlperf.error", reason)
            client.set_terminated(r.info.run_id, "KILLED")
            closed.append(r.data.tags.get("dvc.stage", r.info.run_name))
    return closed


class StageRun:
    """A child run: what a stage logs goes through here."""

    def __init__(self, client, run_id: str, parent_id: str):
        self.client, self.run_id, self.parent_id = client, run_id, parent_id

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], run_id: str | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items()) if _is_number(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id or self.run_id, metrics=items[i : i + 500])

    def log_series(self, name: str, values: list[float]) -> None:
        """One metric over steps (a loss curve): MLflow draws it against the step."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, step) for step, v in enumerate(values)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_round_metrics(self, metrics: dict[str, float]) -> None:
        """Headline metrics on the round's parent run, so rounds compare in MLflow's UI."""
        self.log_metrics(metrics, run_id=self.parent_id)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_round_artifact(self, path: Path) -> None:
        """A file on the round's parent run (the results table), beside the round's headline metrics."""
        self.client.log_artifact(self.parent_id, str(path))

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=1, sort_keys=True, default=str), name)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED; the round's run then spans this stage too."""
        self.client.set_terminated(self.run_id, status)
        _extend_round(self.client, self.parent_id)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


@contextmanager
def stage_run(round_tags: dict[str, str], key: str, stage: str, tags: dict[str, str]) -> Iterator[TrackerProcess]:
    """The child run for one stage, kept by a helper process (tracker_process.py); closed FINISHED, FAILED or
    KILLED whatever happens. Its start time is the stage's, not the helper's."""
    from .tracker_process import TrackerProcess

    start_ms, stage_pid = int(time.time() * 1000), os.getpid()

    def open_run() -> StageRun:
        with _lock():  # the client too: a store is created (its schema migrated) when it is first opened
            client = _client()
            exp_id = _experiment_id(client)
            parent_id = round_run_id(client, exp_id, round_tags)
        close_stale_runs(client, exp_id, parent_id, key, stage)
        run = client.create_run(
            exp_id,
            start_time=start_ms,
            run_name=f"{key}/{stage}",
            tags={
                "mlflow.parentRunId": parent_id,
                "mlperf.kind": "stage",
                "mlperf.key": key,
                "mlperf.stage": stage,
                "mlperf.round": round_tags["mlperf.round"],
                "mlperf.pid": str(stage_pid),
                "mlperf.host": socket.gethostname(),
                **tags,
            },
        )
        return StageRun(client, run.info.run_id, parent_id)

    tracker = TrackerProcess(open_run)
    try:
        yield tracker
    except BaseException as err:
        killed = isinstance(err, (KeyboardInterrupt, SystemExit))
        try:
            tracker.finish("KILLED" if killed else "FAILED", str(err) or type(err).__name__)
        except RoundError as lost:  # the stage's own error is the one to report
            print(f"warning: {lost}", file=sys.stderr)
        raise
    tracker.finish("FINISHED")
