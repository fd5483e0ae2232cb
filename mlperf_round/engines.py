"""The torch backend's engine builds (LLM and text-to-image engine directories); torch_backend.py calls them."""

from __future__ import annotations

from pathlib import Path

from .backends import torch_llm
from .errors import ParamsError
from .params import BuildParams, GenerationParams


def record_kernels(ctx, spec, engine) -> None:
    """`kernels: auto`: the choice the engine just measured on this host goes into engine.json and MLflow."""
    torch_llm.record_kernel_choice(ctx.out, spec, engine.kernel_record)
    for key, value in engine.kernels.items():
        if isinstance(value, str):  # the choice per kind; the timings are metrics
            ctx.tracker.set_tag(f"mlperf.{key}", value)


def scheduler_for(build: BuildParams, gen: GenerationParams, model_dir: Path, where: str) -> str:
    """In-flight batching needs greedy decoding and a Llama-layout model; `auto` falls back to static."""
    import json

    arch = (json.loads((model_dir / "config.json").read_text()).get("architectures") or [""])[0]
    inflight_ok = gen.num_beams == 1 and arch in INFLIGHT_ARCHITECTURES
    if build.scheduler == "inflight" and not inflight_ok:
        why = f"beam search ({gen.num_beams} beams)" if gen.num_beams > 1 else f"architecture {arch or 'unknown'}"
        raise ParamsError(
            f"{where}: inflight batching supports greedy decoding on {', '.join(INFLIGHT_ARCHITECTURES)}, "
            f"not {why}; use scheduler: static or auto"
        )
    if build.scheduler == "auto":
        return "inflight" if inflight_ok else "static"
    return build.scheduler


INFLIGHT_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def build_engine(
    benchmark: str,
    precision: str,
    build: BuildParams,
    gen: GenerationParams,
    model_dir: Path,
    tokenizer_dir: Path,
    out: Path,
    where: str = "build",
    kv_calibration: list[list[int]] | None = None,
) -> torch_llm.EngineSpec:
    """The engine directory. An fp8 KV cache needs `kv_calibration` (prompt token ids): its scales are measured when
    the engine first opens, on the model as it will serve (`TorchLLM(out, kv_calibration)`), so the build loads it
    once."""
    from .backends.paged import default_pool_blocks
    from .benchmarks import get
    from .benchmarks.text import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    scheduler = scheduler_for(build, gen, model_dir, f"{where}.scheduler")
    inflight = scheduler == "inflight"
    if build.kv_cache == "fp8" and not (inflight and kv_calibration):
        raise ParamsError(f"{where}.kv_cache: fp8 needs the inflight scheduler and calibration prompts")
    pool = build.kv_pool_blocks or default_pool_blocks(
        build.max_batch_size, gen.max_input_tokens, gen.max_new_tokens, build.kv_block_size
    )
    spec = torch_llm.EngineSpec(
        backend="torch",
        benchmark=benchmark,
        precision=precision,
        dtype=build.dtype,
        max_batch_size=build.max_batch_size,
        max_input_len=gen.max_input_tokens,
        max_output_len=gen.max_new_tokens,
        min_output_len=gen.min_new_tokens,
        beam_width=gen.num_beams,
        eos_token_id=int(tok.eos_token_id),
        pad_token_id=int(tok.pad_token_id),
        report_first_token=get(benchmark).token_latencies(),  # mlperf.conf's use_token_latencies
        threads=build.threads,
        versions=torch_llm.package_versions(),
        scheduler=scheduler,
        kv_block_size=build.kv_block_size if inflight else 0,
        kv_pool_blocks=pool if inflight else 0,
        device=build.device,
        kv_cache=build.kv_cache,
        kernels=build.kernels,
        max_num_tokens=build.max_num_tokens,
    )
    torch_llm.build(model_dir, tokenizer_dir, spec, out)  # an fp8 KV cache's scales: TorchLLM(out, kv_calibration)
    return spec


def torch_compile_available() -> bool:
    import shutil

    import torch

    return torch.cuda.is_available() or any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def build_image_engine(
    benchmark: str,
    precision: str,
    build: BuildParams,
    gen,
    deepcache,
    pipeline: Path,
    unet_dir: Path,
    latents: Path,
    out: Path,
    where: str = "build",
):
    """A text-to-image engine directory: the entry's UNet, the pipeline it runs in (a pipeline directory, or the
    download stage's output that holds or references one), latents, sampling rules."""
    from .backends import torch_sdxl
    from .diffusion.pipeline import load_latents

    if build.scheduler == "inflight" or build.kv_cache != "auto":
        raise ParamsError(f"{where}: scheduler and kv_cache are LLM settings; {benchmark} batches whole images")
    if build.compile != "off" and not torch_compile_available():
        raise ParamsError(
            f"{where}.compile: torch.compile needs a C++ compiler on the CPU (none found) or a CUDA device"
        )
    side = int(load_latents(latents).shape[-1]) * 8
    spec = torch_sdxl.DiffusionSpec(
        backend="torch",
        benchmark=benchmark,
        precision=precision,
        dtype=build.dtype,
        max_batch_size=build.max_batch_size,
        steps=gen.steps,
        guidance_scale=gen.guidance_scale,
        image_size=side,
        max_input_len=gen.max_input_tokens,
        deepcache_interval=deepcache.interval if deepcache.interval > 1 else 0,
        deepcache_branch=deepcache.branch,
        threads=build.threads,
        versions=torch_sdxl.package_versions(),
        device=build.device,
        kernels=build.kernels,
        compile=build.compile,
        channels_last=build.channels_last,
        negative_prompt=gen.negative_prompt,
    )
    torch_sdxl.build(pipeline, unet_dir, latents, spec, out)
    return spec
