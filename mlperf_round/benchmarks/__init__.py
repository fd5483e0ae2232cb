"""The benchmarks, one module each, found through their `Benchmark` objects (base.py).

A new benchmark is one module that ends with `BENCHMARK = Benchmark(...)`, listed here, plus
its params.yaml section; tests/test_benchmarks.py walks this registry.
"""

from __future__ import annotations

from . import gptj, llama2, llama3_1, sdxl  # noqa: E402  (the modules import Benchmark from base)
from .base import Benchmark

REGISTRY: dict[str, Benchmark] = {m.BENCHMARK.key: m.BENCHMARK for m in (gptj, llama2, llama3_1, sdxl)}


def get(key: str) -> Benchmark:
    return REGISTRY[key]


def by_mlperf_id(mlperf_id: str) -> Benchmark:
    """The benchmark a submission id belongs to (gptj-99.9, llama3.1-8b, llama2-70b-interactive-99)."""
    for bench in REGISTRY.values():
        if mlperf_id in bench.all_ids():
            return bench
    raise KeyError(mlperf_id)
