"""Tokens/s of one engine with in-flight batching vs static batches, on the same queries, in one run.

    python perf/inflight_vs_static.py artifacts/llama2-70b-99p9/build/engine [--repeats 3]

Both policies run the engine's own scheduler (same model, same paged KV cache, same batch
limit); only admission differs: in-flight admits a query whenever a slot is free, static
waits until the whole batch has finished. Runs alternate, and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from mlperf_round import benchmarks
from mlperf_round.backends.torch_llm import TorchLLM, generate_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", type=Path)
    ap.add_argument("--dataset", type=Path, default=None, help="default: the benchmark's dataset in artifacts/")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    engine = TorchLLM(args.engine)
    if engine.spec.scheduler != "inflight":
        raise SystemExit(f"{args.engine}: built with the {engine.spec.scheduler} scheduler; needs an in-flight engine")
    bench = benchmarks.get(engine.spec.benchmark)
    dataset = args.dataset or Path("artifacts") / engine.spec.benchmark / "download" / "source" / "dataset.json"
    prompts = [engine.sample_ids(s) for s in bench.load_samples(dataset)]
    results: dict[str, list[float]] = {"inflight": [], "static": []}
    tokens = {}
    generate_all(engine.scheduler("inflight"), prompts[:4])  # warm-up
    for _ in range(args.repeats):
        for policy in results:
            start = time.perf_counter()
            outs = generate_all(engine.scheduler(policy), prompts)
            elapsed = time.perf_counter() - start
            tokens[policy] = [o.tolist() for o in outs]
            results[policy].append(sum(len(o) for o in outs) / elapsed)
    assert tokens["inflight"] == tokens["static"], "the policies must produce identical tokens"
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        json.dumps(
            {
                "queries": len(prompts),
                "max_batch": engine.spec.max_batch_size,
                "output_tokens": sum(len(t) for t in tokens["inflight"]),
                "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
                "runs": {k: [round(x, 1) for x in v] for k, v in results.items()},
                "inflight_over_static": round(med["inflight"] / med["static"], 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
