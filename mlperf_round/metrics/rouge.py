"""ROUGE as MLPerf's LLM evaluations compute it: F-measure x100, stemmed, averaged over samples."""

from __future__ import annotations

import re

KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _sentences(text: str) -> str:
    # MLPerf splits with nltk's punkt (a download); a full stop followed by space splits the same here
    return "\n".join(s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip())


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)
    totals = dict.fromkeys(KEYS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(_sentences(ref), _sentences(pred))
        for k in KEYS:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: round(100.0 * v / n, 4) for k, v in totals.items()}
