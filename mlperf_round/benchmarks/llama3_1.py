"""Llama 3.1 8B Instruct on CNN-DailyMail (MLPerf Inference v5.1+): this benchmark's knowledge.

MLCommons' set is `cnn_eval.json` (13,368 samples) and `cnn_dailymail_calibration.json`: JSON
lists of instruction, input (the article), tok_input and output (the highlights), where
tok_input is the instruction template below filled with the article and encoded with the
tokenizer's BOS, and served as given. Decoding is greedy, up to 128 new tokens. Scores are
ROUGE-1/2/L/Lsum at 99% of the reference and GEN_LEN (total characters) within 90% to 110%.

The smoke round builds a tiny Llama-3-shaped model: grouped-query attention (4 query heads
per KV head, as the 8B model), Llama 3's RoPE scaling and theta, a locally built tokenizer
with Llama 3's special tokens, reserved tokens filling a large vocabulary, and the 3.1
Instruct chat template. The dataset is in the exact shape of MLCommons' files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from ..errors import InputError
from ..kinds import text_generation
from ..params import BenchmarkParams, GenerationParams, ModelParams
from . import text
from .base import Benchmark
from .llama2 import TinyLlama
from .text import load_model, load_tokenizer, tokenizer_dir  # noqa: F401  (the stages' interface)

NAME = "llama3_1-8b"  # the params key and mlperf.conf's model name; MLPerf's id is llama3.1-8b (DVC splits at dots)
MLPERF_ID = "llama3.1-8b"
# MLCommons' reference (language/llama3.1-8b/download_cnndm.py, prepare-calibration.py)
TEMPLATE = (
    "Summarize the following news article in 128 tokens. Please output the summary only, without any other "
    "text.\n\nArticle:\n{input}\n\nSummary:"
)
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
HEADERS = ["<|start_header_id|>", "<|end_header_id|>", EOT]
# Llama 3.1 Instruct's template, reduced to what a system and user turn need
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
GEN_LEN_FLOOR, GEN_LEN_CEILING = 0.9, 1.1  # the checker: GEN_LEN within 90%..110% of the reference
PUBLISHED_SCORES = {"rouge1": 38.7792, "rouge2": 15.9075, "rougeL": 24.4957, "rougeLsum": 35.793, "gen_len": 8167644.0}
PUBLISHED_SAMPLES = 13368
PUNCT = [".", ",", ":"]
LANGUAGE_SEED = 8080
TRAIN_SEED_OFFSET = 2_000_003  # the training split is disjoint from the accuracy and calibration sets


# ---------------------------------------------------------------- tokenizer and data
def build_tokenizer(out: Path, cfg: TinyLlama3 | None = None) -> None:
    """Word-level, with Llama 3's special tokens; `<|reserved_special_token_N|>` fill it to the tiny model's
    vocab_size."""
    vocab_size = cfg.vocab_size if cfg is not None else 0
    words = text.template_words(TEMPLATE.format(input="")) + text.pseudo_words(text.VOCAB_WORDS, seed=LANGUAGE_SEED)
    used = 3 + len(HEADERS) + len(PUNCT) + len(words)
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(max(vocab_size - used, 0))]
    text.build_word_tokenizer(out, [BOS, EOS], words, EOT, BOS, PUNCT, HEADERS + reserved, CHAT_TEMPLATE)


def _rows(pairs: list[tuple[str, str]], tokenizer) -> list[dict]:
    rows = []
    for article, highlights in pairs:
        row = {"instruction": {"llama": TEMPLATE}, "input": article, "output": highlights}
        if tokenizer is not None:  # tokenizer.encode: BOS, then the filled template
            row["tok_input"] = [tokenizer.bos_token_id] + tokenizer(
                TEMPLATE.format(input=article), add_special_tokens=False
            )["input_ids"]
        rows.append(row)
    return rows


def generate_dataset(size: int, seed: int, tokenizer=None) -> list[dict]:
    """Rows in the shape of MLCommons' cnn_eval.json for llama3.1-8b."""
    return _rows(text.news(size, seed, LANGUAGE_SEED), tokenizer)


def write_generated_dataset(bp: BenchmarkParams, out: Path) -> None:
    tok = load_tokenizer(tokenizer_dir(out))
    ds = bp.dataset
    text.write_json(out / "dataset.json", generate_dataset(ds.size, ds.seed, tok))
    # MLPerf's calibration list is drawn from the training split: a disjoint seed here
    text.write_json(out / "calibration.json", generate_dataset(ds.calibration_size, ds.seed + 1_000_003, tok))


# ---------------------------------------------------------------- model
def build_tiny_model(cfg: TinyLlama3, tokenizer, out: Path) -> None:
    # Llama 3's RoPE: theta 500,000, and 3.1's frequency scaling (its context is 8x its pre-training's)
    rope = {
        "rope_type": "llama3",
        "rope_theta": cfg.rope_theta,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": cfg.max_position_embeddings // 8,
    }
    model = text.tiny_llama(cfg, tokenizer, rms_norm_eps=1e-5, rope_parameters=rope)
    if cfg.train_steps:
        rows = generate_dataset(cfg.train_samples, cfg.seed + TRAIN_SEED_OFFSET)
        text.train_answers(
            model,
            tokenizer,
            cfg,
            [BOS + TEMPLATE.format(input=r["input"]) for r in rows],
            [" " + r["output"] + EOT for r in rows],
            "train tiny llama3.1",
        )
    model.eval().save_pretrained(out, safe_serialization=True)


# ---------------------------------------------------------------- dataset access
@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str
    input_ids: tuple[int, ...] | None = None  # MLCommons' tok_input: served as given


def _prompt(row: dict) -> str:
    instruction = row.get("instruction")
    template = instruction.get("llama", TEMPLATE) if isinstance(instruction, dict) else (instruction or TEMPLATE)
    return template.format_map({"input": row["input"]})


def read_shipped(path: Path, calibration: bool = False) -> list[dict]:
    """MLCommons' files as shipped (`cnn_eval.json`, `cnn_dailymail_calibration.json`): kept as they are."""
    return text.read_rows(path, {"input", "tok_input", "output"})


def load_samples(path: Path) -> list[Sample]:
    rows = text.read_rows(path, {"input", "output"})
    samples = []
    for i, r in enumerate(rows):
        try:
            prompt = _prompt(r)
        except (KeyError, ValueError, AttributeError):
            raise InputError(f"{path}: sample {i}: its instruction is not a template with an {{input}} field") from None
        samples.append(Sample(prompt, r["output"], text.token_ids(r, path, i)))
    return samples


def calibration_batches(source: Path, bp: BenchmarkParams) -> list[dict]:
    """MLPerf calibrates on the prompts of its calibration list."""
    tok = load_tokenizer(tokenizer_dir(source))
    prompts = [BOS + s.prompt for s in load_samples(source / "calibration.json")]
    return text.calibration_batches(tok, prompts, bp.calibration.batch_size, bp.generation.max_input_tokens)


# ---------------------------------------------------------------- accuracy
def score(predictions: list[str], references: list[str], token_counts: list[int]) -> dict[str, float]:
    """What MLPerf's llama3.1-8b evaluation prints: ROUGE x100 (Lsum too) and the total generated length."""
    from ..metrics.rouge import rouge_scores

    result = rouge_scores(predictions, references)
    result["gen_len"] = float(sum(len(p.strip()) for p in predictions))
    result["gen_num"] = float(len(predictions))
    return result


def targets(reference: dict[str, float], fraction: float, size_ratio: float = 1.0) -> dict[str, float]:
    """Each ROUGE at `fraction` of the reference, GEN_LEN at 90% (a published total scales to the set run)."""
    out = {k: reference[k] * fraction for k in SCORE_KEYS}
    out["gen_len"] = reference["gen_len"] * size_ratio * GEN_LEN_FLOOR
    return out


def upper_limits(reference: dict[str, float], size_ratio: float = 1.0) -> dict[str, float]:
    return {"gen_len": reference["gen_len"] * size_ratio * GEN_LEN_CEILING}


# ---------------------------------------------------------------- params schema (benchmarks.llama3_1-8b)
class TinyLlama3(TinyLlama):
    num_key_value_heads: int = Field(1, ge=1, description="key/value heads: 4 query heads per KV head, as Llama 3.1 8B")
    rope_theta: float = Field(500000.0, gt=0, description="RoPE base (Llama 3: 500,000), with Llama 3's scaling")
    vocab_size: int = Field(
        4096,
        ge=512,
        le=131072,
        description="tokenizer vocabulary, reserved special tokens "
        "filling what the words leave (Llama 3: 128,256; the output layer's cost grows with it)",
    )
    train_steps: int = Field(
        600,
        ge=0,
        le=10000,
        description="training steps on a generated split disjoint from the accuracy set (0: random weights)",
    )
    train_samples: int = Field(512, ge=1, description="size of that training split")


class Llama3ModelParams(ModelParams):
    tiny: TinyLlama3 = Field(default_factory=TinyLlama3, description="config of the locally built Llama 3.1")


class Llama3Benchmark(BenchmarkParams):
    model: Llama3ModelParams = Field(
        default_factory=Llama3ModelParams, description="where the reference model comes from"
    )
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(
            num_beams=1, max_new_tokens=128, min_new_tokens=1, max_input_tokens=2048
        ),
        description="MLPerf's decoding rules for Llama 3.1 8B: greedy, up to 128 new tokens",
    )


BENCHMARK = Benchmark(
    key=NAME,
    ids={0.99: MLPERF_ID},
    loadgen_model=NAME,
    kind=text_generation,
    schema=Llama3Benchmark,
    module=sys.modules[__name__],
    score_keys=SCORE_KEYS,
    published_scores=PUBLISHED_SCORES,
    published_samples=PUBLISHED_SAMPLES,
)
