"""Quantization recipes on Model Optimizer, applied from the calibrate stage's statistics.

fp32 / fp16 / bf16 pass through. fp8 is the v4.0 LLM recipe: E4M3 weights and activations, per
tensor. int8_sq is SmoothQuant: per-channel scales s = a^alpha / w^(1-alpha) migrate
activation outliers into the weights, then INT8 weights per channel and activations per
tensor. modelopt inserts and runs the quantizers; the amax values come from the stored
statistics, which is what its max calibrator would have measured on the same data.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import torch

from ..errors import InputError, RoundError
from ..weights import check_weights
from . import pruning

MODELOPT_FILE = "modelopt.pth"


def _config(precision: str, quantize_lm_head: bool) -> dict:
    import modelopt.torch.quantization as mtq

    base = {"fp8": mtq.FP8_DEFAULT_CFG, "int8_sq": mtq.INT8_SMOOTHQUANT_CFG}[precision]
    cfg = copy.deepcopy(base)
    cfg["algorithm"] = "max"  # statistics are given; smoothing is applied from them below
    quant_cfg = cfg["quant_cfg"]
    # the recipes quantize Linear layers only; norms and embeddings stay in the engine dtype
    if isinstance(quant_cfg, dict):  # modelopt < 0.47
        if quantize_lm_head:
            quant_cfg.pop("*lm_head*", None)
        else:
            quant_cfg["*lm_head*"] = {"enable": False}
        quant_cfg.update({cls: {"*": {"enable": False}} for cls in ("nn.LayerNorm", "nn.Embedding")})
    else:  # an ordered list: later entries win
        if quantize_lm_head:
            quant_cfg[:] = [e for e in quant_cfg if e.get("quantizer_name") != "*lm_head*"]
        else:
            quant_cfg.append({"quantizer_name": "*lm_head*", "enable": False})
        quant_cfg.extend(
            {"quantizer_name": "*", "parent_class": cls, "enable": False} for cls in ("nn.LayerNorm", "nn.Embedding")
        )
    return cfg


def _smooth(mod: torch.nn.Linear, act_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Fold SmoothQuant's per-input-channel scale into the weight; return the activation's 1/s."""
    act = act_absmax.to(mod.weight.dtype).clamp(min=1e-5)
    wmax = mod.weight.detach().abs().amax(dim=0).clamp(min=1e-5)
    s = (act.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)
    with torch.no_grad():
        mod.weight.mul_(s)
    wq = mod.weight_quantizer
    wq.amax = mod.weight.detach().abs().amax(dim=1).reshape(wq.amax.shape).to(wq.amax.dtype)  # per output channel
    return 1.0 / s


def quantize(
    model: torch.nn.Module,
    precision: str,
    stats: dict[str, torch.Tensor],
    alpha: float = 0.5,
    quantize_lm_head: bool = False,
) -> tuple[torch.nn.Module, dict]:
    """Return the (fake-)quantized model and a summary of what was quantized."""
    if precision == "fp32":
        return model.float(), {"precision": precision, "quantized_layers": [], "skipped_layers": []}
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return model.to(dtype), {"precision": precision, "quantized_layers": [], "skipped_layers": []}

    import modelopt.torch.quantization as mtq

    # forward_loop=None: modelopt inserts the quantizers and calibrates weights only
    model = mtq.quantize(model, _config(precision, quantize_lm_head), forward_loop=None)
    quantized, skipped = set_ranges(
        model, stats, (torch.nn.Linear,), alpha, lambda name, mod: precision == "int8_sq", f"recipe {precision}"
    )
    return model, {"precision": precision, "quantized_layers": [n for n, _ in quantized], "skipped_layers": skipped}


def set_ranges(
    model: torch.nn.Module, stats: dict[str, torch.Tensor], layer_types: tuple, alpha: float, smooth, what: str
) -> tuple[list[tuple[str, bool]], list[str]]:
    """Input ranges from stored statistics on every layer modelopt enabled; SmoothQuant where `smooth(name, module)`.

    Returns (quantized layer, smoothed) pairs and the skipped layers; every enabled quantizer
    must end with a range.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    quantized, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, layer_types):
            continue
        inq = getattr(mod, "input_quantizer", None)
        if inq is None or not inq.is_enabled:
            skipped.append(name)
            continue
        if name not in stats:
            raise InputError(f"calibration statistics have no entry for layer {name}; re-run calibrate")
        act = stats[name].to(mod.weight.device)
        smoothed = bool(smooth(name, mod))
        if smoothed:
            inv = _smooth(mod, act, alpha)
            inq.pre_quant_scale = inv
            act = act * inv
        inq.amax = act.max().float()
        quantized.append((name, smoothed))
    if not quantized:
        raise RoundError(f"{what}: no layer was quantized")
    uncalibrated = [
        n for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled and m.amax is None
    ]
    if uncalibrated:
        raise RoundError(f"{what}: quantizers without statistics: {', '.join(uncalibrated[:3])}")
    return quantized, skipped


def quantizer_summary(model: torch.nn.Module) -> dict[str, float]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    enabled = [m for m in model.modules() if isinstance(m, TensorQuantizer) and m.is_enabled]
    amaxes = torch.stack([m.amax.float().max() for m in enabled if m.amax is not None]) if enabled else torch.zeros(1)
    return {
        "quantizers_enabled": len(enabled),
        "amax_max": float(amaxes.max()),
        "amax_median": float(amaxes.median()),
        "amax_min": float(amaxes.min()),
    }


def save(model: torch.nn.Module, out: Path, quantized: bool) -> None:
    """Config plus weights; a quantized model also carries its modelopt state (one file)."""
    out.mkdir(parents=True, exist_ok=True)
    if quantized:
        import modelopt.torch.opt as mto

        model.config.save_pretrained(out)
        mto.save(model, str(out / MODELOPT_FILE))
    else:
        model.save_pretrained(out, safe_serialization=True)


def load(checkpoint: Path, dtype: str = "float32") -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import quantized_checkpoint

    dt = getattr(torch, dtype)
    try:
        if quantized_checkpoint.is_quantized_checkpoint(checkpoint):
            return quantized_checkpoint.load(checkpoint, dt)
        if (checkpoint / MODELOPT_FILE).exists():
            import modelopt.torch.opt as mto

            config = AutoConfig.from_pretrained(checkpoint)
            model = pruning.shrink(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
            model = mto.restore(model, str(checkpoint / MODELOPT_FILE), weights_only=True)
            return model.to(dt).eval()
        safetensors = check_weights(checkpoint)  # False: transformers' .bin shards, read with weights_only
        if pruning.is_pruned_checkpoint(checkpoint):
            return pruning.load_pruned(checkpoint, dt).eval()
        return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dt, use_safetensors=safetensors).eval()
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
        raise InputError(f"{checkpoint}: cannot load the checkpoint ({str(err).splitlines()[0][:200]})") from None


def export_deployable(model: torch.nn.Module, out: Path) -> dict[str, float]:
    """The real low-precision checkpoint (FP8 / INT8 tensors with scales) that TensorRT-LLM serves.

    Model Optimizer's export replaces the model's weights with their quantized form in place: call it last."""
    from modelopt.torch.export import export_hf_checkpoint

    model.config.architectures = [type(model).__name__]
    dtype = next(model.parameters()).dtype  # a bf16 checkpoint stays bf16: casting would copy every other tensor
    export_hf_checkpoint(
        model, dtype=dtype if dtype in (torch.bfloat16, torch.float16) else torch.float16, export_dir=str(out)
    )
    cfg = json.loads((out / "hf_quant_config.json").read_text()) if (out / "hf_quant_config.json").exists() else {}
    size = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    return {"deployable_bytes": size, "quant_algo": cfg.get("quantization", {}).get("quant_algo") or ""}
