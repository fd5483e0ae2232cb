"""The quantize stage's checkpoint as what quantization changed: low-precision weights, their ranges, the source.

Quantizing Llama 2 70B to FP8 changes its Linear layers and nothing else. Writing the whole model
again (Model Optimizer's `modelopt.pth` holds every weight in the model's dtype) would add 138 GB
per entry, and the DVC cache a second copy. Here each quantized layer is stored on its grid in its
own type (E4M3 for FP8, int8 for INT8 SmoothQuant, so 1 byte a weight) with its weight and input
ranges and SmoothQuant's input scale; everything else is read from the source checkpoint, which
`source.json` names. Loading rebuilds the fake-quantized model Model Optimizer made: the source
in the engine's dtype, the recipe's quantizers inserted, then each layer's grid values and ranges
put back, so every later stage sees the layers the quantize stage calibrated.
"""

from __future__ import annotations

import json
from pathlib import Path

# Imported here, not inside load(): a library that catches a failed optional import keeps its traceback, and
# through the frames' chain the caller's locals, so a model built in that caller would outlive it.
import modelopt.torch.quantization as mtq
import torch
from safetensors import safe_open

from ..benchmarks.text import load_model
from ..backends.lowp import FP8_MAX, _int_bounds, _safe
from ..checkpoints import link_source, linked_source
from ..errors import InputError
from .quantization import _config

META_FILE = "quantized.json"
TENSORS_FILE = "quantized.safetensors"


def _grid(mod: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight as grid indices in its low-precision type, and the scale per output row (or one)."""
    wq = mod.weight_quantizer
    with torch.no_grad():
        folded = wq(mod.weight).float()  # the values every fake-quantized call multiplies with
    amax = _safe(wq.amax)  # the scales the native kernels (lowp.py) derive from the same ranges
    if wq.num_bits == (4, 3):
        scale = amax.reshape(()) / FP8_MAX
        return (folded / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
    lo, top = _int_bounds(wq)
    scale = (amax / top).reshape(-1, 1) if amax.numel() > 1 else amax.reshape(()) / top
    return (folded / scale).round().clamp(lo, top).to(torch.int8), scale


def save(model: torch.nn.Module, out: Path, layers: list[str], precision: str, quantize_lm_head: bool,
         source: Path) -> int:
    """Write the quantized layers of `model` to `out`; `source` is the download stage's output the model came from.
    Returns the bytes written."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name in layers:
        mod = model.get_submodule(name)
        grid, scale = _grid(mod)
        tensors[f"{name}.weight"] = grid.contiguous()
        tensors[f"{name}.weight_scale"] = scale.contiguous()
        tensors[f"{name}.weight_amax"] = mod.weight_quantizer.amax.detach().float().contiguous()
        tensors[f"{name}.input_amax"] = mod.input_quantizer.amax.detach().float().contiguous()
        pqs = mod.input_quantizer.pre_quant_scale
        if pqs is not None:
            tensors[f"{name}.pre_quant_scale"] = pqs.detach().float().contiguous()
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / TENSORS_FILE))
    model.config.save_pretrained(out)
    link_source(out, source)
    meta = {"precision": precision, "quantize_lm_head": quantize_lm_head, "layers": layers}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return (out / TENSORS_FILE).stat().st_size


def is_quantized_checkpoint(checkpoint: Path) -> bool:
    return (Path(checkpoint) / META_FILE).is_file()


def load(checkpoint: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The fake-quantized model the quantize stage calibrated, rebuilt from the source and the stored layers."""
    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / META_FILE).read_text())
    model = load_model(linked_source(checkpoint), str(dtype).removeprefix("torch."))
    # one layer at a time, into new parameters: the source's own weights for these layers are never read
    with safe_open(str(checkpoint / TENSORS_FILE), "pt") as stored, torch.no_grad():
        for name in meta["layers"]:
            mod = model.get_submodule(name)
            grid, scale = stored.get_tensor(f"{name}.weight"), stored.get_tensor(f"{name}.weight_scale")
            if grid.shape != mod.weight.shape:
                raise InputError(f"{checkpoint / TENSORS_FILE}: {name}.weight is {tuple(grid.shape)}, the source's "
                                 f"{tuple(mod.weight.shape)}; re-run quantize")
            mod.weight = torch.nn.Parameter((grid.float() * scale).to(mod.weight.dtype), requires_grad=False)
            del grid
        ranges = {k: stored.get_tensor(k) for k in stored.keys() if not k.endswith((".weight", ".weight_scale"))}
    model = mtq.quantize(model, _config(meta["precision"], meta["quantize_lm_head"]), forward_loop=None)
    enabled = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and getattr(m, "input_quantizer", None) is not None and m.input_quantizer.is_enabled}
    if enabled != set(meta["layers"]):
        raise InputError(f"{checkpoint / META_FILE}: its layers are not the ones recipe {meta['precision']} quantizes "
                         f"in the source ({len(enabled ^ set(meta['layers']))} differ); re-run quantize")
    for name in meta["layers"]:  # the calibrated ranges, not the ones just measured on the grid values
        mod = model.get_submodule(name)
        mod.weight_quantizer.amax = ranges[f"{name}.weight_amax"].to(mod.weight.device)
        mod.input_quantizer.amax = ranges[f"{name}.input_amax"].to(mod.weight.device)
        if f"{name}.pre_quant_scale" in ranges:
            mod.input_quantizer.pre_quant_scale = ranges[f"{name}.pre_quant_scale"].to(mod.weight.device)
    return model.eval()
