"""reference: the score accuracy targets are fractions of.

MLPerf publishes the full-size model's scores; a tiny model's are measured here, from the
unoptimized model, through the same engine, harness and scoring as every entry.
"""

import json
import sys
import tempfile
from pathlib import Path

from mlperf_round import benchmarks, checkpoints, engines, evaluation
from mlperf_round.harness.settings import accuracy_conf
from mlperf_round.params import BuildParams, DeepCacheParams
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bp, bench = ctx.benchmark, benchmarks.get(ctx.key)
    source = ctx.input("download")
    n = len(bench.load_samples(source / "dataset.json"))
    if bp.reference.source == "published":
        scores = dict(bp.reference.scores or bench.PUBLISHED_SCORES)
        scale = n / bench.PUBLISHED_SAMPLES
    else:
        conf = ctx.out / "user.conf"
        conf.write_text(accuracy_conf(bench.LOADGEN_MODEL, n))
        model_dir = checkpoints.resolve(source)
        with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
            engine = Path(tmp) / "engine"
            if benchmarks.is_image(bench):
                from mlperf_round.diffusion.pipeline import LATENTS_FILE

                engines.build_image_engine(ctx.key, "fp32", BuildParams(), bp.generation, DeepCacheParams(),
                                           source, model_dir / "unet", source / LATENTS_FILE, engine)
            else:
                dtype = checkpoints.stored_dtype(model_dir)  # the checkpoint as shipped: bf16 for the real LLMs
                precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]
                engines.build_engine(ctx.key, precision, BuildParams(dtype=dtype), bp.generation, model_dir,
                                     bench.tokenizer_dir(source), engine)
            scores = evaluation.run_accuracy(engine, ctx.key, source / "dataset.json", conf, "Offline",
                                             ctx.out / "Offline", ctx.params.round.test_timeout_s)
        scale = 1.0
    result = {"source": bp.reference.source, "samples": n, "scores": scores, "gen_len_scale": scale}
    (ctx.out / "reference.json").write_text(json.dumps(result, indent=1))
    ctx.tracker.log_artifact(ctx.out / "reference.json")
    return {"samples": n, **{k: float(v) for k, v in scores.items()}}


if __name__ == "__main__":
    sys.exit(run_stage("reference", "benchmark", body))
