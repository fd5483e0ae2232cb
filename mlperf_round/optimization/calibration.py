"""Calibration: activation statistics collected once per benchmark, whatever the recipe.

Model Optimizer's max calibrator runs over the calibration set with per-channel input
quantizers on every Linear; the per-channel absmax it records is all that FP8 (per-tensor
max), INT8 and SmoothQuant (per-channel max, then the smoothed max) need. So a change of
precision re-quantizes from these statistics without touching the data again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

STATS_FILE = "activation_absmax.safetensors"

# every Linear input observed per channel; weights and everything else left alone
_STATS_CFG = {
    "quant_cfg": {
        "default": {"enable": False},
        "*input_quantizer": {"num_bits": 8, "axis": -1, "enable": True},
        "nn.LayerNorm": {"*": {"enable": False}},
        "nn.Embedding": {"*": {"enable": False}},
    },
    "algorithm": "max",
}


def collect_absmax(model: torch.nn.Module, batches: list[dict], desc: str = "calibrate") -> dict[str, torch.Tensor]:
    """Run `batches` through `model` under modelopt's calibration loop; return {linear: per-channel absmax}."""
    import modelopt.torch.quantization as mtq

    device = next(model.parameters()).device

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, unit="batch"):
                m(**{k: v.to(device) for k, v in batch.items()})

    mtq.quantize(model, _STATS_CFG, forward_loop)
    stats = {}
    for name, mod in model.named_modules():
        q = getattr(mod, "input_quantizer", None)
        if isinstance(mod, torch.nn.Linear) and q is not None and q.is_enabled and q.amax is not None:
            stats[name] = q.amax.detach().float().reshape(-1).cpu().clone()
    return stats


def save_stats(stats: dict[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in stats.items()}, str(out / STATS_FILE))


def load_stats(stats_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(stats_dir / STATS_FILE))


def summary(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    maxima = torch.stack([v.max() for v in stats.values()]) if stats else torch.zeros(1)
    return {
        "layers": len(stats),
        "absmax_max": float(maxima.max()),
        "absmax_median": float(maxima.median()),
        "absmax_min": float(maxima.min()),
    }
