"""The system under test for LLMs: LoadGen enqueues, one worker batches and generates.

`issue_query` only enqueues (work inside it wrecks Server latency); the worker takes what
is queued, up to the engine's batch limit (dynamic batching), and completes every id it
was given, even on failure (an id never completed hangs LoadGen forever; an unknown id
crashes it).
"""

from __future__ import annotations

import queue
import sys
import threading
import traceback

import numpy as np
from tqdm import tqdm


class LLMSystem:
    def __init__(self, engine, prompts: list[str], max_batch: int, report_first_token: bool, desc: str):
        self.engine, self.prompts = engine, prompts
        self.max_batch, self.report_first_token = max_batch, report_first_token
        self.inputs: dict[int, np.ndarray] = {}
        self.work: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.bar = tqdm(desc=desc, unit="sample", file=sys.stderr, mininterval=1.0)
        self.thread = threading.Thread(target=self._worker, daemon=True)
        self.thread.start()

    # QSL callbacks ---------------------------------------------------------
    def load_samples(self, indices: list[int]) -> None:
        try:
            for i in indices:
                if i not in self.inputs:
                    self.inputs[i] = self.engine.encode(self.prompts[i])
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
    def _worker(self) -> None:
        import mlperf_loadgen as lg

        while True:
            item = self.work.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.work.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.work.put(None)
                    break
                batch.append(nxt)
            try:
                if self.error:
                    raise RuntimeError("an earlier sample failed")
                outputs = self.engine.generate([self.inputs[idx] for _, idx in batch])
            except Exception:
                self.error = self.error or traceback.format_exc()
                outputs = [np.zeros(0, dtype=np.int32) for _ in batch]
            for (qid, _), out in zip(batch, outputs):
                out = np.ascontiguousarray(out, dtype=np.int32)
                if self.report_first_token and out.size:
                    first = out[:1].copy()
                    lg.FirstTokenComplete([lg.QuerySampleResponse(qid, first.ctypes.data, first.nbytes)])
                lg.QuerySamplesComplete([lg.QuerySampleResponse(qid, out.ctypes.data, out.nbytes, int(out.size))])
            self.bar.update(len(batch))

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()
        self.bar.close()
