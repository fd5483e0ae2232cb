"""GPT-J 6B on CNN-DailyMail: everything the stages need to know about this benchmark.

The smoke round builds a tiny GPTJForCausalLM from a config with a fixed seed, a word-level
tokenizer and a deterministic dataset in the shape of MLPerf's preprocessed
``cnn_eval.json`` (instruction, input, output). The real path reads the same files from a
pinned Hugging Face revision and MLCommons' dataset, verified by sha256.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..params import BenchmarkParams, TinyGPTJ

NAME = "gptj"
LOADGEN_MODEL = "gptj"  # the model name mlperf.conf knows
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
UNK = "<unk>"


# ---------------------------------------------------------------- tokenizer and data
def _pseudo_words(n: int, seed: int) -> list[str]:
    """Pronounceable, stemmer-stable words, the same list on every machine."""
    rng = random.Random(seed)
    onsets = "b d f g k l m n p r s t v z".split()
    vowels = "a e i o u".split()
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.choice((2, 2, 3)))))
    return sorted(words)


def _template_words() -> list[str]:
    text = PROMPT.format(instruction=INSTRUCTION, input="").lower()
    for ch in ",.:#\n":
        text = text.replace(ch, " ")
    return sorted(set(text.split()))


VOCAB_WORDS = 400
PUNCT = [".", ",", ":", "###"]


def build_tokenizer(out: Path) -> None:
    """A word-level fast tokenizer, built locally, saved in transformers' format."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = [EOS, UNK] + PUNCT + _template_words() + _pseudo_words(VOCAB_WORDS, seed=1234)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=UNK, padding_side="left"
    )
    fast.model_max_length = 2048
    fast.save_pretrained(out)


class _Language:
    """A first-order Markov chain over the pseudo-words: text with structure a tiny model can learn."""

    def __init__(self, seed: int = 1234, successors: int = 4):
        rng = random.Random(seed)
        self.words = _pseudo_words(VOCAB_WORDS, seed=seed)
        self.start_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self.words))]  # Zipf-like
        rng.shuffle(self.start_weights)
        self.next = {w: (rng.sample(self.words, successors), [1.0 / (k + 1) for k in range(successors)]) for w in self.words}

    def sentence(self, rng: random.Random) -> str:
        word = rng.choices(self.words, weights=self.start_weights)[0]
        body = [word]
        for _ in range(rng.randint(6, 13)):
            options, weights = self.next[word]
            word = rng.choices(options, weights=weights)[0]
            body.append(word)
        text = " ".join(body)
        return text[0].upper() + text[1:] + "."


def generate_dataset(size: int, seed: int) -> list[dict]:
    """Articles and highlights shaped like MLPerf's cnn_eval.json; highlights are article sentences."""
    rng, lang = random.Random(seed), _Language()
    samples = []
    for _ in range(size):
        sentences = [lang.sentence(rng) for _ in range(rng.randint(5, 9))]
        picked = sorted(rng.sample(range(len(sentences)), 3))
        highlights = "\n".join(sentences[i] for i in picked)
        samples.append({"instruction": INSTRUCTION, "input": " ".join(sentences), "output": highlights})
    return samples


def write_generated_dataset(bp: BenchmarkParams, out: Path) -> None:
    ds = bp.dataset
    (out / "dataset.json").write_text(json.dumps(generate_dataset(ds.size, ds.seed), indent=1))
    # MLPerf's calibration list is drawn from the training split: a disjoint seed here
    (out / "calibration.json").write_text(json.dumps(generate_dataset(ds.calibration_size, ds.seed + 1_000_003), indent=1))


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
    """A few hundred seeded, single-threaded steps on a disjoint split: same bytes on every run here."""
    import torch
    from tqdm import tqdm

    texts = [PROMPT.format(instruction=r["instruction"], input=r["input"]) + " " + r["output"] + EOS
             for r in generate_dataset(cfg.train_samples, cfg.seed + TRAIN_SEED_OFFSET)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train_lr, weight_decay=0.0)
        model.train()
        for step in tqdm(range(cfg.train_steps), desc="train tiny gptj", unit="step", mininterval=2.0):
            idx = torch.randint(len(texts), (cfg.train_batch,), generator=gen).tolist()
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def load_model(model_dir: Path, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    except (OSError, ValueError) as err:
        raise InputError(f"{model_dir}: cannot load the checkpoint ({str(err).splitlines()[0]})") from None


# ---------------------------------------------------------------- dataset access
@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str


def load_samples(path: Path) -> list[Sample]:
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: dataset file is missing") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno})") from None
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path}: expected a non-empty list of samples")
    samples = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"instruction", "input", "output"} <= row.keys():
            raise InputError(f"{path}: sample {i} lacks instruction, input or output")
        samples.append(Sample(PROMPT.format(instruction=row["instruction"], input=row["input"]), row["output"]))
    return samples


# ---------------------------------------------------------------- accuracy
def score(predictions: list[str], references: list[str]) -> dict[str, float]:
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


PUBLISHED_SAMPLES = 13368


def tokenizer_dir(source: Path) -> Path:
    return source / "tokenizer" if (source / "tokenizer").is_dir() else source / "model"


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot load the tokenizer ({str(err).splitlines()[0][:200]})") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def calibration_batches(source: Path, bp: BenchmarkParams) -> list[dict]:
    """MLPerf calibrates on the prompts of its calibration list."""
    tok = load_tokenizer(tokenizer_dir(source))
    prompts = [s.prompt for s in load_samples(source / "calibration.json")]
    size = bp.calibration.batch_size
    batches = []
    for i in range(0, len(prompts), size):
        enc = tok(prompts[i : i + size], return_tensors="pt", padding=True, truncation=True,
                  max_length=bp.generation.max_input_tokens)
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches
