"""What the text benchmarks share: locally built word-level tokenizers, a learnable synthetic
language, seeded training of tiny models, and loading of checkpoints, tokenizers and data.

Each benchmark module keeps only its own knowledge (prompt format, dataset shape, scoring).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import InputError
from ..jsonfile import read_json
from ..weights import check_weights

UNK = "<unk>"
VOCAB_WORDS = 400


def pseudo_words(n: int, seed: int) -> list[str]:
    """Pronounceable, stemmer-stable words, the same list on every machine."""
    rng = random.Random(seed)
    onsets = "b d f g k l m n p r s t v z".split()
    vowels = "a e i o u".split()
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.choice((2, 2, 3)))))
    return sorted(words)


def template_words(text: str) -> list[str]:
    text = text.lower()
    for ch in ",.:#\n?":
        text = text.replace(ch, " ")
    return sorted(set(text.split()))


class MarkovLanguage:
    """A first-order Markov chain over the pseudo-words: text with structure a tiny model can learn."""

    def __init__(self, seed: int = 1234, successors: int = 4):
        rng = random.Random(seed)
        self.words = pseudo_words(VOCAB_WORDS, seed=seed)
        self.start_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self.words))]  # Zipf-like
        rng.shuffle(self.start_weights)
        self.next = {
            w: (rng.sample(self.words, successors), [1.0 / (k + 1) for k in range(successors)]) for w in self.words
        }

    def sentence(self, rng: random.Random) -> str:
        word = rng.choices(self.words, weights=self.start_weights)[0]
        body = [word]
        for _ in range(rng.randint(6, 13)):
            options, weights = self.next[word]
            word = rng.choices(options, weights=weights)[0]
            body.append(word)
        text = " ".join(body)
        return text[0].upper() + text[1:] + "."


def news(size: int, seed: int, language_seed: int) -> list[tuple[str, str]]:
    """Articles and their highlights, shaped like CNN-DailyMail: the highlights are three of the article's sentences."""
    rng, lang = random.Random(seed), MarkovLanguage(language_seed)
    samples = []
    for _ in range(size):
        sentences = [lang.sentence(rng) for _ in range(rng.randint(5, 9))]
        picked = sorted(rng.sample(range(len(sentences)), 3))
        samples.append((" ".join(sentences), "\n".join(sentences[i] for i in picked)))
    return samples


def build_word_tokenizer(
    out: Path,
    special: list[str],
    words: list[str],
    eos: str,
    bos: str,
    punct: list[str],
    markers: list[str] = (),
    chat_template: str | None = None,
) -> None:
    """A word-level fast tokenizer, built locally, saved in transformers' format.

    `markers` (prompt-format tags such as "[INST]") are single tokens, matched before
    normalization and dropped when decoding with skip_special_tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = special + [UNK] + list(markers) + punct + words
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in [*special, *markers]])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token=eos, unk_token=UNK, padding_side="left"
    )
    fast.model_max_length = 4096
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(out)


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


def tokenizer_dir(source: Path) -> Path:
    from .. import checkpoints

    return source / "tokenizer" if (source / "tokenizer").is_dir() else checkpoints.resolve(source)


def load_model(model_dir: Path, dtype: str = "auto"):
    """A checkpoint in its own dtype by default (`auto`: 70B in bf16 is 138 GB; in fp32 it would be twice that),
    built on the meta device and filled shard by shard, as transformers loads."""
    import torch
    from transformers import AutoModelForCausalLM

    dt = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        from ..optimization import pruning

        safetensors = check_weights(model_dir)  # False: transformers' .bin shards, read with weights_only
        if pruning.is_pruned_checkpoint(model_dir):
            return pruning.load_pruned(model_dir, torch.float32 if dt == "auto" else dt).eval()
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt, use_safetensors=safetensors).eval()
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: weights that do not fit the config
        raise InputError(f"{model_dir}: cannot load the checkpoint ({str(err).splitlines()[0]})") from None


def read_rows(path: Path, required: set[str]) -> list[dict]:
    """A dataset file: a non-empty JSON list of objects with the required fields."""
    rows = read_json(path, "dataset file is missing")
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path}: expected a non-empty list of samples")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not required <= row.keys():
            raise InputError(f"{path}: sample {i} lacks one of {', '.join(sorted(required))}")
    return rows


def train(
    model,
    tokenizer,
    texts: list[str],
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    desc: str,
    completion_tokens: list[int] | None = None,
) -> None:
    """Seeded, single-threaded, deterministic steps: the same bytes on every run here.

    With `completion_tokens` (per text), only each text's last that many tokens carry the
    loss, as in chat fine-tuning: the answer is learnt, the prompt is only read.
    """
    import torch
    from tqdm import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        model.train()
        for _ in tqdm(range(steps), desc=desc, unit="step", mininterval=2.0):
            idx = torch.randint(len(texts), (batch,), generator=gen).tolist()
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            if completion_tokens is not None:  # left padding: every answer ends at the right edge
                width = labels.shape[1]
                for row, i in enumerate(idx):
                    labels[row, : width - completion_tokens[i]] = -100
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    model.eval()


def tiny_llama(cfg, tokenizer, **config):
    """A seeded LlamaForCausalLM of the tiny config's shape (`config`: what a Llama generation adds, e.g. RoPE)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **config,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def train_answers(model, tokenizer, cfg, prompts: list[str], answers: list[str], desc: str) -> None:
    """Chat fine-tuning of a tiny model: each prompt followed by its answer, the loss on the answer only."""
    counts = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    texts = [p + a for p, a in zip(prompts, answers)]
    train(
        model,
        tokenizer,
        texts,
        cfg.train_steps,
        cfg.train_batch,
        cfg.train_lr,
        cfg.seed,
        desc,
        completion_tokens=counts,
    )


def token_ids(row: dict, path: Path, i: int) -> tuple[int, ...] | None:
    """A row's tok_input (MLCommons' prompt token ids, served as given), checked."""
    ids = row.get("tok_input")
    if ids is not None and not (isinstance(ids, list) and ids and all(isinstance(t, int) and t >= 0 for t in ids)):
        raise InputError(f"{path}: sample {i}: tok_input is not a non-empty list of token ids")
    return tuple(ids) if ids else None


def sample_ids(sample, tokenizer, max_len: int):
    """A sample's prompt as token ids: the dataset's own (MLPerf's tok_input) when it has them."""
    import numpy as np

    if getattr(sample, "input_ids", None):
        return np.asarray(sample.input_ids, dtype=np.int64)
    ids = tokenizer(sample.prompt, truncation=True, max_length=max_len, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def calibration_batches(tokenizer, prompts: list[str], batch_size: int, max_len: int) -> list[dict]:
    batches = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
            add_special_tokens=False,
        )
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def write_json(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1))
