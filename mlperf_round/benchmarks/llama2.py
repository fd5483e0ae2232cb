"""Llama 2 70B chat on OpenOrca: everything the stages need to know about this benchmark.

The smoke round builds a tiny LlamaForCausalLM with grouped-query attention (fewer KV heads
than query heads, as in the 70B model) from a config with a fixed seed, a word-level
tokenizer with the Llama 2 chat markers, and a deterministic dataset in the shape of
MLPerf's preprocessed OpenOrca set (system prompt, question, Llama 2 chat prompt, its token
ids, reference answer). The real path reads the same files from a pinned revision and
MLCommons' dataset (as JSON records), verified by sha256.

The synthetic task is learnable and decodes greedily to answers of very different lengths:
every word has a depth, its likely successor is one level shallower, and depth-0 words end
the answer. Each question holds one keyword (a word no other question word is drawn from);
the answer starts with it, so it depends on the prompt.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from ..errors import InputError
from ..kinds import text_generation
from ..params import BenchmarkParams, GenerationParams, ModelParams, Strict
from . import text
from .base import Benchmark
from .text import load_model, load_tokenizer, tokenizer_dir  # noqa: F401  (the stages' interface)

NAME = "llama2-70b"
BOS, EOS = "<s>", "</s>"
MARKERS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
# MLPerf's OpenOrca preprocessing formats every sample with the Llama 2 chat template
PROMPT = "<s>[INST] <<SYS>>\n{system_prompt}\n<</SYS>>\n\n{question} [/INST]"
SYSTEM_PROMPTS = (
    "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
    "You are a helpful assistant, who always provide explanation. Think like you are answering to a five year old.",
    "You are an AI assistant that helps people find information.",
)
SCORE_KEYS = ("rouge1", "rouge2", "rougeL")
TOKENS_FLOOR, TOKENS_CEILING = 0.9, 1.1  # MLPerf: tokens per sample within 90%..110% of the reference
PUBLISHED_SCORES = {"rouge1": 44.4312, "rouge2": 22.0352, "rougeL": 28.6162, "tokens_per_sample": 294.45}
PUBLISHED_SAMPLES = 24576
PUNCT = [".", ",", "?", "'"]
DEPTH = 24
TRAIN_SEED_OFFSET = 2_000_003  # the training split is disjoint from the accuracy and calibration sets


# ---------------------------------------------------------------- tokenizer and data
def build_tokenizer(out: Path, cfg=None) -> None:
    words = text.template_words(" ".join(SYSTEM_PROMPTS))
    text.build_word_tokenizer(
        out, [BOS, EOS], words + text.pseudo_words(text.VOCAB_WORDS, seed=4321), EOS, BOS, PUNCT, MARKERS
    )


class _Language:
    """Words with depths 0..DEPTH; the likely successor is one level shallower (see module doc)."""

    def __init__(self, seed: int = 4321):
        rng = random.Random(seed)
        self.words = text.pseudo_words(text.VOCAB_WORDS, seed=seed)
        order = self.words[:]
        rng.shuffle(order)
        self.depth = {w: i % (DEPTH + 1) for i, w in enumerate(order)}
        self.keywords = order[::7]  # spread over every depth
        self.fillers = [w for w in order if w not in set(self.keywords)]
        shallower = {d: [w for w in order if self.depth[w] < d] for d in range(1, DEPTH + 1)}
        level = {d: [w for w in order if self.depth[w] == d] for d in range(DEPTH + 1)}
        self.next = {}
        for w in order:
            d = self.depth[w]
            if d:
                self.next[w] = [rng.choice(level[d - 1]), *rng.sample(shallower[d], 2)]

    def answer(self, start: str, rng: random.Random, variation: float) -> str:
        """The canonical chain from `start`; with `variation`, a step takes another successor."""
        weights = [1.0 - variation, variation * 2 / 3, variation / 3]
        words = [start]
        while self.depth[words[-1]]:
            words.append(rng.choices(self.next[words[-1]], weights=weights)[0])
        return " ".join(words) + "."

    def question(self, rng: random.Random) -> tuple[str, str]:
        """A question and its keyword."""
        sentences = [rng.choices(self.fillers, k=rng.randint(5, 10)) for _ in range(rng.randint(1, 3))]
        keyword = rng.choice(self.keywords)
        rng.choice(sentences).insert(rng.randint(0, 4), keyword)
        text_ = ". ".join(" ".join(s) for s in sentences) + "?"
        return text_[0].upper() + text_[1:], keyword


# Reference answers vary as people's do; the tiny model's training split holds canonical
# answers, so the model decodes confidently (as a large model does) and scores below 100.
REFERENCE_VARIATION = 0.05


def generate_dataset(size: int, seed: int, tokenizer=None, variation: float = REFERENCE_VARIATION) -> list[dict]:
    """Rows shaped like MLPerf's processed OpenOrca set (with tok_input when a tokenizer is given)."""
    rng, lang = random.Random(seed), _Language()
    rows = []
    for i in range(size):
        system_prompt, (question, keyword) = rng.choice(SYSTEM_PROMPTS), lang.question(rng)
        row = {
            "id": f"tiny.{seed}.{i}",
            "system_prompt": system_prompt,
            "question": question,
            "input": PROMPT.format(system_prompt=system_prompt, question=question),
            "output": lang.answer(keyword, rng, variation),
        }
        if tokenizer is not None:
            row["tok_input"] = tokenizer(row["input"], add_special_tokens=False)["input_ids"]
        rows.append(row)
    return rows


def write_generated_dataset(bp: BenchmarkParams, out: Path) -> None:
    tok = load_tokenizer(tokenizer_dir(out))
    ds = bp.dataset
    text.write_json(out / "dataset.json", generate_dataset(ds.size, ds.seed, tok))
    # MLPerf's calibration list is drawn from the training split: a disjoint seed here
    text.write_json(out / "calibration.json", generate_dataset(ds.calibration_size, ds.seed + 1_000_003, tok))


# ---------------------------------------------------------------- model
def build_tiny_model(cfg: TinyLlama, tokenizer, out: Path) -> None:
    model = text.tiny_llama(cfg, tokenizer)
    if cfg.train_steps:
        rows = generate_dataset(cfg.train_samples, cfg.seed + TRAIN_SEED_OFFSET, variation=0.0)
        text.train_answers(
            model,
            tokenizer,
            cfg,
            [r["input"] + " " for r in rows],
            [r["output"] + EOS for r in rows],
            "train tiny llama",
        )
    model.eval().save_pretrained(out, safe_serialization=True)


# ---------------------------------------------------------------- dataset access
@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str
    input_ids: tuple[int, ...] | None = None  # MLPerf's tok_input: served as given


def load_samples(path: Path) -> list[Sample]:
    rows = text.read_rows(path, {"input", "output"})
    return [Sample(r["input"], r["output"], text.token_ids(r, path, i)) for i, r in enumerate(rows)]


SHIPPED_COLUMNS = ("id", "system_prompt", "question", "input", "output", "tok_input")


def read_shipped(path: Path, calibration: bool = False) -> list[dict]:
    """MLCommons' processed OpenOrca as shipped: a pandas pickle (`open_orca_gpt4_tokenized_llama.sampled_24576.pkl`,
    `...calibration_1000.pkl`) read by the restricted unpickler, or rows already in the round's JSON. The prompts'
    token ids (`tok_input`) are kept: the reference SUT serves them as given."""
    import operator

    from ..safe_pickle import is_pickle, read_dataframe

    if not is_pickle(path):
        return text.read_rows(path, {"input", "output"})
    frame = read_dataframe(path)
    missing = [c for c in ("input", "tok_input", *(() if calibration else ("output",))) if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(missing)} (MLCommons' OpenOrca pickle has input, output and "
            f"tok_input; this one has {', '.join(map(str, frame.columns))})"
        )
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        row = {k: str(record[k]) for k in SHIPPED_COLUMNS if k in record and k != "tok_input"}
        try:
            ids = [operator.index(t) for t in record["tok_input"]]
        except TypeError:
            ids = []
        if not ids or min(ids) < 0:
            raise InputError(f"{path}: row {i}: tok_input is not a non-empty list of token ids")
        rows.append({**row, "output": row.get("output", ""), "tok_input": ids})
    if not rows:
        raise InputError(f"{path}: holds no samples")
    return rows


def calibration_batches(source: Path, bp: BenchmarkParams) -> list[dict]:
    """MLPerf calibrates on the prompts of its calibration list."""
    tok = load_tokenizer(tokenizer_dir(source))
    prompts = [s.prompt for s in load_samples(source / "calibration.json")]
    return text.calibration_batches(tok, prompts, bp.calibration.batch_size, bp.generation.max_input_tokens)


# ---------------------------------------------------------------- accuracy
def score(predictions: list[str], references: list[str], token_counts: list[int]) -> dict[str, float]:
    """What MLPerf's llama2-70b evaluation prints: ROUGE x100, generated length, tokens per sample."""
    from ..metrics.rouge import rouge_scores

    result = rouge_scores(predictions, references)
    result["gen_len"] = float(sum(len(p) for p in predictions))
    result["gen_num"] = float(len(predictions))
    result["gen_tok_len"] = float(sum(token_counts))
    result["tokens_per_sample"] = round(result["gen_tok_len"] / max(len(predictions), 1), 1)
    return result


def targets(reference: dict[str, float], fraction: float, size_ratio: float = 1.0) -> dict[str, float]:
    """Lower bounds: each ROUGE at `fraction` of the reference, tokens per sample at 90%."""
    out = {k: reference[k] * fraction for k in SCORE_KEYS}
    out["tokens_per_sample"] = reference["tokens_per_sample"] * TOKENS_FLOOR
    return out


def upper_limits(reference: dict[str, float], size_ratio: float = 1.0) -> dict[str, float]:
    """Upper bounds: the checker also refuses answers padded past 110% of the reference's length."""
    return {"tokens_per_sample": reference["tokens_per_sample"] * TOKENS_CEILING}


# ---------------------------------------------------------------- params schema (benchmarks.llama2-70b)
class TinyLlama(Strict):
    hidden_size: int = Field(64, ge=16, le=1024, description="hidden size of the tiny model")
    intermediate_size: int = Field(
        128, ge=16, description="MLP width (a multiple of 8 keeps 2:4 sparsity and its compressed format possible)"
    )
    num_hidden_layers: int = Field(2, ge=1, le=8, description="decoder layers")
    num_attention_heads: int = Field(4, ge=1, description="query heads")
    num_key_value_heads: int = Field(
        2, ge=1, description="key/value heads: fewer than query heads is grouped-query attention, as in Llama 2 70B"
    )
    max_position_embeddings: int = Field(2048, ge=256, description="maximum sequence length")
    init_std: float = Field(0.02, gt=0, le=2, description="weight init std")
    seed: int = Field(0, description="seed of the weights and of the training order")
    train_steps: int = Field(
        800,
        ge=0,
        le=10000,
        description="training steps on a generated split disjoint from the accuracy set (0: random weights)",
    )
    train_samples: int = Field(1024, ge=1, description="size of that training split")
    train_batch: int = Field(16, ge=1, description="training batch size")
    train_lr: float = Field(3e-3, gt=0, le=1, description="AdamW learning rate")

    @model_validator(mode="after")
    def _shape(self) -> TinyLlama:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads}"
            )
        return self


class LlamaModelParams(ModelParams):
    tiny: TinyLlama = Field(default_factory=TinyLlama, description="config of the locally built Llama")


class LlamaBenchmark(BenchmarkParams):
    model: LlamaModelParams = Field(
        default_factory=LlamaModelParams, description="where the reference model comes from"
    )
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(
            num_beams=1, max_new_tokens=1024, min_new_tokens=1, max_input_tokens=1024
        ),
        description="MLPerf's decoding rules for Llama 2 70B: greedy, up to 1,024 new tokens",
    )


BENCHMARK = Benchmark(
    key=NAME,
    ids={0.99: "llama2-70b-99", 0.999: "llama2-70b-99.9"},
    loadgen_model="llama2-70b",
    kind=text_generation,
    schema=LlamaBenchmark,
    module=sys.modules[__name__],
    score_keys=SCORE_KEYS,
    published_scores=PUBLISHED_SCORES,
    published_samples=PUBLISHED_SAMPLES,
    interactive_ids_v50={0.99: "llama2-70b-interactive-99", 0.999: "llama2-70b-interactive-99.9"},
)
