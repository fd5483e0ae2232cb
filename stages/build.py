"""build: the engine directory the harness serves, checked by one generation."""

import sys
import time

from mlperf_round import benchmarks, engines
from mlperf_round.backends.torch_llm import TorchLLM, generate_all, record_kernel_choice
from mlperf_round.benchmarks.text import sample_ids
from mlperf_round.runner import StageContext, run_stage


def _record_kernels(ctx: StageContext, spec, engine) -> None:
    """`kernels: auto`: the choice the engine just measured on this host goes into engine.json and MLflow."""
    record_kernel_choice(ctx.out, spec, engine.kernel_record)
    for key, value in engine.kernels.items():
        if isinstance(value, str):  # the choice per kind; the timings are metrics
            ctx.tracker.set_tag(f"mlperf.{key}", value)


def _build_image(ctx: StageContext, bench, source) -> dict:
    """The pipeline with the entry's UNet; one check batch measures latency and UNet work per image."""
    from mlperf_round.backends.torch_sdxl import TorchSDXL
    from mlperf_round.diffusion.pipeline import LATENTS_FILE

    entry = ctx.entry
    spec = engines.build_image_engine(ctx.benchmark_name, entry.recipe.precision, entry.build, ctx.benchmark.generation,
                                      entry.recipe.deepcache, source, ctx.input("quantize") / "model",
                                      source / LATENTS_FILE, ctx.out, f"entries.{ctx.key}.build")
    start = time.perf_counter()
    engine = TorchSDXL(ctx.out)
    loaded = time.perf_counter()
    _record_kernels(ctx, spec, engine)
    captions = [s.caption for s in bench.load_samples(source / "dataset.json")[: spec.max_batch_size]]
    engine.warmup()
    check = time.perf_counter()
    engine.generate(captions)
    done = time.perf_counter()
    ctx.tracker.log_artifact(ctx.out / "engine.json")
    return {"engine_bytes": sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file()), "load_s": loaded - start,
            "check_images": len(captions), "check_s_per_image": (done - check) / len(captions),
            "unet_full_steps_per_image": engine.unet_calls["full"] / len(captions),
            "unet_shallow_steps_per_image": engine.unet_calls["shallow"] / len(captions),
            "deepcache_interval": spec.deepcache_interval, "kernels": spec.kernels, **engine.kernels,
            "compile": spec.compile, "compiled_modules": engine.compiled["compiled_modules"],
            "channels_last": spec.channels_last}


def body(ctx: StageContext) -> dict:
    entry, bench = ctx.entry, benchmarks.get(ctx.benchmark_name)
    engines.check_backend(entry.build.backend, f"entries.{ctx.key}.build.backend")
    if benchmarks.is_image(bench):
        return _build_image(ctx, bench, ctx.input("download", ctx.benchmark_name))
    source = ctx.input("download", ctx.benchmark_name)
    checkpoint = ctx.input("quantize") / "model"
    kv_calibration = None
    if entry.build.kv_cache == "fp8":  # K/V scales from the calibration list, as the weights' were
        tok, limit = bench.load_tokenizer(bench.tokenizer_dir(source)), ctx.benchmark.generation.max_input_tokens
        kv_calibration = [sample_ids(s, tok, limit).tolist() for s in bench.load_samples(source / "calibration.json")]
    spec = engines.build_engine(ctx.benchmark_name, entry.recipe.precision, entry.build, ctx.benchmark.generation,
                                checkpoint, bench.tokenizer_dir(source), ctx.out, f"entries.{ctx.key}.build",
                                kv_calibration)
    start = time.perf_counter()
    engine = TorchLLM(ctx.out, kv_calibration)  # loaded once: the fp8 KV scales are measured on the engine's own model
    loaded = time.perf_counter()
    _record_kernels(ctx, spec, engine)
    first = bench.load_samples(source / "dataset.json")[0]
    tokens = generate_all(engine.scheduler(), [engine.sample_ids(first)])[0]
    done = time.perf_counter()
    ctx.tracker.log_artifact(ctx.out / "engine.json")
    return {"engine_bytes": sum(p.stat().st_size for p in ctx.out.rglob("*") if p.is_file()),
            "load_s": loaded - start, "check_generate_s": done - loaded, "check_output_tokens": int(tokens.size),
            "scheduler": spec.scheduler, "kv_pool_blocks": spec.kv_pool_blocks, "kv_block_size": spec.kv_block_size,
            "kv_cache": spec.kv_cache, "kernels": spec.kernels, **engine.kernels}


if __name__ == "__main__":
    sys.exit(run_stage("build", "entry", body))
