"""The torch backend: this project's own engines, run in the harness's process (in-flight batching over a paged
KV cache for the LLMs, the diffusers pipeline for text-to-image). Nothing to start: `serve` does nothing."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


def open_text(engine_dir: Path, runtime: dict | None = None):
    from .torch_llm import TorchLLM

    return TorchLLM(engine_dir)


def open_image(engine_dir: Path, runtime: dict | None = None):
    from .torch_sdxl import TorchSDXL

    return TorchSDXL(engine_dir)


@contextlib.contextmanager
def serve(engine_dir: Path, log_dir: Path):
    yield {}


def describe(e: dict) -> list[str]:
    """The engine as a result's README states it."""
    shape = (
        f"{e['steps']} denoising steps, guidance {e['guidance_scale']}, {e['image_size']} px"
        if "steps" in e
        else f"beam width {e['beam_width']}"
    )
    lines = [
        f"- backend: torch, precision {e['precision']}, dtype {e['dtype']}, max batch {e['max_batch_size']}, {shape}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(e['versions'].items()))}",
    ]
    if e.get("scheduler") == "inflight":
        lines.append(
            f"- in-flight batching, paged KV cache: {e['kv_pool_blocks']} blocks of {e['kv_block_size']} "
            f"tokens, stored as {'fp8 (e4m3)' if e.get('kv_cache') == 'fp8' else e['dtype']}"
        )
    if e.get("deepcache_interval"):
        lines.append(
            f"- DeepCache: full UNet step every {e['deepcache_interval']} steps, branch {e['deepcache_branch']}"
        )
    return lines


def build_text(ctx, bench) -> dict:
    """The engine directory, loaded once (an fp8 KV cache's scales are measured on the engine's own model) and
    checked by one generation."""
    from .. import engines
    from ..benchmarks.text import sample_ids
    from .torch_llm import TorchLLM, generate_all

    entry = ctx.entry
    source = ctx.input("download", ctx.benchmark_name)
    kv_calibration = None
    if entry.build.kv_cache == "fp8":  # K/V scales from the calibration list, as the weights' were
        tok, limit = bench.load_tokenizer(bench.tokenizer_dir(source)), ctx.benchmark.generation.max_input_tokens
        kv_calibration = [sample_ids(s, tok, limit).tolist() for s in bench.load_samples(source / "calibration.json")]
    spec = engines.build_engine(
        ctx.benchmark_name,
        entry.recipe.precision,
        entry.build,
        ctx.benchmark.generation,
        ctx.input("quantize") / "model",
        bench.tokenizer_dir(source),
        ctx.out,
        f"entries.{ctx.key}.build",
        kv_calibration,
    )
    start = time.perf_counter()
    engine = TorchLLM(ctx.out, kv_calibration)
    loaded = time.perf_counter()
    engines.record_kernels(ctx, spec, engine)
    first = bench.load_samples(source / "dataset.json")[0]
    tokens = generate_all(engine.scheduler(), [engine.sample_ids(first)])[0]
    done = time.perf_counter()
    return {
        "engine_bytes": sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file()),
        "load_s": loaded - start,
        "check_generate_s": done - loaded,
        "check_output_tokens": int(tokens.size),
        "scheduler": spec.scheduler,
        "kv_pool_blocks": spec.kv_pool_blocks,
        "kv_block_size": spec.kv_block_size,
        "kv_cache": spec.kv_cache,
        "kernels": spec.kernels,
        **engine.kernels,
    }


def build_image(ctx, bench) -> dict:
    """The pipeline with the entry's UNet; one check batch measures latency and UNet work per image."""
    from .. import engines
    from ..diffusion.pipeline import LATENTS_FILE
    from .torch_sdxl import TorchSDXL

    entry = ctx.entry
    source = ctx.input("download", ctx.benchmark_name)
    spec = engines.build_image_engine(
        ctx.benchmark_name,
        entry.recipe.precision,
        entry.build,
        ctx.benchmark.generation,
        entry.recipe.deepcache,
        source,
        ctx.input("quantize") / "model",
        source / LATENTS_FILE,
        ctx.out,
        f"entries.{ctx.key}.build",
    )
    start = time.perf_counter()
    engine = TorchSDXL(ctx.out)
    loaded = time.perf_counter()
    engines.record_kernels(ctx, spec, engine)
    captions = [s.caption for s in bench.load_samples(source / "dataset.json")[: spec.max_batch_size]]
    engine.warmup()
    check = time.perf_counter()
    engine.generate(captions)
    done = time.perf_counter()
    return {
        "engine_bytes": sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file()),
        "load_s": loaded - start,
        "check_images": len(captions),
        "check_s_per_image": (done - check) / len(captions),
        "unet_full_steps_per_image": engine.unet_calls["full"] / len(captions),
        "unet_shallow_steps_per_image": engine.unet_calls["shallow"] / len(captions),
        "deepcache_interval": spec.deepcache_interval,
        "kernels": spec.kernels,
        **engine.kernels,
        "compile": spec.compile,
        "compiled_modules": engine.compiled["compiled_modules"],
        "channels_last": spec.channels_last,
    }
