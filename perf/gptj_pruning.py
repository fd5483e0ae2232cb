"""Parameters, throughput and ROUGE of the tiny GPT-J: original, pruned, pruned and distilled (one process, one run).

    python perf/gptj_pruning.py [--layers 1] [--heads 2] [--steps 300] [--samples 32]

Builds the tiny model from params.yaml's config (seeded), prunes it with the round's code,
distills it, and probes each with greedy decoding on the accuracy set's first samples
(mlperf_round.optimization.generation_eval). Throughput is generated tokens/s, one thread.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from mlperf_round.benchmarks import gptj
    from mlperf_round.optimization import distillation, pruning
    from mlperf_round.optimization.generation_eval import greedy_rouge
    from mlperf_round.params import load_params

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bp = load_params(ROOT / "params.yaml").benchmarks["gptj"]
    src = Path(tempfile.mkdtemp(prefix="gptj-pruning-"))
    gptj.build_tokenizer(src / "tokenizer")
    tok = gptj.load_tokenizer(src / "tokenizer")
    gptj.build_tiny_model(bp.model.tiny, tok, src / "model")
    gptj.write_generated_dataset(bp, src)
    samples = gptj.load_samples(src / "dataset.json")[: args.samples]
    probe = lambda m: greedy_rouge(m, tok, samples, 64, 30, tok.eos_token_id)  # noqa: E731
    model = gptj.load_model(src / "model")
    rows = {"original": probe(model)}
    pruned, _ = pruning.prune(copy.deepcopy(model), args.heads, args.layers, gptj.calibration_batches(src, bp))
    rows["pruned"] = probe(pruned)
    seqs = distillation.packed_sequences(tok, gptj.distillation_texts(src), 128)
    distilled, _ = distillation.distill(pruned, model, seqs, args.steps, 2e-3, 2.0, 8, 0)
    rows["pruned + distilled"] = probe(distilled)
    base = rows["original"]
    print("| model | parameters | tokens/s | ROUGE-1 | ROUGE-L | params ratio | speed ratio | ROUGE-1 ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['parameters']:,.0f} | {r['tokens_per_s']:.0f} | {r['rouge1']:.2f} | {r['rougeL']:.2f} | "
            f"{r['parameters'] / base['parameters']:.3f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} | "
            f"{r['rouge1'] / base['rouge1']:.3f} |"
        )


if __name__ == "__main__":
    main()
