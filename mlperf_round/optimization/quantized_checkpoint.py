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

from ..backends.lowp import FP8_MAX, ON_GRID, _int_bounds, _safe
from ..benchmarks.text import load_model
from ..checkpoints import link_source, linked_source
from ..errors import InputError
from ..heap import release_freed
from ..tensor_stream import TensorStream
from .quantization import _config

META_FILE = "quantized.json"
TENSORS_FILE = "quantized.safetensors"


def _scale_shape(wq) -> tuple[int, ...]:
    return (wq.amax.numel(), 1) if wq.num_bits != (4, 3) and wq.amax.numel() > 1 else ()


def _grid(mod: torch.nn.Module, chunk: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight as grid indices in its low-precision type, and the scale per output row (or one).

    The quantizer itself rounds (the values every fake-quantized call multiplies with), a few million weights at a
    time where its range is per tensor, so its float32 temporaries stay small beside a large layer."""
    wq, weight = mod.weight_quantizer, mod.weight.detach()
    amax = _safe(wq.amax)  # the scales the native kernels (lowp.py) derive from the same ranges
    fp8 = wq.num_bits == (4, 3)
    if fp8:
        scale, lo, top = amax.reshape(()) / FP8_MAX, -FP8_MAX, FP8_MAX
    else:
        lo, top = _int_bounds(wq)
        scale = (amax / top).reshape(_scale_shape(wq))
    grid = torch.empty(weight.shape, dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=weight.device)
    rows = max(1, chunk // max(1, weight.shape[-1])) if amax.numel() == 1 else weight.shape[0]
    with torch.no_grad():
        for i in range(0, weight.shape[0], rows):
            part = wq(weight[i : i + rows]).float().div_(scale if scale.dim() == 0 else scale[i : i + rows])
            grid[i : i + rows] = (part if fp8 else part.round_()).clamp_(lo, top)
            del part
    return grid, scale


def save(
    model: torch.nn.Module, out: Path, layers: list[str], precision: str, quantize_lm_head: bool, source: Path
) -> int:
    """Write the quantized layers of `model` to `out`; `source` is the download stage's output the model came from.
    Returns the bytes written. Streamed layer by layer: never more than one layer's grid beside the model."""
    out.mkdir(parents=True, exist_ok=True)
    mods = [(name, model.get_submodule(name)) for name in layers]
    plan = []
    for name, mod in mods:
        wq, inq = mod.weight_quantizer, mod.input_quantizer
        plan += [
            (f"{name}.weight", torch.float8_e4m3fn if wq.num_bits == (4, 3) else torch.int8, mod.weight.shape),
            (f"{name}.weight_scale", torch.float32, _scale_shape(wq)),
            (f"{name}.weight_amax", torch.float32, wq.amax.shape),
            (f"{name}.input_amax", torch.float32, inq.amax.shape),
        ]
        if inq.pre_quant_scale is not None:
            plan.append((f"{name}.pre_quant_scale", torch.float32, inq.pre_quant_scale.shape))
    with TensorStream(out / TENSORS_FILE, plan) as stream:
        for name, mod in mods:
            grid, scale = _grid(mod)
            stream.write(f"{name}.weight", grid)
            del grid
            release_freed()
            stream.write(f"{name}.weight_scale", scale)
            stream.write(f"{name}.weight_amax", mod.weight_quantizer.amax.float())
            stream.write(f"{name}.input_amax", mod.input_quantizer.amax.float())
            if mod.input_quantizer.pre_quant_scale is not None:
                stream.write(f"{name}.pre_quant_scale", mod.input_quantizer.pre_quant_scale.float())
    model.config.save_pretrained(out)
    link_source(out, source)
    meta = {"precision": precision, "quantize_lm_head": quantize_lm_head, "layers": layers}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return (out / TENSORS_FILE).stat().st_size


def is_quantized_checkpoint(checkpoint: Path) -> bool:
    return (Path(checkpoint) / META_FILE).is_file()


def _dequantize(grid: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, chunk: int = 1 << 22) -> torch.Tensor:
    """grid x scale in `dtype`, a few million elements at a time: no full-size float32 temporary per layer."""
    out = torch.empty(grid.shape, dtype=dtype)
    rows = max(1, chunk // max(1, grid.shape[-1]))
    for i in range(0, grid.shape[0], rows):
        out[i : i + rows] = grid[i : i + rows].float() * (scale[i : i + rows] if scale.dim() else scale)
    return out


def load(checkpoint: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The fake-quantized model the quantize stage calibrated, rebuilt from the source and the stored layers."""
    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / META_FILE).read_text())
    model = load_model(linked_source(checkpoint), str(dtype).removeprefix("torch."))
    # one layer at a time, into new parameters: the source's own weights for these layers are never read. The file is
    # opened per layer because safetensors maps it: pages read stay resident until the mapping closes.
    path = str(checkpoint / TENSORS_FILE)
    with torch.no_grad():
        for name in meta["layers"]:
            mod = model.get_submodule(name)
            with safe_open(path, "pt") as stored:
                grid, scale = stored.get_tensor(f"{name}.weight"), stored.get_tensor(f"{name}.weight_scale")
                if grid.shape != mod.weight.shape:
                    raise InputError(
                        f"{checkpoint / TENSORS_FILE}: {name}.weight is {tuple(grid.shape)}, the source's "
                        f"{tuple(mod.weight.shape)}; re-run quantize"
                    )
                mod.weight = torch.nn.Parameter(_dequantize(grid, scale, mod.weight.dtype), requires_grad=False)
                del grid, scale
            release_freed()
    with safe_open(path, "pt") as stored:
        ranges = {
            k: stored.get_tensor(k).clone() for k in stored.keys() if not k.endswith((".weight", ".weight_scale"))
        }
    model = mtq.quantize(model, _config(meta["precision"], meta["quantize_lm_head"]), forward_loop=None)
    enabled = {
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and getattr(m, "input_quantizer", None) is not None
        and m.input_quantizer.is_enabled
    }
    if enabled != set(meta["layers"]):
        raise InputError(
            f"{checkpoint / META_FILE}: its layers are not the ones recipe {meta['precision']} quantizes "
            f"in the source ({len(enabled ^ set(meta['layers']))} differ); re-run quantize"
        )
    for name in meta["layers"]:  # the calibrated ranges, not the ones just measured on the grid values
        mod = model.get_submodule(name)
        setattr(mod, ON_GRID, True)
        mod.weight_quantizer.amax = ranges[f"{name}.weight_amax"].to(mod.weight.device)
        mod.input_quantizer.amax = ranges[f"{name}.input_amax"].to(mod.weight.device)
        if f"{name}.pre_quant_scale" in ranges:
            mod.input_quantizer.pre_quant_scale = ranges[f"{name}.pre_quant_scale"].to(mod.weight.device)
    return model.eval()
