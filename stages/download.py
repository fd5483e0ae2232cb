"""download: the reference checkpoint, tokenizer, accuracy set and calibration list, verified.

Text-to-image also needs its fixed latents and the FID and CLIP networks (sdxl.download).
"""

import sys

from mlperf_round import benchmarks, sources
from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    bench, bp, out = benchmarks.get(ctx.key), ctx.benchmark, ctx.out
    if benchmarks.is_image(bench):
        metrics = bench.download(bp, out)
        ctx.tracker.log_artifact(out / "model" / "model_index.json", "model")
        return metrics
    if bp.model.source == "tiny":
        bench.build_tokenizer(out / "tokenizer")
        bench.build_tiny_model(bp.model.tiny, bench.load_tokenizer(out / "tokenizer"), out / "model")
    else:
        hf = bp.model.hf
        for name, digest in hf.files.items():
            sources.fetch_hf(hf, name, out / "model" / name, digest)
    if bp.dataset.source == "generated":
        bench.write_generated_dataset(bp, out)
    else:
        sources.fetch(bp.dataset.url, out / "dataset.json", bp.dataset.sha256)
        if bp.dataset.calibration_url:
            sources.fetch(bp.dataset.calibration_url, out / "calibration.json", bp.dataset.calibration_sha256)
    samples = bench.load_samples(out / "dataset.json")
    calib = bench.load_samples(out / "calibration.json")
    model_bytes = sum(p.stat().st_size for p in (out / "model").rglob("*") if p.is_file())
    ctx.tracker.log_artifact(out / "model" / "config.json", "model")
    return {"dataset_samples": len(samples), "calibration_samples": len(calib), "checkpoint_bytes": model_bytes}


if __name__ == "__main__":
    sys.exit(run_stage("download", "benchmark", body))
