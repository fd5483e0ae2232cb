"""download: the reference checkpoint, tokenizer, accuracy set and calibration list, verified.

Text-to-image also needs its fixed latents and the FID and CLIP networks.
"""

import sys

from mlperf_round.runner import StageContext, run_stage


def body(ctx: StageContext) -> dict:
    return ctx.bench.kind.download(ctx, ctx.bench)


if __name__ == "__main__":
    sys.exit(run_stage("download", "benchmark", body))
