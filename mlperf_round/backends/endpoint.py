"""The endpoint backend: an LLM behind an OpenAI-compatible server (trtllm-serve, vLLM, SGLang, `transformers serve`).

The engine directory holds what the server serves (the quantize stage's export, linked, with its
tokenizer), the tokenizer the answers are scored with, and engine.json: the server, how it was
reached or launched, the served model's hash and the client's settings. The harness streams one
completion per query with bounded concurrency: the first streamed text is the query's first token
(LoadGen's TTFT), the whole answer its response and token count.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import servers
from .endpoint_client import EndpointError, Streamed, get_json, stream_completion
from .engine import ENGINE_FILE, Event
from .engine import read_spec as read_engine_spec


@dataclass(frozen=True)
class EndpointSpec:
    backend: str
    benchmark: str
    precision: str
    server: str  # servers.SERVERS key: the request dialect and the launch preset
    url: str | None  # a server already running; None: `launch` is started by each stage that serves
    launch: list[str] | None  # argv with {model}, {host}, {port} placeholders
    served_model: str | None  # the requests' "model"; None: the launch's model argument (or the engine's model path)
    model_source: str  # "export" (the quantize stage's checkpoint, in model/) or a model id the server knows
    model_sha256: str | None
    max_input_len: int
    max_output_len: int
    min_output_len: int
    eos_token_id: int
    report_first_token: bool
    concurrency: int
    token_ids: str  # server | tokenizer: where the answers' token ids come from
    prompt: str  # ids | text: how prompts are sent
    strip_bos: bool  # text prompts: the server's tokenizer adds BOS itself
    request_timeout_s: float
    ready_timeout_s: float
    versions: dict = field(default_factory=dict)
    server_info: dict | None = None  # the server's name and version as its API gave them when the engine was built


def read_spec(engine_dir: Path) -> EndpointSpec:
    return read_engine_spec(engine_dir, EndpointSpec)


def tree_sha256(root: Path) -> str:
    """One hash over a checkpoint directory's files (names and bytes), in a stable order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class EndpointEngine:
    """A client of one server: it holds no model, only the tokenizer that turns text into token ids."""

    def __init__(self, engine_dir: Path, runtime: dict | None = None):
        from ..benchmarks.text import load_tokenizer

        self.spec = read_spec(engine_dir)
        if self.spec.backend != "endpoint":
            raise InputError(f"{engine_dir}: built for backend {self.spec.backend}, not endpoint")
        runtime = runtime or {}
        self.url = runtime.get("url") or self.spec.url
        if not self.url:
            raise InputError(f"{engine_dir}: the engine's server is launched per stage, and none is running")
        self.model = self.spec.served_model or runtime.get("model") or str((engine_dir / "model").resolve())
        self.server = servers.get(self.spec.server)
        self.tokenizer = load_tokenizer(engine_dir / "tokenizer")
        self.first_splices = 0  # answers whose first token the whole answer's tokenization did not start with
        self._count = threading.Lock()  # requests complete on the scheduler's threads

    def warmup(self) -> None:
        """One short completion: the server loads and compiles before LoadGen's clock starts."""
        self.complete(np.asarray(self.tokenizer("warm up", add_special_tokens=True)["input_ids"]), 2)

    def scheduler(self, policy: str | None = None) -> StreamScheduler:
        return StreamScheduler(self)

    def sample_ids(self, sample) -> np.ndarray:
        from ..benchmarks.text import sample_ids

        return sample_ids(sample, self.tokenizer, self.spec.max_input_len)

    def stats(self) -> dict | None:
        return {"first_token_splices": self.first_splices}

    # one request ---------------------------------------------------------------
    def prompt_text(self, ids: np.ndarray) -> str:
        ids = ids.tolist()
        if self.spec.strip_bos and ids and ids[0] == self.tokenizer.bos_token_id:
            ids = ids[1:]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def body(self, ids: np.ndarray, max_tokens: int | None = None) -> dict:
        s = self.spec
        prompt = ids.tolist() if s.prompt == "ids" else self.prompt_text(ids)
        limit = max_tokens or s.max_output_len
        return self.server.request(self.model, prompt, limit, min(s.min_output_len, limit), s.token_ids == "server")

    def ids_of(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete(self, ids: np.ndarray, max_tokens: int | None = None, on_first=None) -> tuple[list[int], list[int]]:
        """The answer's token ids and its first token's, streamed; `on_first(ids)` fires at the first text."""

        def first(streamed: Streamed) -> None:
            if on_first is not None:
                on_first(streamed.first_ids or self.ids_of(streamed.first_text)[:1])

        got = stream_completion(self.url, self.body(ids, max_tokens), self.spec.request_timeout_s, first)
        if self.spec.token_ids == "server":
            if got.token_ids is None:
                raise EndpointError(
                    f"endpoint {self.url}: the server returned no token ids (engine.json token_ids: server); "
                    "set build.endpoint.token_ids: tokenizer"
                )
            return got.token_ids, (got.first_ids or got.token_ids[:1])
        answer = self.ids_of(got.text)
        head = self.ids_of(got.first_text)[:1]
        if head and answer[:1] != head:  # TEST06: the first token reported must start the answer
            with self._count:
                self.first_splices += 1
            answer = head + self.ids_of(got.text[len(got.first_text) :])
        if got.finish_reason == "stop":  # the text leaves out the EOS the model stopped on; the ids keep it
            answer.append(self.spec.eos_token_id)
        return answer, head or answer[:1]


class StreamScheduler:
    """Requests in flight on a thread pool, at most `concurrency` at once; `step` hands back what arrived."""

    WAIT_S = 0.002  # how long a step waits for an event before the SUT looks for new queries

    def __init__(self, engine: EndpointEngine):
        self.engine = engine
        self.pool = ThreadPoolExecutor(engine.spec.concurrency, thread_name_prefix="endpoint")
        self.events: queue.Queue = queue.Queue()
        self.outstanding = 0

    @property
    def idle(self) -> bool:
        return self.outstanding == 0 and self.events.empty()

    def submit(self, rid: int, prompt) -> None:
        self.outstanding += 1
        self.pool.submit(self._run, rid, prompt)

    def _run(self, rid: int, prompt) -> None:
        try:
            answer, _ = self.engine.complete(
                prompt, on_first=lambda ids: self.events.put(Event(rid, "first", np.asarray(ids, dtype=np.int32)))
            )
            self.events.put(Event(rid, "done", np.asarray(answer, dtype=np.int32)))
        except BaseException as err:  # noqa: BLE001  (raised on the SUT's thread by step)
            self.events.put(err)

    def step(self) -> list[Event]:
        out: list[Event] = []
        try:
            item = self.events.get(timeout=self.WAIT_S)
        except queue.Empty:
            return out
        while True:
            if isinstance(item, BaseException):
                self.outstanding -= 1
                self.pool.shutdown(wait=False, cancel_futures=True)
                raise item
            if item.kind == "done":
                self.outstanding -= 1
            out.append(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return out


def wait_ready(url: str, timeout_s: float, alive=lambda: None) -> float:
    """Seconds until GET /health answers 200 (`alive()` raises when a launched server has exited)."""
    start = time.perf_counter()
    while True:
        alive()
        try:
            if get_json(url, "/health", timeout=5.0) is not None or get_json(url, "/v1/models", timeout=5.0):
                return time.perf_counter() - start
        except EndpointError:
            pass
        if time.perf_counter() - start > timeout_s:
            raise EndpointError(f"endpoint {url}: not ready after {timeout_s:.0f} s (GET /health)")
        time.sleep(0.5)


def server_info(url: str, server: str) -> dict:
    """The server's name and version as its own API reports them."""
    info: dict = {"name": server, "version": None, "version_source": "not reported by the server's API"}
    for path in servers.get(server).version_paths:
        try:
            got = get_json(url, path)
        except EndpointError:
            continue
        if isinstance(got, dict) and got.get("version"):
            info.update(version=str(got["version"]), version_source=f"GET {path}")
            break
    models = get_json(url, "/v1/models") or {}
    info["models"] = [m.get("id") for m in models.get("data", [])] if isinstance(models, dict) else []
    return info


def write_spec(spec: EndpointSpec, engine_dir: Path, **changes) -> EndpointSpec:
    spec = replace(spec, **changes)
    (engine_dir / ENGINE_FILE).write_text(json.dumps(asdict(spec), indent=1, sort_keys=True))
    return spec
