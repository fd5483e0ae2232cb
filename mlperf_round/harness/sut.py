"""The system under test: LoadGen enqueues, one worker feeds the engine's scheduler.

`issue_query` only enqueues (work inside it wrecks Server latency). The worker hands every
arrived query to the scheduler at each step, so with in-flight batching a query joins the
running batch at the next step; it reports the first token the moment it exists
(`FirstTokenComplete`, for token latencies) and the answer the moment it is done. Every id
LoadGen issued is completed, even on failure: an id never completed hangs LoadGen forever,
an unknown id crashes it. Text-to-image engines serve through the same loop: their
scheduler batches arrived captions, and an answer is an image's bytes.
"""

from __future__ import annotations

import queue
import sys
import threading
import traceback

import numpy as np
from tqdm import tqdm


class System:
    """`open_engine` runs on the worker thread: the thread that loads the model must be the one
    that runs it. A model loaded on one thread and run on another pays for two OpenMP pools
    fighting over the cores (2.6x slower per image on 2 cores, measured)."""

    def __init__(self, open_engine, samples: list, report_first_token: bool, desc: str, token_counts: bool = True):
        self.samples = samples
        self.engine = self.scheduler = None
        self.ready = threading.Event()
        self.report_first_token = report_first_token
        self.token_counts = token_counts
        self.inputs: dict[int, np.ndarray] = {}
        self.work: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.pending: set[int] = set()
        self.bar = tqdm(desc=desc, unit="sample", file=sys.stderr, mininterval=1.0)
        self.load_error: BaseException | None = None
        self.thread = threading.Thread(target=self._worker, args=(open_engine,), daemon=True)
        self.thread.start()
        self.ready.wait()
        if self.load_error is not None:
            self.thread.join()
            raise self.load_error

    # QSL callbacks ---------------------------------------------------------
    def load_samples(self, indices: list[int]) -> None:
        try:
            for i in indices:
                if i not in self.inputs:
                    self.inputs[i] = self.engine.sample_ids(self.samples[i])
        except Exception:  # an exception escaping to LoadGen kills the process
            self.error = self.error or traceback.format_exc()

    def unload_samples(self, indices: list[int]) -> None:
        for i in indices:
            self.inputs.pop(i, None)

    # SUT callbacks ---------------------------------------------------------
    def issue_query(self, query_samples) -> None:
        for s in query_samples:
            self.work.put((s.id, s.index))

    def flush_queries(self) -> None:
        pass

    # worker ----------------------------------------------------------------
    def _take(self, block: bool) -> bool:
        """Move arrived queries into the scheduler; False once close() was called."""
        while True:
            try:
                item = self.work.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            qid, idx = item
            self.pending.add(qid)
            try:
                if self.error:
                    raise RuntimeError("an earlier sample failed")
                self.scheduler.submit(qid, self.inputs[idx])
            except Exception:
                self.error = self.error or traceback.format_exc()
                self._complete(qid, np.zeros(0, dtype=np.uint8))
            block = False

    def _worker(self, open_engine) -> None:
        import mlperf_loadgen as lg

        try:
            self.engine = open_engine()
            self.engine.warmup()  # before LoadGen's clock starts, as production harnesses do
            self.scheduler = self.engine.scheduler()
        except BaseException as err:  # noqa: BLE001  (re-raised on the constructing thread)
            self.load_error = err
            return
        finally:
            self.ready.set()

        open_ = True
        while open_ or not self.scheduler.idle:
            if open_:
                open_ = self._take(block=self.scheduler.idle)
            if self.scheduler.idle:
                continue
            try:
                events = self.scheduler.step()
            except Exception:
                self.error = self.error or traceback.format_exc()
                self._fail_all()
                continue
            for ev in events:
                out = np.ascontiguousarray(ev.tokens)
                if ev.kind == "first":
                    if self.report_first_token:
                        lg.FirstTokenComplete([lg.QuerySampleResponse(ev.rid, out.ctypes.data, out.nbytes)])
                else:
                    self._complete(ev.rid, out)

    def _complete(self, qid: int, out: np.ndarray) -> None:
        import mlperf_loadgen as lg

        if qid not in self.pending:
            return
        self.pending.discard(qid)
        if self.token_counts:
            response = lg.QuerySampleResponse(qid, out.ctypes.data, out.nbytes, int(out.size))
        else:
            response = lg.QuerySampleResponse(qid, out.ctypes.data, out.nbytes)
        lg.QuerySamplesComplete([response])
        self.bar.update(1)

    def _fail_all(self) -> None:
        """After an engine failure: answer every outstanding id (empty), start a clean scheduler."""
        for qid in list(self.pending):
            self._complete(qid, np.zeros(0, dtype=np.uint8))
        self.scheduler = self.engine.scheduler()

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()
        self.bar.close()
