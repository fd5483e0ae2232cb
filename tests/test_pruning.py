"""GPT-J pruned and distilled, on the tiny model: smaller, same class, and distillation recovers ROUGE."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mlperf_round.benchmarks import gptj
from mlperf_round.benchmarks.gptj import GPTJBenchmark
from mlperf_round.errors import ParamsError
from mlperf_round.optimization import distillation, pruning
from mlperf_round.optimization.generation_eval import greedy_rouge


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("gptj")
    bp = GPTJBenchmark()
    gptj.build_tokenizer(src / "tokenizer")
    gptj.build_tiny_model(bp.model.tiny, gptj.load_tokenizer(src / "tokenizer"), src / "model")
    gptj.write_generated_dataset(bp, src)
    return src


def test_distillation_recovers_rouge_of_the_pruned_model(tiny: Path, tmp_path: Path):
    tok = gptj.load_tokenizer(tiny / "tokenizer")
    model = gptj.load_model(tiny / "model")
    samples = gptj.load_samples(tiny / "dataset.json")[:16]
    probe = lambda m: greedy_rouge(m, tok, samples, 64, 30, tok.eos_token_id)  # noqa: E731
    original = probe(model)

    batches = gptj.calibration_batches(tiny, GPTJBenchmark())
    pruned, report = pruning.prune(copy.deepcopy(model), heads_kept=2, layers_kept=1, batches=batches)
    assert report["layers_kept"] == [int(max(range(2), key=lambda i: report["layer_importance"][i]))]
    assert len(report["heads_kept"][str(report["layers_kept"][0])]) == 2
    before_kd = probe(pruned)

    sequences = distillation.packed_sequences(tok, gptj.distillation_texts(tiny), 128)
    distilled, curve = distillation.distill(
        pruned, model, sequences, steps=300, lr=2e-3, temperature=2.0, batch_size=8, seed=0
    )
    after_kd = probe(distilled)
    assert curve[-1]["kd_loss"] < curve[0]["kd_loss"] / 2
    assert report["parameters_after"] < 0.7 * report["parameters_before"]
    assert before_kd["rouge1"] < original["rouge1"]
    assert after_kd["rouge1"] > before_kd["rouge1"] + 2, (original, before_kd, after_kd)

    distilled.save_pretrained(tmp_path / "pruned", safe_serialization=True)  # a dense checkpoint of the same class
    reloaded = gptj.load_model(tmp_path / "pruned")
    assert type(reloaded).__name__ == "GPTJForCausalLM" and reloaded.config.n_layer == 1
    assert probe(reloaded)["rouge1"] == after_kd["rouge1"]
    print(f"\nparameters / ROUGE-1 / tokens/s: original {original}, pruned {before_kd}, distilled {after_kd}")


def test_prune_refuses_more_than_the_model_has(tiny: Path):
    model = gptj.load_model(tiny / "model")
    with pytest.raises(ParamsError, match=r"recipe.prune.heads_kept: 9 is not between 1 and the model's 4 heads"):
        pruning.prune(model, heads_kept=9, layers_kept=1, batches=[])
