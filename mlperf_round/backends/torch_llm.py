"""The torch backend for decoder LLMs: an engine directory and the generator that serves it.

An engine directory holds the (possibly fake-quantized) model, the tokenizer and
`engine.json`, which records which backend built it, with which limits, scheduler, KV-cache
geometry and package versions. The harness loads nothing else.

Greedy decoding on Llama-layout models runs with in-flight batching over a paged KV cache
(`paged.py`); beam search (GPT-J's reference) runs static batches through transformers.
Both serve the harness through the same submit / step / idle interface.
"""

from __future__ import annotations

import json
import platform
from collections import deque
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..jsonfile import write_json_atomic
from .engine import ENGINE_FILE

KV_SCALES_FILE = "kv_scales.json"


@dataclass(frozen=True)
class EngineSpec:
    backend: str
    benchmark: str
    precision: str
    dtype: str
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    min_output_len: int
    beam_width: int
    eos_token_id: int
    pad_token_id: int
    report_first_token: bool
    threads: int
    versions: dict
    scheduler: str = "static"  # inflight | static
    kv_block_size: int = 0
    kv_pool_blocks: int = 0
    device: str = "auto"
    kv_cache: str = "auto"  # auto | fp8 (scales in kv_scales.json)
    kernels: str = "emulated"  # auto | emulated | native (lowp.py: FP8 / INT8 GEMMs with the quantize stage's scales)
    max_num_tokens: int = 8192  # prompt tokens per prefill pass (inflight)
    kernel_choice: dict | None = None  # auto: kernel_choice.KernelChoice as measured when the engine was built

    def kernel_rows(self) -> int:
        """Rows of a decoding step's GEMMs, the shape that dominates generation: every sequence (and beam) in flight."""
        return self.max_batch_size * self.beam_width


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "nvidia-modelopt", "mlcommons-loadgen"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def build(model_dir: Path, tokenizer_dir: Path, spec: EngineSpec, out: Path) -> None:
    from ..checkpoints import copy_tokenizer, link_tree

    link_tree(model_dir, out / "model")  # linked, not copied: the quantize stage's bytes, once on disk
    copy_tokenizer(tokenizer_dir, out / "tokenizer")  # a real checkpoint's folder: its tokenizer files only
    (out / ENGINE_FILE).write_text(json.dumps(asdict(spec), indent=1, sort_keys=True))


def read_spec(engine_dir: Path, spec_type: type = EngineSpec):
    from .engine import read_spec as read

    return read(engine_dir, spec_type)


def resolve_device(device: str, where: str = "build.device") -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError(f"{where}: cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def open_spec(spec, engine_dir: Path) -> torch.device:
    """What every torch engine does on load: refuse another backend's build, set threads, pick the device."""
    if spec.backend != "torch":
        raise InputError(f"{engine_dir}: built for backend {spec.backend}, not torch")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    return resolve_device(spec.device)


def place_kernels(
    model: torch.nn.Module, spec, device: torch.device, where: str = "engine"
) -> tuple[dict, dict | None]:
    """The quantized layers onto the kernels the engine was built for: native FP8 / INT8 GEMMs, emulated (fake
    quantization, weights rounded once), or under `auto` the faster of the two per kind on this host.
    Returns (what was converted and chosen, for the build's metrics; the choice's record, for engine.json)."""
    if spec.precision not in ("fp8", "int8_sq"):
        return {}, None
    from .lowp import convert

    info: dict = {}
    record = None
    if spec.kernels == "auto":
        from .kernel_choice import KernelChoice, resolve

        choice, retimed = resolve(model, KernelChoice.from_json(spec.kernel_choice), device, spec.kernel_rows(), where)
        kinds = {kind for kind, chosen in choice.choice.items() if chosen == "native"}
        info, record = {**choice.metrics(), "kernels_retimed": retimed}, choice.to_json()
    else:
        kinds = {"fp8", "int8"} if spec.kernels == "native" else set()
    return {**convert(model, device, kinds).summary(), **info}, record


def record_kernel_choice(engine_dir: Path, spec, record: dict | None) -> None:
    """The build's measured choice into engine.json, so every later open on this host serves the same kernels."""
    if record is not None and spec.kernels == "auto":
        data = json.loads((engine_dir / ENGINE_FILE).read_text())
        data["kernel_choice"] = record
        write_json_atomic(engine_dir / ENGINE_FILE, data)


class TorchLLM:
    """The engine: model, tokenizer and limits as built; `scheduler()` serves requests."""

    def __init__(self, engine_dir: Path, kv_calibration: list[list[int]] | None = None):
        """`kv_calibration` (prompt token ids): the build's first open measures an fp8 KV cache's scales on them."""
        from ..benchmarks.text import load_tokenizer
        from ..optimization.quantization import load

        self.spec = read_spec(engine_dir)
        self.device = open_spec(self.spec, engine_dir)
        self.model = load(
            engine_dir / "model", self.spec.dtype
        )  # on the host: the device gets FP8 layers, not bf16 ones
        self.kernels, self.kernel_record = place_kernels(self.model, self.spec, self.device, str(engine_dir))
        self.model.to(self.device)
        self.tokenizer = load_tokenizer(engine_dir / "tokenizer")
        self.kv_scales = None
        if self.spec.kv_cache == "fp8" and kv_calibration is not None:
            from .paged import measure_kv_scales

            self.kv_scales = measure_kv_scales(self.model, kv_calibration, self.spec.max_input_len)
            write_json_atomic(engine_dir / KV_SCALES_FILE, self.kv_scales)
        elif self.spec.kv_cache == "fp8":
            from ..jsonfile import read_json

            self.kv_scales = read_json(engine_dir / KV_SCALES_FILE, "missing; an fp8 KV cache needs its scales")

    @classmethod
    def in_memory(cls, model: torch.nn.Module, spec: EngineSpec, kv_scales: dict | None = None) -> TorchLLM:
        """An engine over a model already in memory, as built: for benchmarks at shapes no disk here holds (70B)."""
        engine = cls.__new__(cls)
        engine.spec, engine.model, engine.tokenizer, engine.kv_scales, engine.kernels = spec, model, None, kv_scales, {}
        engine.kernel_record = None
        engine.device = next(model.parameters()).device
        return engine

    def scheduler(self, policy: str | None = None):
        """A fresh request scheduler over this engine (in-flight or static, as built unless `policy` says)."""
        from .paged import InflightEngine

        s = self.spec
        policy = policy or s.scheduler
        if s.scheduler == "inflight":
            return InflightEngine(
                self.model,
                max_batch=s.max_batch_size,
                block_size=s.kv_block_size,
                pool_blocks=s.kv_pool_blocks,
                max_input=s.max_input_len,
                max_new=s.max_output_len,
                min_new=s.min_output_len,
                eos_token_id=s.eos_token_id,
                policy=policy,
                kv_scales=self.kv_scales,
                max_num_tokens=s.max_num_tokens,
            )
        return StaticBatcher(self)

    def sample_ids(self, sample) -> np.ndarray:
        from ..benchmarks.text import sample_ids

        return sample_ids(sample, self.tokenizer, self.spec.max_input_len)

    def warmup(self) -> None:
        """Nothing to pay ahead here: the kernel choice was timed when the engine opened."""

    def stats(self) -> None:
        return None

    @torch.inference_mode()
    def generate(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """New tokens per input (int32), cut after the first EOS (kept: TEST06 allows one)."""
        s = self.spec
        width = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), width), s.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for i, x in enumerate(inputs):  # left padding: every prompt ends where generation starts
            ids[i, width - len(x) :] = torch.from_numpy(x)
            mask[i, width - len(x) :] = 1
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            num_beams=s.beam_width,
            max_new_tokens=s.max_output_len,
            min_new_tokens=s.min_output_len,
            early_stopping=s.beam_width > 1,
            do_sample=False,
            eos_token_id=s.eos_token_id,
            pad_token_id=s.pad_token_id,
        )[:, width:]
        results = []
        for row in out.cpu().numpy():
            stop = np.flatnonzero(row == s.eos_token_id)
            results.append(row[: stop[0] + 1 if stop.size else len(row)].astype(np.int32))
        return results


class StaticBatcher:
    """Static batches through `TorchLLM.generate`: what beam search needs; the same interface as in-flight."""

    def __init__(self, engine: TorchLLM):
        self.engine = engine
        self.waiting: deque[tuple[int, np.ndarray]] = deque()

    def submit(self, rid: int, prompt: np.ndarray) -> None:
        self.waiting.append((rid, np.asarray(prompt, dtype=np.int64)[-self.engine.spec.max_input_len :]))

    @property
    def idle(self) -> bool:
        return not self.waiting

    def step(self) -> list:
        batch = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.engine.spec.max_batch_size))]
        if not batch:
            return []
        outputs = self.engine.generate([x for _, x in batch])
        return [ev for (rid, _), out in zip(batch, outputs) for ev in self._events(rid, out)]

    def _events(self, rid: int, out: np.ndarray) -> list:
        from .engine import Event

        return [Event(rid, "first", out[:1]), Event(rid, "done", out)]


def generate_all(scheduler, prompts: list[np.ndarray]) -> list[np.ndarray]:
    """Every prompt through a scheduler to its end; outputs in prompt order."""
    for i, prompt in enumerate(prompts):
        scheduler.submit(i, prompt)
    outputs: dict[int, np.ndarray] = {}
    while not scheduler.idle:
        outputs.update((ev.rid, ev.tokens) for ev in scheduler.step() if ev.kind == "done")
    return [outputs[i] for i in range(len(prompts))]
