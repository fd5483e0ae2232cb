"""Per-image latency, UNet work, FID and CLIP of the SDXL recipes, in one run on the same captions.

    python perf/sdxl_recipes.py [--artifacts artifacts] [--repeats 5] [--batch 8]

Runs the round's built engines: the closed entry's INT8 SmoothQuant UNet, the open entry's
fp16 UNet with DeepCache, and that same fp16 engine with DeepCache switched off (the
baseline). Recipes alternate within each repeat; medians are reported, with each recipe's
speed as a ratio to fp16. INT8 is fake-quantized on the CPU (modelopt simulates INT8 in
float), so its CPU latency says nothing of an INT8 engine's on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from mlperf_round.backends.torch_sdxl import TorchSDXL
from mlperf_round.benchmarks import sdxl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--closed", default="stable-diffusion-xl")
    ap.add_argument("--open", default="stable-diffusion-xl-deepcache")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    source = args.artifacts / sdxl.NAME / "download" / "source"
    samples = sdxl.load_samples(source / "dataset.json")
    captions = [s.caption for s in samples]
    int8 = TorchSDXL(args.artifacts / args.closed / "build" / "engine")
    deepcache = TorchSDXL(args.artifacts / args.open / "build" / "engine")
    if deepcache.deepcache is None:
        raise SystemExit(f"{args.open}: built without DeepCache")
    recipes = {"fp16": (deepcache, False), "int8_sq": (int8, False), "fp16+deepcache": (deepcache, True)}

    def use(engine, cached):
        cache = engine.deepcache
        if cache is not None and cached != cache.active:
            cache.enable() if cached else cache.disable()
        return engine

    times: dict[str, list[float]] = {k: [] for k in recipes}
    for name, (engine, cached) in recipes.items():  # warm-up
        use(engine, cached).generate(captions[: args.batch])
    for _ in range(args.repeats):
        for name, (engine, cached) in recipes.items():
            e = use(engine, cached)
            start = time.perf_counter()
            e.generate(captions[: args.batch])
            times[name].append((time.perf_counter() - start) / args.batch)
    report = {}
    for name, (engine, cached) in recipes.items():
        e = use(engine, cached)
        e.unet_calls, e.images = {"full": 0, "shallow": 0}, 0
        images = np.concatenate([e.generate(captions[i : i + args.batch]) for i in range(0, len(captions), args.batch)])
        scores = sdxl.evaluate({i: img.reshape(-1) for i, img in enumerate(images)}, samples, e_dir(args, name), source)
        report[name] = {
            "s_per_image": statistics.median(times[name]),
            "unet_full_steps_per_image": e.unet_calls["full"] / e.images,
            "unet_shallow_steps_per_image": e.unet_calls["shallow"] / e.images,
            **scores,
        }
    base = report["fp16"]["s_per_image"]
    for name in report:
        report[name]["speedup_vs_fp16"] = base / report[name]["s_per_image"]
    layers = json.loads((args.artifacts / args.closed / "quantize" / "checkpoint" / "layers.json").read_text())
    report["int8_sq"]["quantized_layers"] = len(layers["quantized_layers"])
    report["int8_sq"]["skipped_layers"] = len(layers["skipped_layers"])
    print(json.dumps(report, indent=1))


def e_dir(args, name: str) -> Path:
    entry = args.closed if name == "int8_sq" else args.open
    return args.artifacts / entry / "build" / "engine"


if __name__ == "__main__":
    main()
