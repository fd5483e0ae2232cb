"""download: the reference checkpoint, tokenizer, accuracy set and calibration list, verified.

Text-to-image also needs its fixed latents and the FID and CLIP networks (sdxl.download).
"""

import sys

from mlperf_round import benchmarks, checkpoints, sources
from mlperf_round.benchmarks.text import write_json
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bench, bp, out = benchmarks.get(ctx.key), ctx.benchmark, ctx.out
    if benchmarks.is_image(bench):
        metrics = bench.download(bp, out)
        ctx.tracker.log_artifact(checkpoints.resolve(out) / "model_index.json", "model")
        return metrics
    if bp.model.source == "tiny":
        bench.build_tokenizer(out / "tokenizer")
        bench.build_tiny_model(bp.model.tiny, bench.load_tokenizer(out / "tokenizer"), out / "model")
    else:  # verified where it lies (the Hub cache, or the user's directory) and referenced, never copied
        checkpoints.publish(bp.model, out, "model", f"benchmarks.{ctx.key}.model")
    if bp.dataset.source == "generated":
        bench.write_generated_dataset(bp, out)
    else:  # MLCommons' files as shipped, verified, read by the benchmark's reader, kept in the round's rows
        ds = bp.dataset
        for url, sha, name in ((ds.url, ds.sha256, "dataset"), (ds.calibration_url, ds.calibration_sha256, "calibration")):
            shipped = sources.fetch_shipped(url, out, sha)
            write_json(out / f"{name}.json", bench.read_shipped(shipped, calibration=name == "calibration"))
            sources.drop_shipped(out)
    samples = bench.load_samples(out / "dataset.json")
    calib = bench.load_samples(out / "calibration.json")
    ctx.tracker.log_artifact(checkpoints.resolve(out, "model") / "config.json", "model")
    return {"dataset_samples": len(samples), "calibration_samples": len(calib),
            "checkpoint_bytes": checkpoints.checkpoint_bytes(out, "model")}


if __name__ == "__main__":
    sys.exit(run_stage("download", "benchmark", body))
