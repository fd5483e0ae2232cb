"""Accuracy runs: LoadGen AccuracyOnly, the log decoded and scored as MLPerf's scripts do."""

from __future__ import annotations

from pathlib import Path

from . import benchmarks
from .errors import AccuracyError, InputError
from .harness.logs import ACCURACY, read_accuracy
from .harness.run import run_test

ACCURACY_TXT = "accuracy.txt"


def format_accuracy(scores: dict[str, float]) -> str:
    """The evaluation script's printed dict, with plain numbers the checker's patterns match."""
    plain = {
        k: (int(v) if k in ("gen_len", "gen_num", "gen_tok_len") else round(float(v), 4)) for k, v in scores.items()
    }
    return repr(plain)


def run_accuracy(
    engine: Path, benchmark: str, dataset: Path, conf: Path, scenario: str, outdir: Path, timeout_s: float
) -> dict[str, float]:
    bench = benchmarks.get(benchmark)
    run_test(
        {
            "engine": str(engine),
            "benchmark": benchmark,
            "dataset": str(dataset),
            "scenario": scenario,
            "mode": "AccuracyOnly",
            "user_conf": str(conf),
            "outdir": str(outdir),
        },
        timeout_s,
    )
    outputs = read_accuracy(outdir / ACCURACY, bench.kind.RESPONSE_DTYPE)
    samples = bench.load_samples(dataset)
    missing = sorted(set(range(len(samples))) - outputs.keys())
    if missing:
        raise InputError(f"{outdir / ACCURACY}: {len(missing)} samples have no response (first: {missing[0]})")
    scores = bench.kind.evaluate(bench, outputs, samples, engine, dataset.parent)
    (outdir / ACCURACY_TXT).write_text(format_accuracy(scores) + "\n")
    return scores


def misses(scores: dict[str, float], targets: dict[str, float], limits: dict[str, float]) -> list[str]:
    """What is below its target or above its upper limit, as 'key value < bound' phrases."""
    low = [f"{k} {scores[k]:.4f} < {t:.4f}" for k, t in targets.items() if scores[k] < t]
    return low + [f"{k} {scores[k]:.4f} > {t:.4f}" for k, t in limits.items() if scores[k] > t]


def check_targets(
    scores: dict[str, float], targets: dict[str, float], what: str, limits: dict[str, float] | None = None
) -> None:
    misses_ = misses(scores, targets, limits or {})
    if misses_:
        raise AccuracyError(f"{what} missed its accuracy target: {'; '.join(misses_)}")
