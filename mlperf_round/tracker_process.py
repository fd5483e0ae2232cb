"""A stage's MLflow run, kept by a forked helper process, so MLflow's start-up overlaps the stage's own.

Importing MLflow and opening its SQLite store take 1.5-2.5 s, and the stage's libraries (torch,
transformers, Model Optimizer) several more, all single-threaded. Forked as the stage's run opens, a helper
imports MLflow, creates the run (with the stage's own start time) and logs what the stage sends it
over a pipe, while the stage imports and computes on the other core. Calls that need an answer
(the run id, an artifact whose file the stage may move next, the end of the run) wait for it;
the rest are queued, and any failure among them fails the stage when its run ends. If the stage
dies without ending its run, the helper sees the pipe close and ends the run KILLED.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

from .errors import RoundError
from .tracking import DIED


class TrackerProcess:
    """The stage's side: the same methods as `tracking.StageRun`."""

    def __init__(self, open_run):
        """`open_run()` runs in the helper: it returns the StageRun to log to (it imports MLflow there)."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # no signal may reach the helper before it ignores them: the stage's SIGTERM handler would unwind the
        # helper's copy of the stage's stack (discarding outputs, as the stage would); the parent gets them after
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        pid = os.fork()
        if pid == 0:  # the helper: never returns
            try:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
                os.close(req_w)
                os.close(rep_r)
                _serve(open_run, os.fdopen(req_r, "r"), os.fdopen(rep_w, "w"))
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        os.close(req_r)
        os.close(rep_w)
        self.pid, self._requests, self._replies = pid, os.fdopen(req_w, "w"), os.fdopen(rep_r, "r")
        self._run_id: str | None = None

    def _send(self, op: str, *args, wait: bool = False):
        try:
            self._requests.write(json.dumps({"op": op, "args": args, "wait": wait}, default=str) + "\n")
            self._requests.flush()
        except BrokenPipeError:
            raise RoundError(f"MLflow: the tracking helper (pid {self.pid}) is gone") from None
        if not wait:
            return None
        line = self._replies.readline()
        if not line:
            raise RoundError(f"MLflow: the tracking helper (pid {self.pid}) exited without answering {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise RoundError(f"MLflow: {reply['error']}")
        return reply.get("result")

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = self._send("run_id", wait=True)
        return self._run_id

    def log_params(self, params: dict) -> None:
        self._send("log_params", {k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict, run_id: str | None = None) -> None:
        self._send("log_metrics", metrics, run_id)

    def log_series(self, name: str, values: list[float]) -> None:
        self._send("log_series", name, [float(v) for v in values])

    def log_round_metrics(self, metrics: dict) -> None:
        self._send("log_round_metrics", metrics)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self._send("log_artifact", str(path), artifact_path, wait=True)  # the stage may move the file next

    def log_round_artifact(self, path) -> None:
        self._send("log_round_artifact", str(path), wait=True)

    def log_dict(self, data: dict, name: str) -> None:
        self._send("log_dict", json.loads(json.dumps(data, default=str)), name)

    def set_tag(self, key: str, value: str) -> None:
        self._send("set_tag", key, str(value))

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run FINISHED, FAILED or KILLED; raises if any queued call had failed."""
        try:
            self._send("finish", status, error, wait=True)
        finally:
            self.close()

    def close(self) -> None:
        for f in (self._requests, self._replies):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _serve(open_run, requests, replies) -> None:
    """The helper's loop: the run ends as the stage reports, or KILLED when the pipe closes without a word."""
    code = 0
    tracker, setup_error, errors = None, None, []

    def answer(reply: dict) -> None:
        try:
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
        except BrokenPipeError:  # the stage is gone; the loop sees the pipe close next
            pass

    try:
        try:
            tracker = open_run()
        except Exception as err:  # reported at the first call that waits, so the stage fails with it
            setup_error = f"{type(err).__name__}: {err}".splitlines()[0]
            traceback.print_exc()
        for line in requests:
            req = json.loads(line)
            op, args = req["op"], req["args"]
            try:
                if setup_error:
                    raise RuntimeError(setup_error)
                if op == "run_id":
                    result = tracker.run_id
                elif op == "finish":
                    status, error = args
                    lost = f"{len(errors)} logging call(s) failed, the first: {errors[0]}" if errors else None
                    if lost and status == "FINISHED":  # the stage fails with it, so its run does too
                        status, error = "FAILED", lost
                    if error:
                        tracker.set_tag("mlperf.error", error[:1000])
                    tracker.end(status)
                    if lost:
                        raise RuntimeError(lost)
                    result = None
                else:
                    result = getattr(tracker, op)(*args)
                if req["wait"]:
                    answer({"result": result})
            except Exception as err:
                message = f"{op}: {type(err).__name__}: {err}".splitlines()[0]
                if req["wait"]:
                    answer({"error": message})
                else:
                    errors.append(message)
            if op == "finish":
                return
        if tracker is not None:  # the pipe closed without `finish`: the stage died
            tracker.set_tag("mlperf.error", DIED)
            tracker.end("KILLED")
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
