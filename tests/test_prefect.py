"""The round as a Prefect deployment: a real server, a process pool, two workers with their own
workspaces whose flow runs clone the committed project into directories of their own, each serving
one system's work queue (GPT-J's entry is on `cpu-smoke`; Llama's closed entry on `cpu-smoke-b` and its
sparse one on `cpu-smoke`, so Llama's branch is split: its benchmark stages run once, on `cpu-smoke-b`,
then each system's entry stages on that system's worker), a third worker
on an H200 system's queue that must get nothing, a DVC remote over SSH (Debian's OpenSSH server; a
local directory where none can run) and a real MLflow server, all on 127.0.0.1.

The round is cut to three open Offline entries (GPT-J, two of Llama) with shorter training, so the
deployment runs fit in minutes: the first computes, the second restores (with each entry a branch
of its own, `split_entries`), the third loses a
worker mid-stage and a fourth resumes it; the last (opt-in, MLPERF_ROUND_LONG_TESTS=1) runs GPT-J
closed with a recipe that misses its accuracy target.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows import local
from mlperf_round.workspace import commit

from .conftest import copy_project, listening_addresses
from .sshd import WHY_NOT, Sshd

pytestmark = pytest.mark.slow
BENCHMARKS = ["gptj", "llama2-70b"]
GPTJ_STEPS = 600  # the shipped training, for the accuracy-gate test: a model that INT8 SmoothQuant hurts
OVERRIDES = {
    "round": {"systems": {"cpu-smoke-b": {"hw_notes": "the second worker's system"}}},
    "benchmarks": {
        "gptj": {"model": {"tiny": {"train_steps": 100}}},  # open entries here: no accuracy target to meet
        "llama2-70b": {"model": {"tiny": {"train_steps": 100}}},
    },
    "entries": {
        "gptj-99": {"division": "open", "scenarios": ["Offline"]},
        "llama2-70b-99p9": {"division": "open", "scenarios": ["Offline"], "system": "cpu-smoke-b"},
        "llama2-70b-sparse": {"scenarios": ["Offline"]},  # on round.system, cpu-smoke
        "gptj-99-pruned": None,
    },
}
# each worker serves one system's queue; w1 also takes the round flows (the pool's default queue)
QUEUES = {"w1": ["default", "cpu-smoke"], "w2": ["cpu-smoke-b"]}
LIMITS = {"w2": 1}  # not w1: a round flow holding its only slot would leave its own branches waiting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, base: Path):
        self.base, self.project = base, copy_project(base / "project")
        self.home, self.port, self.mlflow_port = base / "prefect", free_port(), free_port()
        self.remote = base / "dvc-remote"
        self.roots = {f"w{i}": base / "workspaces" / f"w{i}" for i in (1, 2)}
        self.other_root = base / "workspaces" / "h200"
        self.procs: dict[str, subprocess.Popen] = {}
        # the remote over SSH where an OpenSSH server can run (the workers' keys in their HOME), else a directory
        self.sshd = None if WHY_NOT else Sshd(base / "sshd")
        self.worker_env: dict[str, str] = {}

    @property
    def remote_url(self) -> str:
        return self.sshd.url(self.remote) if self.sshd else str(self.remote)

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def start(self) -> None:
        if self.sshd is not None:
            self.sshd.__enter__()
            self.worker_env = {"HOME": str(self.sshd.home)}
        self.procs["mlflow"] = local.start_mlflow(
            self.home, self.mlflow_port, self.project, self.base / "mlflow", tether=True
        )
        self.procs["server"] = local.start_server(self.home, self.port, self.project, ui=False, tether=True)
        self.commit = local.deploy(self.home, self.port, self.project, commit=commit(self.project, "the round"))
        local.crash_lost_runs_automation(self.home, self.port, self.project, within_s=60)
        for name in self.roots:
            self.start_worker(name)
        self.procs["h200"] = local.start_worker(  # another system's worker: its queue only
            self.home, self.port, self.project, "h200", self.other_root, self.worker_env, True, ["h200x1"]
        )

    def start_worker(self, name: str) -> None:
        self.procs[name] = local.start_worker(  # w2, as a GPU machine's worker would, takes one branch at a time
            self.home,
            self.port,
            self.project,
            name,
            self.roots[name],
            self.worker_env,
            True,
            QUEUES[name],
            limit=LIMITS.get(name, 0),
        )

    def stop(self) -> None:
        local.stop([p.pid for p in self.procs.values()])
        if self.sshd is not None:
            self.sshd.__exit__()

    def deployment_run(
        self,
        timeout: float = 1200,
        benchmarks: list[str] | None = None,
        overrides: dict | None = None,
        split_entries: bool = False,
    ) -> subprocess.CompletedProcess:
        params = {
            "benchmarks": benchmarks or BENCHMARKS,
            "params_overrides": OVERRIDES if overrides is None else overrides,
            "dvc_remote": self.remote_url,
            "mlflow_tracking_uri": self.mlflow_uri,
            "split_entries": split_entries,
        }
        return subprocess.run(
            [
                str(Path(sys.executable).with_name("prefect")),
                "deployment",
                "run",
                local.ROUND_DEPLOYMENT,
                "--params",
                json.dumps(params),
                "--watch",
                "--watch-interval",
                "2",
            ],
            env=local.prefect_env(self.home, self.port),
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stage_runs(self):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.mlflow_uri)
        exp = client.get_experiment_by_name("mlperf-round")
        return client.search_runs([exp.experiment_id], "tags.`mlperf.kind` = 'stage'", max_results=2000) if exp else []

    def _query(self, code: str) -> list:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=local.prefect_env(self.home, self.port),
            cwd=self.project,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def task_runs(self, name: str) -> list:
        return self._query(
            "import asyncio, json\nfrom prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName\n"
            "async def main():\n    async with get_client() as c:\n"
            f"        runs = await "
            f"c.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[{name!r}])))\n"
            "        print(json.dumps([{'state': r.state.type.value, 'attempts': r.run_count} for r in runs]))\n"
            "asyncio.run(main())\n"
        )

    def flow_runs(self, flow_name: str) -> list:
        code = (
            "import asyncio, json\nfrom prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.filters import FlowFilter, FlowFilterName\n"
            "async def main():\n    async with get_client() as c:\n"
            f"        runs = await "
            f"c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[{flow_name!r}])))\n"
            "        print(json.dumps([{'name': r.name, 'state': r.state.type.value, 'pid': r.infrastructure_pid,\n"
            "            'queue': r.work_queue_name,\n"
            "            'start': r.start_time.timestamp() if r.start_time else None,\n"
            "            'end': r.end_time.timestamp() if r.end_time else None} for r in runs]))\n"
            "asyncio.run(main())\n"
        )
        return self._query(code)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("prefect"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def finished(runs, stage: str) -> int:
    return sum(1 for r in runs if r.data.tags.get("dvc.stage") == stage and r.info.status == "FINISHED")


def test_deployment_run_computes_the_round_with_branches_in_parallel(stack: Stack):
    params = stack.project / "params.yaml"
    committed = params.read_text()
    params.write_text("round: [not, the, committed, params")  # the runs pull the commit, not this checkout
    try:
        proc = stack.deployment_run()
    finally:
        params.write_text(committed)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trees = [p for root in stack.roots.values() for p in root.glob("round/submission/package/tree/open/MLPerfRound")]
    assert len(trees) == 1 and (trees[0] / "results/cpu-smoke/gptj-99/Offline/performance/run_1").is_dir()
    assert (trees[0] / "results/cpu-smoke-b/llama2-70b-99.9/Offline/accuracy/accuracy.txt").is_file()  # 99p9
    assert (trees[0] / "results/cpu-smoke/llama2-70b-99.9/Offline/accuracy/accuracy.txt").is_file()  # sparse
    assert sorted(p.name for p in (trees[0] / "systems").iterdir()) == ["cpu-smoke-b.json", "cpu-smoke.json"]
    # each system's branch ran on its own worker, in that worker's workspace
    on = {
        w: {p.name for p in root.iterdir() if (p / "dvc.yaml").exists()} - {"round"} for w, root in stack.roots.items()
    }
    assert on == {"w1": {"gptj", "llama2-70b.cpu-smoke"}, "w2": {"llama2-70b", "llama2-70b.cpu-smoke-b"}}, on
    runs = stack.stage_runs()
    for stage in (
        "download@gptj",
        "performance@gptj-99",
        "download@llama2-70b",
        "performance@llama2-70b-99p9",
        "performance@llama2-70b-sparse",
        "package",
    ):
        assert finished(runs, stage) == 1, stage  # each stage computed exactly once, on whichever worker
    branches = {r["name"]: r for r in stack.flow_runs("mlperf-round-branch")}
    assert all(r["state"] == "COMPLETED" for r in branches.values())
    assert {b: r["queue"] for b, r in branches.items()} == {
        "gptj": "cpu-smoke",
        "llama2-70b": "cpu-smoke-b",  # the system of Llama's first entry: its benchmark stages, once
        "llama2-70b.cpu-smoke-b": "cpu-smoke-b",
        "llama2-70b.cpu-smoke": "cpu-smoke",
    }
    split = [branches[b] for b in ("llama2-70b", "llama2-70b.cpu-smoke-b", "llama2-70b.cpu-smoke")]
    assert split[0]["end"] <= min(split[1]["start"], split[2]["start"])  # the entries' inputs were pushed first
    assert not stack.other_root.exists() or not any(stack.other_root.iterdir()), "h200x1's worker got work"
    assert all(r.data.tags.get("host.cores") == str(os.cpu_count()) for r in runs)  # where each stage ran
    llama = [r for r in runs if r.data.tags.get("dvc.stage") == "performance@llama2-70b-99p9"]
    assert llama[0].data.tags["mlperf.system"] == "cpu-smoke-b"
    g, ll = branches["gptj"], branches["llama2-70b"]
    assert g["start"] < ll["end"] and ll["start"] < g["end"], "the branches did not overlap"
    assert any((stack.remote / "runs").rglob("*")), "no run-cache entries in the shared DVC remote"


def test_deployments_pull_the_rounds_commit_and_deploying_again_changes_nothing(stack: Stack):
    code = (
        "import asyncio, json\nfrom prefect.client.orchestration import get_client\n"
        "async def main():\n    async with get_client() as c:\n        out = []\n"
        f"        for name in ({local.ROUND_DEPLOYMENT!r}, {local.BRANCH_DEPLOYMENT!r}):\n"
        "            d = await c.read_deployment_by_name(name)\n"
        "            out.append({'id': str(d.id), 'pull': d.pull_steps, 'pool': d.work_pool_name})\n"
        "        print(json.dumps(out))\n"
        "asyncio.run(main())\n"
    )
    before = stack._query(code)
    for d in before:
        clone = d["pull"][0]["prefect.deployments.steps.git_clone"]
        assert clone["commit_sha"] == stack.commit and clone["repository"] == str(stack.project.resolve())
        assert d["pool"] == local.POOL
    assert local.deploy(stack.home, stack.port, stack.project) == stack.commit
    assert stack._query(code) == before
    provenance = {
        json.loads(m.read_text())["provenance"]["git_commit"]
        for root in stack.roots.values()
        for m in root.glob("*/artifacts/*/*/metrics.json")
    }
    assert provenance == {stack.commit}  # every stage ran the deployed commit, from a clean clone of it


def test_servers_listen_on_loopback_only(stack):
    assert listening_addresses(stack.port) == {"127.0.0.1"}  # Prefect's API
    assert listening_addresses(stack.mlflow_port) == {"127.0.0.1"}  # the MLflow server


def test_second_deployment_run_recomputes_nothing(stack: Stack):
    """With each entry a branch of its own this time: new branches in new workspaces, restoring everything."""
    before = len(stack.stage_runs())
    proc = stack.deployment_run(split_entries=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(stack.stage_runs()) == before
    split = {r["name"]: r["queue"] for r in stack.flow_runs("mlperf-round-branch") if r["name"].count(".") == 1}
    assert split == {
        "llama2-70b.cpu-smoke-b": "cpu-smoke-b",  # the first run's, by system
        "llama2-70b.cpu-smoke": "cpu-smoke",
        "llama2-70b.llama2-70b-99p9": "cpu-smoke-b",  # this run's, by entry
        "llama2-70b.llama2-70b-sparse": "cpu-smoke",
    }, split


def _wait_for_running(stack: Stack, stage: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [
            r for r in stack.stage_runs() if r.data.tags.get("dvc.stage") == stage and r.info.status == "RUNNING"
        ]
        if running:
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"{stage} never started")


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1:
        out.add(pid)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def test_a_worker_lost_mid_stage_fails_the_run_and_a_rerun_resumes(stack: Stack):
    OVERRIDES["benchmarks"]["gptj"]["model"]["tiny"]["train_steps"] = (
        120  # GPT-J's branch has work again (and is quick)
    )
    downloads_before = finished(stack.stage_runs(), "download@gptj")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(proc=stack.deployment_run()))
    thread.start()
    lost = _wait_for_running(stack, "calibrate@gptj")  # download@gptj has finished and is in the remote
    branch = next(r for r in stack.flow_runs("mlperf-round-branch") if r["name"] == "gptj" and r["state"] == "RUNNING")
    flow_pid = int(branch["pid"].rsplit(":", 1)[-1])
    worker = next(n for n in stack.roots if stack.procs[n].pid in _ancestors(flow_pid))
    for pgid in {os.getpgid(flow_pid), stack.procs[worker].pid}:  # the worker, its flow run, DVC and the stage
        os.killpg(pgid, signal.SIGKILL)
    thread.join(timeout=900)
    proc = result["proc"]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "CRASHED" in [r["state"] for r in stack.flow_runs("mlperf-round-branch") if r["name"] == "gptj"]
    rounds = [r["state"] for r in stack.flow_runs("mlperf-round")]
    assert rounds.count("COMPLETED") == 2 and len(rounds) == 3  # the third failed (or crashed, with its worker)
    assert finished(stack.stage_runs(), "download@gptj") == downloads_before + 1

    stack.start_worker(worker)
    proc = stack.deployment_run()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = stack.stage_runs()
    assert finished(runs, "download@gptj") == downloads_before + 1  # finished before the loss: not run again
    log = (stack.home / "logs" / f"{worker}.log").read_text()
    assert "up to date and in the remote: download@gptj\n" in log  # not even a DVC process for it
    assert finished(runs, "calibrate@gptj") >= 2 and finished(runs, "download@llama2-70b") == 1
    killed = next(r for r in runs if r.info.run_id == lost.info.run_id)  # MLflow agrees: that stage was killed
    assert killed.info.status == "KILLED", killed.info.status
    assert "worker was lost" in killed.data.tags["mlperf.error"] or "process died" in killed.data.tags["mlperf.error"]


def test_stage_tasks_retry_transient_failures_only(stack: Stack, tmp_path: Path):
    """An unreachable hub (exit 75) is retried; a 404, bad input (exit 3), fails at the first attempt."""
    import http.server

    from .conftest import edit_params

    ws = copy_project(tmp_path / "ws")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dead = free_port()
    code = (  # one stage task in a flow, with the deployment's retry policy minus the waiting
        "import asyncio, json, os, sys\n"
        "from prefect import flow\n"
        "from prefect.client.orchestration import get_client\n"
        "from flows.round import run_stage\n"
        "@flow\n"
        "def probe(ws: str):\n"
        "    run_stage.with_options(retry_delay_seconds=0, retries=2)(ws, 'download@gptj', dict(os.environ), False,\n"
        "                                                            return_state=True)\n"
        "probe(sys.argv[1])\n"
        "async def attempts():\n"
        "    async with get_client() as c:\n"
        "        return max(await c.read_task_runs(), key=lambda r: r.created).run_count\n"
        "print(json.dumps({'attempts': asyncio.run(attempts())}))\n"
    )
    attempts = {}
    for case, endpoint in (
        ("unreachable", f"http://127.0.0.1:{dead}"),
        ("missing", f"http://127.0.0.1:{server.server_address[1]}"),
    ):
        edit_params(
            ws,
            lambda d: d["benchmarks"]["gptj"]["model"].update(
                source="hf",
                hf={"repo": "x/y", "revision": "0" * 40, "files": {"config.json": "0" * 64}, "endpoint": endpoint},
            ),
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(ws)],
            env=local.prefect_env(stack.home, stack.port),
            cwd=stack.project,
            capture_output=True,
            text=True,
            timeout=600,
        )
        attempts[case] = json.loads(out.stdout.strip().splitlines()[-1])["attempts"]
    server.shutdown()
    assert attempts == {"unreachable": 3, "missing": 1}


@pytest.mark.skipif(
    not os.environ.get("MLPERF_ROUND_LONG_TESTS"),
    reason="a GPT-J round through Prefect (100 s); the gate is test_round's, non-retry is tested above; "
    "set MLPERF_ROUND_LONG_TESTS=1 to run it",
)
def test_a_closed_entry_below_target_fails_its_branch_once_and_never_reaches_the_tree(stack: Stack):
    """The accuracy gate on the Prefect path: GPT-J closed in INT8 SmoothQuant keeps about 95% of the reference's
    ROUGE-1 (the shipped 600 training steps; test_round checks the same gate through `dvc repro`). The stage exits 4,
    which is never retried; the round fails before `package`, so nothing of it is packaged anywhere."""
    overrides = {
        "benchmarks": {"gptj": {"model": {"tiny": {"train_steps": GPTJ_STEPS}}}},
        "entries": {"gptj-99": {"recipe": {"precision": "int8_sq"}}, "gptj-99-pruned": None},
    }
    packaged = finished(stack.stage_runs(), "package")
    proc = stack.deployment_run(benchmarks=["gptj"], overrides=overrides)
    assert proc.returncode != 0, proc.stdout[-2000:]
    failed = [
        r
        for r in stack.stage_runs()
        if r.data.tags.get("dvc.stage") == "accuracy@gptj-99" and r.info.status == "FAILED"
    ]
    assert len(failed) == 1 and "missed its accuracy target" in failed[0].data.tags["mlperf.error"]
    attempts = [r for r in stack.task_runs("accuracy@gptj-99") if r["state"] == "FAILED"]
    assert [r["attempts"] for r in attempts] == [1], attempts  # deterministic: not retried
    assert "FAILED" in [r["state"] for r in stack.flow_runs("mlperf-round-branch") if r["name"] == "gptj"]
    assert finished(stack.stage_runs(), "package") == packaged
    assert not list(stack.base.rglob("tree/closed/MLPerfRound/results/cpu-smoke/gptj-99"))
