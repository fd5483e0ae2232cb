"""One built engine with its quantized layers emulated (fake quantization) vs native (FP8 / INT8 GEMMs), in one run.

    python perf/native_kernels.py artifacts/llama2-70b-99p9/build/engine [--repeats 3] [--queries 16]
    python perf/native_kernels.py artifacts/stable-diffusion-xl/build/engine

The engine directory is copied twice with only `kernels` changed in engine.json; runs alternate,
medians are reported, and the outputs are compared (LLM: tokens must be identical; SDXL: PSNR).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mlperf_round import benchmarks
from mlperf_round.backends.torch_llm import ENGINE_FILE, generate_all
from mlperf_round.metrics.psnr import psnr


def variant(engine: Path, kernels: str, root: Path) -> Path:
    """A copy at the engine's own depth (inside `root`, a sibling folder): its source.json paths are relative."""
    out = root / kernels
    shutil.copytree(engine, out, symlinks=True)
    spec = json.loads((out / ENGINE_FILE).read_text())
    spec["kernels"] = kernels
    (out / ENGINE_FILE).write_text(json.dumps(spec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--queries", type=int, default=16)
    args = ap.parse_args()
    spec = json.loads((args.engine / ENGINE_FILE).read_text())
    bench = benchmarks.get(spec["benchmark"])
    dataset = Path("artifacts") / spec["benchmark"] / "download" / "source" / "dataset.json"
    samples = bench.load_samples(dataset)[: args.queries]
    image = bench.kind.NAME == "text-to-image"
    with tempfile.TemporaryDirectory(dir=args.engine.parent.parent) as tmp:  # tmp/<kind>: the engine's depth
        engines = {k: bench.kind.open_engine(variant(args.engine, k, Path(tmp))) for k in ("emulated", "native")}
        inputs = [engines["native"].sample_ids(s) for s in samples]
        rates: dict[str, list[float]] = {k: [] for k in engines}
        outputs = {}
        for name, eng in engines.items():  # warm-up
            eng.warmup() if image else generate_all(eng.scheduler(), inputs[:2])
        for _ in range(args.repeats):
            for name, eng in engines.items():
                start = time.perf_counter()
                outs = eng.generate(inputs) if image else generate_all(eng.scheduler(), inputs)
                elapsed = time.perf_counter() - start
                outputs[name] = outs
                rates[name].append((len(outs) if image else sum(len(o) for o in outs)) / elapsed)
    unit = "images_per_s" if image else "tokens_per_s"
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "engine": str(args.engine),
        "precision": spec["precision"],
        "queries": len(inputs),
        unit: {k: round(v, 2) for k, v in med.items()},
        "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "native_over_emulated": round(med["native"] / med["emulated"], 3),
        "kernels": engines["native"].kernels,
    }
    if image:
        result["psnr_db"] = round(psnr(outputs["emulated"], outputs["native"]), 2)
    else:
        result["identical_tokens"] = [o.tolist() for o in outputs["emulated"]] == [
            o.tolist() for o in outputs["native"]
        ]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
