"""The one entry point every stage goes through.

It validates params.yaml before any work, opens the stage's MLflow child run, gives the
stage a private `.partial` directory and publishes it (rename) only when the stage
succeeded, so no later run can mistake half an output for a whole one. Known failures are
one line on stderr with an exit code that says whose fault it was.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from . import layout
from .errors import OneLineParser, ParamsError, RoundError
from .harness import timing_lock
from .jsonfile import write_json_atomic
from .params import BenchmarkParams, EntryParams, RoundParams, check_loadgen, load_params
from .sources import verify_manifest, write_manifest

Scope = Literal["benchmark", "entry", "round"]


@dataclass
class StageContext:
    params: RoundParams
    key: str
    stage: str
    out: Path
    plots: Path = None  # CSV files for `dvc plots`, published with out
    tracker: object = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def entry(self) -> EntryParams:
        return self.params.entries[self.key]

    @property
    def benchmark_name(self) -> str:
        return self.entry.benchmark if self.key in self.params.entries else self.key

    @property
    def benchmark(self) -> BenchmarkParams:
        return self.params.benchmarks[self.benchmark_name]

    @property
    def bench(self):
        """The benchmark object (mlperf_round.benchmarks): its readers, rules and task kind."""
        from . import benchmarks

        return benchmarks.get(self.benchmark_name)

    def input(self, stage: str, key: str | None = None) -> Path:
        """An upstream stage's output, checked byte for byte against its manifest."""
        path = layout.out_dir(key or self.key, stage)
        verify_manifest(path)
        return path


def _flatten(prefix: str, value: object, out: dict[str, object]) -> dict[str, object]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def stage_params(params: RoundParams, scope: Scope, key: str) -> dict[str, object]:
    data = params.model_dump(mode="json")
    flat = _flatten("round", {k: v for k, v in data["round"].items() if k not in ("system", "systems")}, {})
    if scope == "benchmark":
        _flatten(f"benchmarks.{key}", data["benchmarks"][key], flat)
    elif scope == "entry":
        _flatten(f"entries.{key}", data["entries"][key], flat)
    return flat


def _terminate(signum, frame):  # SIGTERM: unwind so the MLflow run ends KILLED
    raise SystemExit(128 + signum)


def _parse(stage: str, scope: Scope, argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog=f"python -m stages.{stage}", description=f"MLPerf round stage: {stage}")
    if scope != "round":
        parser.add_argument("key", help=f"the {scope} to run the stage for (a key under {scope}s in params.yaml)")
    parser.add_argument("--params", default="params.yaml", help="the round's params file")
    return parser.parse_args(argv)


REPORT_ENV = "MLPERF_ROUND_STAGE_REPORT"
DISK_FULL_EXIT = 74  # EX_IOERR: not retried, a retry would find the disk as full


def _report(record: dict) -> None:
    """One JSON line per stage start and end, for an orchestrator that must know what ran and why it failed
    without parsing DVC's console text. A start with no end means the stage was killed. Written in one call,
    so a reader sees whole lines; a report that cannot be written never fails the stage."""
    path = os.environ.get(REPORT_ENV)
    if path:
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            print(f"warning: stage report {path}: {err}", file=sys.stderr)


class _LineTracker:
    """stderr, remembering whether its last write ended a line: a progress bar leaves the cursor after a carriage
    return, and the error that follows must start a line of its own for a log reader that splits on newlines."""

    def __init__(self, stream):
        self._stream, self.at_line_start = stream, True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _error(line: str) -> None:
    if not getattr(sys.stderr, "at_line_start", True):
        sys.stderr.write("\n")
    print(f"error: {line}", file=sys.stderr)


def run_stage(stage: str, scope: Scope, body: Callable[[StageContext], dict], argv: list[str] | None = None) -> int:
    """Run one stage; return its exit code. Stages call `sys.exit(run_stage(...))`."""
    signal.signal(signal.SIGTERM, _terminate)
    if not isinstance(sys.stderr, _LineTracker):
        sys.stderr = _LineTracker(sys.stderr)
    args = sys.argv[1:] if argv is None else argv
    positional = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "--params")]
    name = stage if scope == "round" else f"{stage}@{positional[0] if positional else '?'}"
    _report({"stage": name, "event": "start", "pid": os.getpid()})
    errors: list[str] = []
    code = 1
    try:
        code = _run_stage(stage, scope, body, argv, errors)
    except (KeyboardInterrupt, SystemExit) as err:  # before the stage computed (--help; SIGTERM while it waited)
        code = err.code if isinstance(err, SystemExit) and isinstance(err.code, int) else 130
        if code:
            errors.append("interrupted")
            _error(f"{name}: interrupted")
    finally:
        _report({"stage": name, "event": "end", "exit_code": code, "errors": errors})
    return code


def _run_stage(
    stage: str, scope: Scope, body: Callable[[StageContext], dict], argv: list[str] | None, errors: list[str]
) -> int:
    key = "round"
    try:
        args = _parse(stage, scope, argv)
        params = load_params(args.params)
        check_loadgen(params.round.version)
        if scope != "round":
            key = args.key
            known = params.entries if scope == "entry" else params.benchmarks
            if key not in known:
                raise ParamsError(
                    f"{args.params}: {scope}s.{key}: no such {scope} (have: {', '.join(known) or 'none'})"
                )
        with timing_lock.stage(f"{stage}@{key}"):
            return _execute(stage, scope, key, params, body, errors)
    except RoundError as err:
        for line in str(err).splitlines() or [type(err).__name__]:  # one line per problem, each attributed
            errors.append(line)
            _error(f"{stage}@{key}: {line}")
        return err.exit_code


def _execute(
    stage: str, scope: Scope, key: str, params: RoundParams, body: Callable[[StageContext], dict], errors: list[str]
) -> int:
    from . import hostfacts, tracking
    from .backends import serving

    if scope == "round":
        final, metrics_file, plots = layout.SUBMISSION_OUT, layout.SUBMISSION_METRICS, layout.SUBMISSION_PLOTS
    else:
        final, metrics_file, plots = (
            layout.out_dir(key, stage),
            layout.metrics_path(key, stage),
            layout.plots_dir(key, stage),
        )
    partial = final.with_name(final.name + ".partial")
    plots_partial = plots.with_name(plots.name + ".partial")
    ours = (partial, final, plots_partial, plots, metrics_file, metrics_file.with_name(metrics_file.name + ".partial"))

    round_tags = tracking.round_tags(params)
    dvc_stage = stage if scope == "round" else f"{stage}@{key}"
    host = hostfacts.facts()
    tags = {"dvc.stage": dvc_stage, **{f"host.{k}": v for k, v in host.items()}}  # where it ran
    if scope == "entry":
        entry = params.entries[key]
        tags.update(
            {
                "mlperf.division": entry.division,
                "mlperf.benchmark": entry.mlperf_id,
                "mlperf.system": params.system_of(entry).name,
            }
        )
    try:
        _discard(*ours)  # an earlier run's outputs: this run's or none
        partial.mkdir(parents=True)
        plots_partial.mkdir(parents=True)
        with tracking.stage_run(round_tags, key, stage, tags) as tracker:
            tracker.log_params(stage_params(params, scope, key))
            ctx = StageContext(params=params, key=key, stage=stage, out=partial, plots=plots_partial, tracker=tracker)
            with serving.session(partial):  # the servers the stage's tests started stop before its outputs are sealed
                metrics = body(ctx) or {}
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                metrics["device_peak_bytes"] = torch.cuda.max_memory_allocated()  # perf/memory.py reads it
            metrics["provenance"] = {
                "mlflow_run_id": tracker.run_id,
                "git_commit": round_tags["git.commit"],
                "host": host,  # where it ran: package describes the system from the performance stages' hosts
            }
            write_manifest(partial)
            if any(plots_partial.iterdir()):
                tracker.log_artifact(plots_partial, "plots")
                plots_partial.replace(plots)
            partial.replace(final)
            write_json_atomic(metrics_file, metrics)
            tracker.log_metrics(_flatten("", metrics, {}))
            tracker.log_artifact(metrics_file)
        return 0
    except RoundError:
        _discard(*ours)
        raise
    except (KeyboardInterrupt, SystemExit) as err:
        _discard(*ours)
        errors.append("interrupted")
        _error(f"{stage}@{key}: interrupted")
        return err.code if isinstance(err, SystemExit) and isinstance(err.code, int) else 130
    except Exception as err:  # a bug, not bad input: keep the traceback, end with one line
        full = _disk_full(err, partial)  # asked before the partial output is discarded and frees its space
        _discard(*ours)
        if full:  # not a bug: the machine's state; say where, keep nothing
            errors.append(
                f"no space left on device while writing {getattr(err, 'filename', None) or final.parent} "
                "(nothing was kept; free space and re-run)"
            )
            _error(f"{stage}@{key}: {errors[-1]}")
            return DISK_FULL_EXIT
        traceback.print_exc()
        errors.append(f"{type(err).__name__}: {err}".splitlines()[0])
        _error(f"{stage}@{key}: {errors[-1]}")
        return 1
    finally:
        shutil.rmtree(plots_partial, ignore_errors=True)  # a stage that wrote no plots


def _disk_full(err: BaseException, out: Path) -> bool:
    """ENOSPC, as an OSError or wrapped by a library that writes natively (safetensors says so; torch.save only
    says "file write failed", so a failure while the output's filesystem has under 1 MiB free counts too)."""
    try:
        if shutil.disk_usage(out if out.exists() else out.parent).free < 1 << 20:
            return True
    except OSError:
        pass
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _discard(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
