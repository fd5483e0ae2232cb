"""quantize: the entry's recipe on Model Optimizer.

LLMs: pruning and distillation, 2:4 sparsity (open division), quantization, export, in that order
(`optimization/recipe.py`). Text-to-image quantizes the UNet alone, with the v4.0 layer set.
"""

import sys

from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    return ctx.bench.kind.quantize(ctx, ctx.bench)


if __name__ == "__main__":
    sys.exit(run_stage("quantize", "entry", body))
