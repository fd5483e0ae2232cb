"""The round's schema: params.yaml is validated here, once, before any stage works.

Every knob has a default and a description; unknown keys are errors. A validation
failure is reported as one line naming the key path (exit code 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from .errors import ParamsError
from .versions import SERVER_LIKE, VERSIONS, scenarios_for, where_available

PARAMS_FILE = "params.yaml"

Precision = Literal["fp32", "fp16", "bf16", "fp8", "int8_sq"]
Scenario = Literal["SingleStream", "Offline", "Server", "Interactive"]


def _registry():
    """The benchmarks (imported late: each benchmark module defines its params schema on this module's classes)."""
    from . import benchmarks

    return benchmarks.REGISTRY


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SystemParams(Strict):
    """What systems/<name>.json says that the host cannot tell."""

    name: str = Field("cpu-smoke", description="system id: names systems/<name>.json and the results folders")
    status: Literal["available", "preview", "rdi"] = Field("available", description="MLPerf availability category")
    system_type: Literal["datacenter", "edge", "datacenter,edge"] = Field(
        "datacenter", description="MLPerf system type"
    )
    framework: str = Field("PyTorch (mlperf-round torch backend)", description="software that runs the model")
    accelerator_model_name: str = Field("N/A", description="accelerator, when NVML cannot tell")
    accelerators_per_node: int = Field(0, ge=0, description="accelerators per node, when NVML cannot tell")
    cooling: str = Field("air", description="cooling of the system")
    host_networking: str = Field("N/A", description="host network, e.g. 'Infiniband'")
    host_storage_type: str = Field("SSD", description="host storage type")
    host_storage_capacity: str = Field("1 TB", description="host storage capacity")
    hw_notes: str = Field("", description="free-form hardware notes")
    sw_notes: str = Field("", description="free-form software notes")


class RoundSection(Strict):
    name: str = Field("smoke", description="round name: the MLflow parent run, compared across rounds")
    version: Literal["v5.0", "v5.1", "v6.0", "v6.1"] = Field(
        "v5.0", description="MLPerf Inference version: layout, seeds, benchmarks"
    )
    submitter: str = Field("MLPerfRound", description="submitter organisation, the folder under closed/ and open/")
    smoke: bool = Field(True, description="shortened LoadGen runs: results are measured but not submittable")
    test_timeout_s: int = Field(3600, ge=10, description="watchdog on each LoadGen test: a hung SUT fails the stage")
    system: SystemParams = Field(
        default_factory=SystemParams, description="the system under test: every entry's, unless it names another"
    )
    systems: dict[str, SystemParams] = Field(
        default_factory=dict,
        description="further systems of this round, keyed by name (their `name` is the key); an entry that sets "
        "`system: <key>` runs on that system's Prefect work queue and is submitted under results/<key>/",
    )
    mlcommons_inference: str = Field(
        "",
        description="a local clone of mlcommons/inference: compliance runs its audit.config files, and package "
        "also runs its submission checker",
    )

    @model_validator(mode="before")
    @classmethod
    def _system_names(cls, data):
        """A system under `systems` is named by its key; a `name` that says otherwise is refused."""
        if isinstance(data, dict) and isinstance(data.get("systems"), dict):
            systems = {}
            for key, section in data["systems"].items():
                section = dict(section or {})
                if section.setdefault("name", key) != key:
                    raise ValueError(f"systems.{key}.name: {section['name']!r}; a system is named by its key")
                systems[key] = section
            data = {**data, "systems": systems}
        return data

    @model_validator(mode="after")
    def _names(self) -> RoundSection:
        names = [("system.name", self.system.name)] + [(f"systems.{k}", k) for k in self.systems]
        for key, value in (("name", self.name), ("submitter", self.submitter), *names):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
                raise ValueError(f"{key}: {value!r} must be letters, digits, '.', '_' or '-'")
        if self.system.name in self.systems:
            raise ValueError(f"systems.{self.system.name}: it is round.system already (name it once)")
        tools = Path(self.mlcommons_inference) / "tools" / "submission"
        if self.mlcommons_inference and not tools.is_dir():
            raise ValueError(
                f"mlcommons_inference: {self.mlcommons_inference} is not a clone of mlcommons/inference "
                "(no tools/submission)"
            )
        return self

    @property
    def all_systems(self) -> dict[str, SystemParams]:
        """Every system of the round by name, round.system first."""
        return {self.system.name: self.system, **self.systems}


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
# PyTorch's weight shards as transformers writes them (MLCommons' GPT-J checkpoint): read with
# torch.load(weights_only=True), which rebuilds tensors and refuses anything else. Other pickles stay refused.
TORCH_WEIGHTS = re.compile(r"(.*/)?pytorch_model(-\d+-of-\d+)?\.bin")


def refused_pickle(name: str) -> bool:
    """A pickle file no loader of the round reads (a transformers weight shard is read, with weights_only)."""
    return Path(name).suffix.lower() in PICKLE_SUFFIXES and not TORCH_WEIGHTS.fullmatch(name)


class HFSource(Strict):
    repo: str = Field("", description="Hugging Face repository, e.g. EleutherAI/gpt-j-6b")
    revision: str = Field("", description="pinned commit (40 hex digits); `mlperf-round pin` resolves a branch to one")
    files: dict[str, str] = Field(
        default_factory=dict, description="file name -> sha256, every file to fetch (`mlperf-round pin` writes them)"
    )
    endpoint: str = Field(
        "",
        description="hub endpoint: a mirror, or a local server in tests "
        "(empty: $HF_ENDPOINT, else https://huggingface.co)",
    )
    cache_dir: str = Field(
        "",
        description="Hub cache the files are downloaded into and read from, never copied out of "
        "(empty: $HF_HUB_CACHE, else ~/.cache/huggingface/hub)",
    )
    max_workers: int = Field(8, ge=1, le=64, description="files downloaded at once")

    @model_validator(mode="after")
    def _pinned(self) -> HFSource:
        if self.revision and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(
                f"revision {self.revision!r} is not a 40-hex-digit commit "
                "(mlperf-round pin resolves a branch or tag to its commit)"
            )
        for name, digest in self.files.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"files.{name}: {digest!r} is not a sha256")
            if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
                raise ValueError(f"files.{name}: not a plain relative file name inside the repository")
            if refused_pickle(name):
                raise ValueError(
                    f"files.{name}: a pickle file runs code when it is loaded; fetch the repository's "
                    ".safetensors weights (or transformers' pytorch_model*.bin shards) instead"
                )
        return self

    @property
    def complete(self) -> bool:
        return bool(self.repo and self.revision and self.files)


class ModelParams(Strict):
    source: Literal["tiny", "hf", "local"] = Field(
        "tiny",
        description="tiny: built locally from `tiny`; hf: `hf` repo at a pinned revision, downloaded into the "
        "Hub cache; local: a checkpoint already on disk (`path`, or the Hub cache's snapshot of hf.repo at "
        "hf.revision), "
        "verified against hf.files and never copied",
    )
    hf: HFSource = Field(default_factory=HFSource, description="real checkpoint, verified by sha256")
    path: str = Field("", description="source 'local': the checkpoint directory (empty: the Hub cache's snapshot)")

    @model_validator(mode="after")
    def _hf_complete(self) -> ModelParams:
        if self.source == "hf" and not self.hf.complete:
            raise ValueError(
                "hf: source 'hf' needs repo, revision and files with their sha256 (mlperf-round pin writes them)"
            )
        if self.source == "local" and not self.hf.files:
            raise ValueError(
                "hf.files: source 'local' verifies the checkpoint against the pinned sha256 in hf.files "
                "(mlperf-round pin writes them)"
            )
        if self.source == "local" and not self.path and not (self.hf.repo and self.hf.revision):
            raise ValueError(
                "path: source 'local' needs a directory, or hf.repo and hf.revision to find in the Hub cache"
            )
        if self.path and self.source != "local":
            raise ValueError(f"path: only source 'local' reads a directory (source is {self.source!r})")
        return self


class DatasetParams(Strict):
    source: Literal["generated", "url"] = Field(
        "generated", description="generated: deterministic synthetic set; url: fetched and verified"
    )
    size: int = Field(64, ge=1, description="samples in the accuracy set (the QSL)")
    calibration_size: int = Field(16, ge=1, description="samples in the calibration list")
    seed: int = Field(0, description="seed of the generated set")
    url: str = Field(
        "",
        description="dataset file for source 'url', as MLCommons ships it (OpenOrca: the pandas pickle; "
        "CNN-DailyMail: cnn_eval.json)",
    )
    sha256: str = Field("", description="sha256 of the dataset file")
    calibration_url: str = Field("", description="calibration file for source 'url'")
    calibration_sha256: str = Field("", description="sha256 of the calibration file")

    @model_validator(mode="after")
    def _sizes(self) -> DatasetParams:
        if self.source == "url" and not (self.url and re.fullmatch(r"[0-9a-f]{64}", self.sha256)):
            raise ValueError("url: source 'url' needs url and a sha256")
        if self.source == "url" and not (
            self.calibration_url and re.fullmatch(r"[0-9a-f]{64}", self.calibration_sha256)
        ):
            raise ValueError(
                "calibration_url: source 'url' needs the calibration list too (calibration_url and its "
                "calibration_sha256)"
            )
        return self


class GenerationParams(Strict):
    num_beams: int = Field(4, ge=1, le=8, description="beam width (MLPerf reference: GPT-J 4, Llama 2 1)")
    max_new_tokens: int = Field(128, ge=2, description="output length limit (reference: GPT-J 128, Llama 2 1024)")
    min_new_tokens: int = Field(30, ge=0, description="output length floor (reference: GPT-J 30, Llama 2 1)")
    max_input_tokens: int = Field(1919, ge=16, description="input truncation (reference: GPT-J 1919, Llama 2 1024)")

    @model_validator(mode="after")
    def _lengths(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}")
        return self


class ReferenceParams(Strict):
    source: Literal["measured", "published"] = Field(
        "measured",
        description="measured: score the unoptimized model in this round; published: MLPerf's reference scores",
    )
    scores: dict[str, float] = Field(
        default_factory=dict,
        description="published reference scores for source 'published' (empty: MLPerf's, from the benchmark module)",
    )


CALIBRATION_DEVICE = Field(
    "auto",
    description="where calibrate and quantize run the model: auto (CUDA when torch sees "
    "one, else the CPU) | cpu | cuda",
)


class CalibrationParams(Strict):
    batch_size: int = Field(4, ge=1, description="calibration batch size")
    device: Literal["auto", "cpu", "cuda"] = CALIBRATION_DEVICE


class BenchmarkParams(Strict):
    model: ModelParams = Field(default_factory=ModelParams, description="where the reference model comes from")
    dataset: DatasetParams = Field(default_factory=DatasetParams, description="accuracy set and calibration list")
    calibration: CalibrationParams = Field(
        default_factory=CalibrationParams, description="how statistics are collected"
    )
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="MLPerf's decoding rules for this model"
    )
    reference: ReferenceParams = Field(
        default_factory=ReferenceParams, description="the score targets are fractions of"
    )

    @model_validator(mode="after")
    def _calib(self) -> BenchmarkParams:
        if self.dataset.source == "generated" and self.dataset.calibration_size > self.dataset.size:
            raise ValueError(
                f"dataset.calibration_size: {self.dataset.calibration_size} is larger than dataset.size "
                f"{self.dataset.size}"
            )
        return self


class URLFile(Strict):
    url: str = Field("", description="where to fetch the file")
    sha256: str = Field("", description="its sha256")

    @model_validator(mode="after")
    def _digest(self) -> URLFile:
        if self.url and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256: {self.sha256!r} is not a sha256")
        return self


class DeepCacheParams(Strict):
    interval: int = Field(
        0, ge=0, le=50, description="a full UNet step every `interval` steps, shallow steps between (0 or 1: off)"
    )
    branch: int = Field(
        0, ge=0, description="how shallow: the shallow step runs UNet levels 0..branch and reuses the cached rest"
    )


class PruneParams(Strict):
    layers_kept: int = Field(
        0,
        ge=0,
        description="decoder layers kept, the most important by block influence on the calibration list (0: no "
        "pruning)",
    )
    heads_kept: int = Field(
        0, ge=0, description="attention heads kept in every kept layer, by output norm on the calibration list (0: all)"
    )

    @property
    def active(self) -> bool:
        return bool(self.layers_kept or self.heads_kept)


class DistillParams(Strict):
    steps: int = Field(
        0, ge=0, le=100000, description="knowledge-distillation steps from the unpruned model (0: prune only)"
    )
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate")
    temperature: float = Field(2.0, gt=0, le=100, description="softens both models' logits in the KL loss")
    batch_size: int = Field(8, ge=1, le=4096, description="sequences per step")
    seq_len: int = Field(128, ge=8, le=8192, description="tokens per training sequence (the calibration list, packed)")
    seed: int = Field(0, description="seed of the batch order")


class RecipeParams(Strict):
    precision: Precision = Field(
        "fp8",
        description="fp32 / fp16 / bf16: pass-through; fp8: E4M3 weights and activations; int8_sq: INT8 SmoothQuant",
    )
    smoothquant_alpha: float = Field(0.5, ge=0, le=1, description="SmoothQuant migration strength (int8_sq only)")
    quantize_lm_head: bool = Field(
        False, description="quantize the output projection too (MLPerf recipes keep it high precision)"
    )
    sparsity: Literal["none", "2:4"] = Field(
        "none",
        description="2:4 structured sparsity on every attention and MLP linear, before quantization (open division "
        "only)",
    )
    sparsity_method: Literal["sparsegpt", "sparse_magnitude"] = Field(
        "sparsegpt",
        description="mask selection: sparsegpt (Hessian saliency on the calibration list) or sparse_magnitude (no "
        "data)",
    )
    deepcache: DeepCacheParams = Field(
        default_factory=DeepCacheParams, description="DeepCache (text-to-image, open division only)"
    )
    prune: PruneParams = Field(
        default_factory=PruneParams, description="structured pruning of layers and heads (GPT-J, open division only)"
    )
    distill: DistillParams = Field(
        default_factory=DistillParams, description="knowledge distillation of the pruned model from the original"
    )
    export_hf: bool = Field(
        False,
        description="also write deployable/, Model Optimizer's unified Hugging Face checkpoint of the quantized LLM "
        "(FP8 / INT8 tensors with their scales), which TensorRT-LLM, vLLM and SGLang load; it holds every tensor of "
        "the "
        "model again, so it is off unless a serving stack outside this round needs it",
    )


class EndpointParams(Strict):
    """The endpoint backend's settings: an OpenAI-compatible server the harness streams completions from."""

    server: Literal["trtllm-serve", "vllm", "sglang", "transformers"] = Field(
        "transformers",
        description="which server: its launch preset and request dialect. trtllm-serve (TensorRT-LLM), vllm and "
        "sglang need NVIDIA GPUs and are not installed here: each is refused unless its command is on the PATH "
        "or url names a running one; transformers (transformers serve, CPU) runs here",
    )
    url: str | None = Field(
        None, description="http://host:port of a server already running; unset: each stage starts the preset"
    )
    launch: list[str] | None = Field(
        None,
        description="the command each stage starts instead of the preset, as argv with {model} {host} {port} "
        "{engine} placeholders",
    )
    model: str = Field(
        "export",
        description="what the server serves: export, the quantize stage's checkpoint (Model Optimizer's unified "
        "checkpoint with recipe.export_hf, or the plain one of an fp32/bf16 entry), linked into the engine; or a "
        "model id or path the server loads itself",
    )
    served_model: str | None = Field(
        None, description="the requests' model name (unset: the launch's model argument, or model)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="the server's --dtype")
    tp_size: int = Field(1, ge=1, description="tensor-parallel size (trtllm-serve, vllm, sglang)")
    pp_size: int = Field(1, ge=1, description="pipeline-parallel size (trtllm-serve, vllm, sglang)")
    kv_cache_memory_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="GPU memory for the KV cache: trtllm-serve --kv_cache_free_gpu_memory_fraction, vllm "
        "--gpu-memory-utilization, sglang --mem-fraction-static",
    )
    extra_args: list[str] = Field(default_factory=list, description="appended to the preset's command")
    concurrency: int = Field(0, ge=0, description="requests in flight (0: build.max_batch_size)")
    token_ids: Literal["auto", "server", "tokenizer"] = Field(
        "auto",
        description="where answers' token ids come from: server (vllm, sglang, trtllm-serve return them), "
        "tokenizer (the engine's tokenizer over the streamed text), auto (server where it can)",
    )
    request_timeout_s: float = Field(600.0, gt=0, description="longest wait for one answer's next bytes")
    ready_timeout_s: float = Field(900.0, gt=0, description="longest wait for a started server to answer")

    @model_validator(mode="after")
    def _runnable(self) -> EndpointParams:
        from .backends import servers

        server = servers.get(self.server)
        if self.url and self.launch:
            raise ValueError("url and launch: give one (a running server, or the command that starts one)")
        if self.url and not re.fullmatch(r"https?://[^/\s]+/?", self.url):
            raise ValueError(f"url: {self.url!r} is not http(s)://host:port")
        if self.token_ids == "server" and not server.ids_request:
            raise ValueError(f"token_ids: {server.what} returns text only; use tokenizer")
        if not server.parallel and (self.tp_size > 1 or self.pp_size > 1):
            raise ValueError(f"tp_size, pp_size: {server.what} runs one process; they are 1")
        if self.launch is not None and not self.launch:
            raise ValueError("launch: an empty command")
        return self


TORCH_ONLY = (
    "dtype",
    "threads",
    "device",
    "scheduler",
    "kv_block_size",
    "kv_pool_blocks",
    "kernels",
    "compile",
    "channels_last",
)


class BuildParams(Strict):
    backend: Literal["torch", "endpoint"] = Field(
        "torch",
        description="engine backend: torch, this project's engines (in-flight batching over a paged KV cache for the "
        "LLMs); endpoint, an OpenAI-compatible server (build.endpoint: trtllm-serve, vLLM, SGLang, transformers serve)",
    )
    endpoint: EndpointParams | None = Field(None, description="the endpoint backend's settings (backend: endpoint)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="activation dtype of the engine")
    max_batch_size: int = Field(8, ge=1, le=1024, description="most sequences in flight (or per static batch)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the engine runs (auto: cuda when present)"
    )
    scheduler: Literal["auto", "inflight", "static"] = Field(
        "auto",
        description="inflight: sequences join and leave the running batch every step (paged KV cache, greedy "
        "decoding); "
        "static: one batch at a time; auto: inflight where decoding is greedy",
    )
    kv_block_size: int = Field(16, ge=1, le=1024, description="tokens per KV-cache block (inflight)")
    kv_pool_blocks: int = Field(
        0, ge=0, description="KV-cache blocks in the pool (0: enough for max_batch_size longest sequences)"
    )
    kv_cache: Literal["auto", "fp8"] = Field(
        "auto",
        description="KV-cache storage (inflight): auto, the engine dtype; fp8, E4M3 with per-layer K and V scales "
        "measured on the calibration list when the engine is built",
    )
    max_num_tokens: int = Field(
        8192,
        ge=16,
        description="inflight: prompt tokens per prefill pass; admitted prompts beyond "
        "it prefill in further passes (TensorRT-LLM's max_num_tokens)",
    )
    kernels: Literal["auto", "emulated", "native"] = Field(
        "auto",
        description="quantized layers: emulated, Model Optimizer's fake quantization (the accuracy reference); "
        "native, the same scales on real FP8 / INT8 GEMMs (torch._scaled_mm, torch._int_mm); auto, the faster of "
        "the two "
        "per kind, timed at the model's shapes on the engine's device when it is built (and again on another host)",
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off",
        description="text-to-image: torch.compile mode for the UNet and the VAE decoder (reduce-overhead adds CUDA "
        "graphs); batches are padded to power-of-two buckets so each size compiles once",
    )
    channels_last: bool = Field(False, description="text-to-image: UNet and VAE in channels-last memory format")

    @model_validator(mode="after")
    def _backend_settings(self) -> BuildParams:
        if self.backend == "torch" and self.endpoint is not None:
            raise ValueError("endpoint: the endpoint backend's settings; this entry's backend is torch")
        if self.backend == "endpoint":
            torch_set = sorted(set(TORCH_ONLY) & self.model_fields_set)
            if torch_set:
                raise ValueError(f"{torch_set[0]}: a torch backend setting; the endpoint backend takes build.endpoint")
            self.endpoint = self.endpoint or EndpointParams()
            self._check_launch()
        return self

    def _check_launch(self) -> None:
        """A server this machine cannot start is refused now, not at the build stage."""
        from .backends import servers

        ep = self.endpoint
        server = servers.get(ep.server)
        if self.kv_cache == "fp8" and not server.fp8_kv:
            raise ValueError(f"kv_cache: {server.what} has no FP8 KV cache; use auto")
        if ep.url:
            return
        argv = ep.launch or server.launch(ep, self)
        why = server.missing(argv)
        if why:
            raise ValueError(
                f"endpoint: {why}, so this machine cannot start {server.what}; run it where it is installed, or "
                "give build.endpoint.url of a running server"
            )


class OfflineParams(Strict):
    expected_qps: float = Field(10.0, gt=0, description="offline_expected_qps: sizes the single Offline query")
    min_query_count: int = Field(64, ge=1, description="min_query_count (smoke rounds only)")
    min_duration_ms: int = Field(0, ge=0, description="min_duration in ms (smoke rounds only; MLPerf: 600000)")


class SingleStreamParams(Strict):
    expected_latency_ms: float = Field(
        100.0, gt=0, description="single_stream_expected_latency: sizes the run (one query in flight)"
    )
    min_query_count: int = Field(64, ge=1, description="min_query_count (smoke rounds only; MLPerf: 1024)")
    min_duration_ms: int = Field(0, ge=0, description="min_duration in ms (smoke rounds only; MLPerf: 600000)")


class ServerParams(Strict):
    target_qps: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="server_target_qps, the Poisson arrival rate; auto: auto_fraction of this entry's Offline "
        "samples/s, measured by the same performance stage just before (MLCommons' find-performance)",
    )
    auto_fraction: float = Field(
        0.7, gt=0, le=1, description="target_qps auto: the share of the Offline throughput offered"
    )
    target_latency_ms: int | None = Field(
        None, ge=1, description="p99 latency bound (GPT-J: 20000 ms; unset: MLPerf's)"
    )
    ttft_latency_ms: int | None = Field(
        None, ge=1, description="p99 time-to-first-token bound (Llama 2 70B: 2000 ms; unset: MLPerf's)"
    )
    tpot_latency_ms: int | None = Field(
        None, ge=1, description="p99 time-per-output-token bound (Llama 2 70B: 200 ms; unset: MLPerf's)"
    )
    min_query_count: int = Field(
        460, ge=1, description="min_query_count (smoke rounds only; early stopping needs ~460)"
    )
    min_duration_ms: int = Field(0, ge=0, description="min_duration in ms (smoke rounds only; MLPerf: 600000)")

    @field_validator("target_qps", mode="before")
    @classmethod
    def _qps(cls, value: object) -> object:
        if isinstance(value, str) and value != "auto":
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected queries per second or 'auto', not {value!r}") from None
        return value

    @model_validator(mode="after")
    def _auto(self) -> ServerParams:
        if "auto_fraction" in self.model_fields_set and self.target_qps != "auto":
            raise ValueError(f"auto_fraction: applies to target_qps auto only; target_qps is {self.target_qps:g}")
        return self


class LoadGenParams(Strict):
    """Performance-run knobs only: accuracy runs do not read them, so changing one re-runs performance alone."""

    SingleStream: SingleStreamParams = Field(
        default_factory=SingleStreamParams, description="SingleStream settings (edge)"
    )
    Offline: OfflineParams = Field(default_factory=OfflineParams, description="Offline settings")
    Server: ServerParams = Field(default_factory=ServerParams, description="Server settings")
    Interactive: ServerParams = Field(
        default_factory=ServerParams,
        description="Interactive settings: a Server run held "
        "to the interactive TTFT/TPOT bounds (v5.1+: a scenario; v5.0: the -interactive id)",
    )


class EntryParams(Strict):
    benchmark: str = Field(
        ...,
        description="which benchmark (model and dataset) this entry submits: a key of "
        "mlperf_round.benchmarks (gptj, llama2-70b, llama3_1-8b, stable-diffusion-xl)",
    )
    division: Literal["closed", "open"] = Field("closed", description="closed: the accuracy target gates packaging")
    accuracy_target: Literal[0.99, 0.999, "range"] = Field(
        0.99,
        description="fraction of the reference score to reach (99 or 99.9); range: within MLPerf's range around it "
        "(text-to-image)",
    )
    recipe: RecipeParams = Field(default_factory=RecipeParams, description="optimization recipe")
    build: BuildParams = Field(default_factory=BuildParams, description="engine build")
    scenarios: list[Scenario] = Field(["Offline", "Server"], description="LoadGen scenarios to measure")
    system: str = Field(
        "",
        description="the system this entry is built, measured and submitted on: a key of round.systems "
        "(empty: round.system)",
    )
    loadgen: LoadGenParams = Field(
        default_factory=LoadGenParams, description="LoadGen settings of the performance runs"
    )

    @model_validator(mode="after")
    def _scenarios(self) -> EntryParams:
        bench = _registry().get(self.benchmark)
        if bench is None:
            raise ValueError(
                f"benchmark: {self.benchmark!r} is not a benchmark (known: {', '.join(sorted(_registry()))})"
            )
        image = bench.kind.NAME == "text-to-image"
        if not self.scenarios:
            raise ValueError("scenarios: at least one scenario is needed")
        for scenario in SERVER_LIKE:
            if (
                scenario in self.scenarios
                and getattr(self.loadgen, scenario).target_qps == "auto"
                and "Offline" not in self.scenarios
            ):
                raise ValueError(
                    f"loadgen.{scenario}.target_qps: auto is a fraction of this entry's Offline throughput; "
                    "add Offline to scenarios or give a number"
                )
        if len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError("scenarios: a scenario is listed twice")
        if self.accuracy_target not in bench.targets_allowed:
            want = " or ".join(str(t) for t in bench.targets_allowed)
            raise ValueError(f"accuracy_target: {self.benchmark}'s target is {want}, not {self.accuracy_target}")
        if self.recipe.sparsity != "none" and self.division == "closed":
            raise ValueError(
                "recipe.sparsity: sparsity changes the weights, which the closed division forbids (set division: open)"
            )
        if self.recipe.precision not in bench.precisions:
            raise ValueError(
                f"recipe.precision: {self.recipe.precision} is not a recipe of {self.benchmark} "
                f"(have: {', '.join(bench.precisions)})"
            )
        if self.recipe.prune.active:
            if not bench.prunable:
                raise ValueError(f"recipe.prune: pruning supports gptj, not {self.benchmark}")
            if self.division == "closed":
                raise ValueError(
                    "recipe.prune: removing layers and heads changes the model, which the closed division forbids "
                    "(set division: open)"
                )
        if self.recipe.distill.steps and not self.recipe.prune.active:
            raise ValueError(
                "recipe.distill: distillation recovers a pruned model; set recipe.prune too (or distill.steps: 0)"
            )
        if self.recipe.export_hf:
            if self.recipe.precision not in ("fp8", "int8_sq") or image:
                raise ValueError(
                    f"recipe.export_hf: the export is of a quantized LLM (fp8, int8_sq), not {self.benchmark} "
                    f"at {self.recipe.precision}"
                )
        elif (
            self.recipe.sparsity != "none" and self.recipe.prune.active and self.recipe.precision in ("fp8", "int8_sq")
        ):
            raise ValueError(
                "recipe.sparsity: a pruned, quantized model's 2:4 checkpoint is compressed from the export; "
                "set recipe.export_hf: true"
            )
        if self.recipe.deepcache.interval > 1:
            if not image:
                raise ValueError(f"recipe.deepcache: DeepCache caches UNet features; {self.benchmark} has no UNet")
            if self.division == "closed":
                raise ValueError(
                    "recipe.deepcache: skipping UNet blocks changes the computation, which the closed division "
                    "forbids (set division: open)"
                )
        if self.build.backend == "endpoint":
            if image:
                raise ValueError(f"build.backend: endpoint serves text generation, not {self.benchmark}")
            quantized = self.recipe.precision in ("fp8", "int8_sq")
            if self.build.endpoint.model == "export" and quantized and not self.recipe.export_hf:
                raise ValueError(
                    "build.endpoint.model: export serves Model Optimizer's unified checkpoint of a quantized "
                    "model; set recipe.export_hf: true"
                )
        if not image:
            for knob, off in (("compile", "off"), ("channels_last", False)):
                if getattr(self.build, knob) != off:
                    raise ValueError(
                        f"build.{knob}: a text-to-image setting; the {self.benchmark} engine does not take it"
                    )
        return self

    @property
    def bench(self):
        """The benchmark object (mlperf_round.benchmarks)."""
        return _registry()[self.benchmark]

    @property
    def mlperf_id(self) -> str:
        """The submission id: gptj-99, llama2-70b-99.9, llama3.1-8b, stable-diffusion-xl."""
        return self.bench.mlperf_id(self.accuracy_target)


class RoundParams(Strict):
    round: RoundSection = Field(default_factory=RoundSection, description="the submission round")
    benchmarks: dict[str, SerializeAsAny[BenchmarkParams]] = Field(
        ..., description="models and datasets, keyed by benchmark"
    )
    entries: dict[str, EntryParams] = Field(..., description="submission entries, keyed by a name used in stage names")

    @model_validator(mode="after")
    def _consistent(self) -> RoundParams:
        version = self.round.version
        version_ids = VERSIONS[version].ids
        for name in self.benchmarks:
            if not _registry()[name].all_ids() & version_ids:
                raise ValueError(f"benchmarks.{name}: {name} is not a benchmark of MLPerf Inference {version}")
        seen_ids: dict[tuple[str, str], str] = {}
        for key, entry in self.entries.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", key):  # DVC splits params paths at dots
                raise ValueError(f"entries.{key}: entry names are lower-case letters, digits, '_' or '-' (no '.')")
            if entry.benchmark not in self.benchmarks:
                raise ValueError(f"entries.{key}.benchmark: {entry.benchmark!r} has no section under benchmarks")
            if entry.mlperf_id not in version_ids:
                raise ValueError(f"entries.{key}: {entry.mlperf_id} is not a benchmark of MLPerf Inference {version}")
            if "Interactive" in entry.scenarios and not entry.bench.has_interactive(version):
                raise ValueError(
                    f"entries.{key}.scenarios: {entry.mlperf_id} has no Interactive scenario in MLPerf "
                    f"Inference {version}"
                )
            if entry.system and entry.system not in self.round.all_systems:
                raise ValueError(
                    f"entries.{key}.system: {entry.system!r} is not a system of the round "
                    f"(have: {', '.join(self.round.all_systems)}; add it under round.systems)"
                )
            self._check_scenarios(key, entry)
            if not isinstance(self.benchmarks[entry.benchmark], entry.bench.schema):
                raise ValueError(f"benchmarks.{entry.benchmark}: not validated as {entry.benchmark}")
            self._check_bounds(key, entry)
            gen = getattr(self.benchmarks[entry.benchmark], "generation", None)
            if entry.build.backend == "endpoint" and gen is not None and gen.num_beams > 1:
                raise ValueError(
                    f"entries.{key}.build.backend: the endpoint client decodes greedily, and "
                    f"benchmarks.{entry.benchmark}.generation.num_beams is {gen.num_beams}"
                )
            for mlperf_id in sorted({p.mlperf_id for p in self.placements(entry)}):
                slot = (entry.division, self.system_of(entry).name, mlperf_id)
                if slot in seen_ids:
                    raise ValueError(
                        f"entries.{key}: {entry.division} {mlperf_id} on {slot[1]} is already submitted by "
                        f"entries.{seen_ids[slot]}"
                    )
                seen_ids[slot] = key
        return self

    def system_of(self, entry: EntryParams) -> SystemParams:
        """The system the entry runs on and is submitted under."""
        return self.round.all_systems[entry.system or self.round.system.name]

    def placements(self, entry: EntryParams) -> list:
        """Where each of the entry's scenarios lands in this round's submission tree (`Benchmark.placements`)."""
        return entry.bench.placements(self.round.version, entry.accuracy_target, entry.scenarios)

    def _check_scenarios(self, key: str, entry: EntryParams) -> None:
        """A closed result needs the scenarios its version and system type require (open ones may omit some)."""
        version, system_type = self.round.version, self.system_of(entry).system_type
        folders: dict[str, set[str]] = {}
        for p in self.placements(entry):
            folders.setdefault(p.mlperf_id, set()).add(p.folder)
        for mlperf_id, have in folders.items():
            need = scenarios_for(version, system_type, mlperf_id)
            if need is None:
                raise ValueError(
                    f"entries.{key}: {mlperf_id} is not a {system_type} benchmark of MLPerf Inference "
                    f"{version} (it is one for: {', '.join(where_available(version, mlperf_id))}; "
                    f"set {'round.systems.' + entry.system if entry.system else 'round.system'}.system_type)"
                )
            missing = need.missing(have)
            if entry.division == "closed" and missing:
                raise ValueError(
                    f"entries.{key}.scenarios: {version} {system_type} needs {', '.join(missing)} for "
                    f"{mlperf_id} (have: {', '.join(sorted(have))})"
                )

    def _check_bounds(self, key: str, entry: EntryParams) -> None:
        """Latency bounds: the ones mlperf.conf sets for the benchmark; MLPerf's values unless the round is a smoke
        round."""
        for scenario in SERVER_LIKE:
            server = getattr(entry.loadgen, scenario)
            given = {
                n: getattr(server, n)
                for n in ("target_latency_ms", "ttft_latency_ms", "tpot_latency_ms")
                if getattr(server, n) is not None
            }
            if not given:
                continue
            if not entry.bench.known_to_loadgen(scenario):
                check_loadgen(self.round.version)  # the pip command for the LoadGen whose mlperf.conf knows it
                raise ValueError(
                    f"entries.{key}.loadgen.{scenario}: the installed LoadGen's mlperf.conf does not know "
                    f"{entry.bench.loadgen_name(scenario)}"
                )
            bounds = entry.bench.latency_bounds(scenario)
            for name, value in given.items():
                if name not in bounds:
                    raise ValueError(
                        f"entries.{key}.loadgen.{scenario}.{name}: {entry.benchmark} is bounded by "
                        f"{' and '.join(bounds)}, not {name}"
                    )
                if not self.round.smoke and value != bounds[name]:
                    raise ValueError(
                        f"entries.{key}.loadgen.{scenario}.{name}: MLPerf fixes it at {bounds[name]} for "
                        f"{entry.bench.loadgen_name(scenario)}; only a smoke round may change it"
                    )


def _typed_benchmarks(data: dict, source: str) -> dict:
    """Validate each benchmark section with its own schema (its own model config and defaults)."""
    raw = data.get("benchmarks")
    if not isinstance(raw, dict):
        return data
    typed = {}
    for name, section in raw.items():
        bench = _registry().get(name)
        if bench is None:
            raise ParamsError(
                f"{source}: benchmarks.{name}: unknown benchmark (known: {', '.join(sorted(_registry()))})"
            )
        schema = bench.schema
        try:
            typed[name] = schema.model_validate(section if section is not None else {})
        except ValidationError as err:
            raise ParamsError(_format_error(err, source, f"benchmarks.{name}")) from None
    return {**data, "benchmarks": typed}


_UNION_TAGS = (
    "function-after",
    "function-before",
    "constrained-",
    "literal[",
)  # pydantic's names for validators and union members


def _format_error(err: ValidationError, source: str, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(([prefix] if prefix else []) + [str(p) for p in first["loc"] if not str(p).startswith(_UNION_TAGS)])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    sub = re.match(r"([A-Za-z_][\w./-]*): (.*)", msg)
    if loc and sub:  # a section's validator names the key inside it
        loc, msg = f"{loc}.{sub.group(1)}", sub.group(2)
    where = f"{source}: {loc}: " if loc else f"{source}: "
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}{msg}{extra}"


_LINE_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def _one_line(message: str) -> str:
    """A key or value with a line break in it (YAML allows one) must not break the one-line error."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], message)


def parse_params(data: object, source: str = PARAMS_FILE) -> RoundParams:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: the top level must be a mapping with round, benchmarks and entries")
    try:
        data = _typed_benchmarks(data, source)
        try:
            return RoundParams.model_validate(data)
        except ValidationError as err:
            raise ParamsError(_format_error(err, source)) from None
    except ParamsError as err:
        raise ParamsError(_one_line(str(err))) from None


def load_params(path: str | Path = PARAMS_FILE) -> RoundParams:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found") from None
    return parse_params(read_yaml(text, path), str(path))


def read_yaml(text: str, path: Path) -> object:
    """YAML 1.2, as DVC reads params.yaml and writes it back (`dvc exp run -S`): there `2:4` is a string and
    `1e-3` a float, where a YAML 1.1 reader (PyYAML) sees the integer 124 and a string."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except (YAMLError, MarkedYAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def check_loadgen(version: str) -> None:
    """Refuse a round whose RNG seeds the installed LoadGen does not carry."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        have = installed("mlcommons-loadgen")
    except PackageNotFoundError:
        raise ParamsError("round.version: mlcommons-loadgen is not installed") from None
    low, high = VERSIONS[version].loadgen
    if not _version_tuple(low) <= _version_tuple(have) <= _version_tuple(high):
        raise ParamsError(
            f"round.version: {version} needs mlcommons-loadgen {low}..{high} for its RNG seeds, "
            f"{have} is installed (pip install mlcommons-loadgen=={high}; or run the round with "
            f"`mlperf-round repro --round FILE`, which installs it beside this one)"
        )
