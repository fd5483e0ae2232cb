"""A quick, LoadGen-free quality and speed probe of a causal LM: greedy answers, ROUGE, tokens/s.

For comparing recipe variants (original, pruned, distilled) in tests and benchmarks; the
round's own accuracy numbers always come from LoadGen's accuracy run.
"""

from __future__ import annotations

import time


def greedy_rouge(model, tokenizer, samples, max_new_tokens: int, min_new_tokens: int, eos_id: int) -> dict[str, float]:
    import torch

    from ..metrics.rouge import rouge_scores

    preds, generated = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for s in samples:
            ids = tokenizer(s.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=eos_id,
                eos_token_id=eos_id,
            )
            new = out[0, ids.shape[1] :]
            generated += len(new)
            preds.append(tokenizer.decode(new, skip_special_tokens=True))
    seconds = time.perf_counter() - start
    scores = rouge_scores(preds, [s.reference for s in samples])
    return {
        "rouge1": scores["rouge1"],
        "rougeL": scores["rougeL"],
        "tokens_per_s": generated / seconds,
        "parameters": float(sum(p.numel() for p in model.parameters())),
    }
