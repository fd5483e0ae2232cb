"""The stage bodies of a text-generation benchmark (GPT-J, Llama 2 70B, Llama 3.1 8B).

The benchmark object supplies the knowledge (tokenizer, tiny model, readers, scoring); these
bodies are the same for every LLM, so a new LLM benchmark adds no stage code.
"""

from __future__ import annotations

from pathlib import Path

NAME = "text-generation"
RESPONSE_DTYPE = "int32"  # responses are token ids
TOKEN_COUNTS = True  # LoadGen is told each answer's token count
PRELOAD: list[str] = []  # the fork server's extra imports


def open_engine(engine_dir: Path, runtime: dict | None = None):
    from .. import backends

    return backends.of_engine(engine_dir).open_text(engine_dir, runtime)


def download(ctx, bench) -> dict:
    from .. import checkpoints, sources
    from ..benchmarks.text import write_json

    bp, out = ctx.benchmark, ctx.out
    if bp.model.source == "tiny":
        bench.build_tokenizer(out / "tokenizer", bp.model.tiny)
        bench.build_tiny_model(bp.model.tiny, bench.load_tokenizer(out / "tokenizer"), out / "model")
    else:  # verified where it lies (the Hub cache, or the user's directory) and referenced, never copied
        checkpoints.publish(bp.model, out, "model", f"benchmarks.{ctx.key}.model")
    if bp.dataset.source == "generated":
        bench.write_generated_dataset(bp, out)
    else:  # MLCommons' files as shipped, verified, read by the benchmark's reader, kept in the round's rows
        ds = bp.dataset
        for url, sha, name in (
            (ds.url, ds.sha256, "dataset"),
            (ds.calibration_url, ds.calibration_sha256, "calibration"),
        ):
            shipped = sources.fetch_shipped(url, out, sha)
            write_json(out / f"{name}.json", bench.read_shipped(shipped, calibration=name == "calibration"))
            sources.drop_shipped(out)
    samples = bench.load_samples(out / "dataset.json")
    calib = bench.load_samples(out / "calibration.json")
    ctx.tracker.log_artifact(checkpoints.resolve(out, "model") / "config.json", "model")
    return {
        "dataset_samples": len(samples),
        "calibration_samples": len(calib),
        "checkpoint_bytes": checkpoints.checkpoint_bytes(out, "model"),
    }


def calibrate(ctx, bench) -> tuple[dict, dict]:
    """Per-channel absmax of every Linear over the calibration list."""
    from .. import checkpoints
    from ..backends.torch_llm import resolve_device
    from ..optimization import calibration

    source = ctx.input("download")
    batches = bench.calibration_batches(source, ctx.benchmark)
    device = resolve_device(ctx.benchmark.calibration.device, f"benchmarks.{ctx.key}.calibration.device")
    model = bench.load_model(checkpoints.resolve(source)).to(device)
    stats = calibration.collect_absmax(model, batches)
    return stats, {
        "samples": sum(len(b["input_ids"]) for b in batches),
        "tokens": int(sum(b["attention_mask"].sum() for b in batches)),
    }


def reference_engine(ctx, bench, source: Path, engine: Path) -> None:
    """The unoptimized model as the entries' engines serve theirs, in the checkpoint's own dtype."""
    from .. import checkpoints, engines
    from ..params import BuildParams

    model_dir = checkpoints.resolve(source)
    dtype = checkpoints.stored_dtype(model_dir)  # the checkpoint as shipped: bf16 for the real LLMs
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]
    engines.build_engine(
        ctx.key,
        precision,
        BuildParams(dtype=dtype),
        ctx.benchmark.generation,
        model_dir,
        bench.tokenizer_dir(source),
        engine,
    )


def quantize(ctx, bench) -> dict:
    from ..optimization import recipe

    return recipe.apply(ctx, bench)


def build(ctx, bench) -> dict:
    """The engine directory of the entry's backend, checked by one generation."""
    from .. import backends

    return backends.get(ctx.entry.build.backend).build_text(ctx, bench)


def evaluate(bench, outputs: dict, samples: list, engine: Path, source: Path) -> dict[str, float]:
    """The answers decoded with the engine's tokenizer and scored as MLPerf's evaluation script does."""
    tok = bench.load_tokenizer(engine / "tokenizer")
    preds = [tok.decode(outputs[i].tolist(), skip_special_tokens=True) for i in range(len(samples))]
    return bench.score(preds, [s.reference for s in samples], [int(outputs[i].size) for i in range(len(samples))])
