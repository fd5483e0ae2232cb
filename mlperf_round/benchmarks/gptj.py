"""GPT-J 6B on CNN-DailyMail: everything the stages need to know about this benchmark.

The smoke round builds a tiny GPTJForCausalLM from a config with a fixed seed, a word-level
tokenizer and a deterministic dataset in the shape of MLPerf's preprocessed
``cnn_eval.json`` (instruction, input, output). The real path reads the same files from a
pinned Hugging Face revision and MLCommons' dataset, verified by sha256.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from ..kinds import text_generation
from ..params import BenchmarkParams, ModelParams, Strict
from . import text
from .base import Benchmark
from .text import load_model, load_tokenizer, tokenizer_dir  # noqa: F401  (the stages' interface)

NAME = "gptj"
# MLPerf's GPT-J reference prompt (language/gpt-j, Alpaca-style instruction template)
INSTRUCTION = "Summarize the following news article:"
PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
SCORE_KEYS = ("rouge1", "rouge2", "rougeL")
GEN_LEN_FLOOR = 0.9  # MLPerf: GEN_LEN must reach 90% of the reference
EOS = "<|endoftext|>"


# ---------------------------------------------------------------- tokenizer and data
PUNCT = [".", ",", ":", "###"]


def build_tokenizer(out: Path, cfg=None) -> None:
    words = text.template_words(PROMPT.format(instruction=INSTRUCTION, input=""))
    text.build_word_tokenizer(out, [EOS], words + text.pseudo_words(text.VOCAB_WORDS, seed=1234), EOS, EOS, PUNCT)


def generate_dataset(size: int, seed: int) -> list[dict]:
    """Articles and highlights shaped like MLPerf's cnn_eval.json; highlights are article sentences."""
    return [
        {"instruction": INSTRUCTION, "input": article, "output": highlights}
        for article, highlights in text.news(size, seed, language_seed=1234)
    ]


def write_generated_dataset(bp: BenchmarkParams, out: Path) -> None:
    ds = bp.dataset
    (out / "dataset.json").write_text(json.dumps(generate_dataset(ds.size, ds.seed), indent=1))
    # MLPerf's calibration list is drawn from the training split: a disjoint seed here
    (out / "calibration.json").write_text(
        json.dumps(generate_dataset(ds.calibration_size, ds.seed + 1_000_003), indent=1)
    )


TRAIN_SEED_OFFSET = 2_000_003  # the training split is disjoint from the accuracy and calibration sets


# ---------------------------------------------------------------- model
def build_tiny_model(cfg: TinyGPTJ, tokenizer, out: Path) -> None:
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    config = GPTJConfig(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.n_inner,
        rotary_dim=cfg.rotary_dim,
        initializer_range=cfg.init_std,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config.architectures = ["GPTJForCausalLM"]
    torch.manual_seed(cfg.seed)
    model = GPTJForCausalLM(config)
    if cfg.train_steps:
        _train(model, tokenizer, cfg)
    model.eval().save_pretrained(out, safe_serialization=True)


def _train(model, tokenizer, cfg: TinyGPTJ) -> None:
    texts = [
        PROMPT.format(instruction=r["instruction"], input=r["input"]) + " " + r["output"] + EOS
        for r in generate_dataset(cfg.train_samples, cfg.seed + TRAIN_SEED_OFFSET)
    ]
    text.train(model, tokenizer, texts, cfg.train_steps, cfg.train_batch, cfg.train_lr, cfg.seed, "train tiny gptj")


# ---------------------------------------------------------------- dataset access
@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str
    input_ids: tuple[int, ...] | None = None  # the prompt is tokenized by the engine


def read_shipped(path: Path, calibration: bool = False) -> list[dict]:
    """MLCommons' CNN-DailyMail files as shipped (`cnn_eval.json`, `cnn_dailymail_calibration.json`): JSON lists of
    instruction, input and output, which the round keeps as they are."""
    return text.read_rows(path, {"instruction", "input", "output"})


def load_samples(path: Path) -> list[Sample]:
    rows = text.read_rows(path, {"instruction", "input", "output"})
    return [Sample(PROMPT.format(instruction=r["instruction"], input=r["input"]), r["output"]) for r in rows]


# ---------------------------------------------------------------- accuracy
def score(predictions: list[str], references: list[str], token_counts: list[int]) -> dict[str, float]:
    """What MLPerf's GPT-J evaluation prints: ROUGE F-measures x100 and the total generated length."""
    from ..metrics.rouge import rouge_scores

    result = rouge_scores(predictions, references)
    result["gen_len"] = float(sum(len(p) for p in predictions))
    result["gen_num"] = float(len(predictions))
    return result


def targets(reference: dict[str, float], fraction: float, size_ratio: float = 1.0) -> dict[str, float]:
    """MLPerf's rule: each ROUGE at `fraction` of the reference, GEN_LEN at 90%.

    `size_ratio` scales a published GEN_LEN (a total over 13,368 samples) to the set actually run.
    """
    out = {k: reference[k] * fraction for k in SCORE_KEYS}
    out["gen_len"] = reference["gen_len"] * size_ratio * GEN_LEN_FLOOR
    return out


def upper_limits(reference: dict[str, float], size_ratio: float = 1.0) -> dict[str, float]:
    return {}  # GPT-J's scores have lower bounds only


PUBLISHED_SCORES = {"rouge1": 42.9865, "rouge2": 20.1235, "rougeL": 29.9881, "gen_len": 4016878.0}
PUBLISHED_SAMPLES = 13368


def distillation_texts(source: Path) -> list[str]:
    """The calibration list with its highlights, as the model reads them: training-split text, disjoint from the
    accuracy set."""
    rows = text.read_rows(source / "calibration.json", {"instruction", "input", "output"})
    return [PROMPT.format(instruction=r["instruction"], input=r["input"]) + " " + r["output"] + EOS for r in rows]


def calibration_batches(source: Path, bp: BenchmarkParams) -> list[dict]:
    """MLPerf calibrates on the prompts of its calibration list."""
    tok = load_tokenizer(tokenizer_dir(source))
    prompts = [s.prompt for s in load_samples(source / "calibration.json")]
    return text.calibration_batches(tok, prompts, bp.calibration.batch_size, bp.generation.max_input_tokens)


# ---------------------------------------------------------------- params schema (benchmarks.gptj)
class TinyGPTJ(Strict):
    n_layer: int = Field(2, ge=1, le=8, description="decoder layers of the tiny model")
    n_embd: int = Field(64, ge=16, le=512, description="hidden size")
    n_head: int = Field(4, ge=1, description="attention heads")
    n_inner: int = Field(256, ge=16, description="MLP width")
    rotary_dim: int = Field(16, ge=2, description="rotary dimensions per head")
    n_positions: int = Field(1024, ge=256, description="maximum sequence length")
    init_std: float = Field(
        0.02, gt=0, le=2, description="weight init std; larger gives peakier, more quantization-robust logits"
    )
    seed: int = Field(0, description="seed of the weights and of the training order")
    train_steps: int = Field(
        600,
        ge=0,
        le=10000,
        description="training steps on a generated split disjoint from the accuracy set (0: random weights)",
    )
    train_samples: int = Field(512, ge=1, description="size of that training split")
    train_batch: int = Field(16, ge=1, description="training batch size")
    train_lr: float = Field(3e-3, gt=0, le=1, description="AdamW learning rate")

    @model_validator(mode="after")
    def _shape(self) -> TinyGPTJ:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.rotary_dim > self.n_embd // self.n_head:
            raise ValueError(f"rotary_dim {self.rotary_dim} exceeds the head size {self.n_embd // self.n_head}")
        return self


class GPTJModelParams(ModelParams):
    tiny: TinyGPTJ = Field(default_factory=TinyGPTJ, description="config of the locally built GPT-J")


class GPTJBenchmark(BenchmarkParams):
    model: GPTJModelParams = Field(default_factory=GPTJModelParams, description="where the reference model comes from")


BENCHMARK = Benchmark(
    key=NAME,
    ids={0.99: "gptj-99", 0.999: "gptj-99.9"},
    loadgen_model="gptj",
    kind=text_generation,
    schema=GPTJBenchmark,
    module=sys.modules[__name__],
    score_keys=SCORE_KEYS,
    published_scores=PUBLISHED_SCORES,
    published_samples=PUBLISHED_SAMPLES,
    prunable=True,
)
