"""Native low-precision linears: the quantize stage's FP8 and INT8 layers run as real FP8 / INT8 GEMMs.

Model Optimizer's quantized layers fake-quantize: they round weights and inputs to the FP8 or
INT8 grid, then multiply in the engine's dtype. That proves accuracy but buys no speed. Here
each calibrated layer is swapped for one that stores its weight in the low-precision type once
and multiplies with `torch._scaled_mm` (FP8 E4M3, Hopper's tensor cores) or `torch._int_mm`
(INT8 with INT32 accumulation), with the scales the quantize stage set: the same grid, the same
ranges, so the outputs equal the fake-quantized ones up to accumulation order. Both kernels
also run on the CPU, which is how the tests compare them there.

What has no native kernel in torch is left as calibrated: INT8 convolutions keep their input
fake-quantized, but their weight is rounded once at load instead of at every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

FP8_MAX = 448.0  # E4M3's largest finite value, the bound modelopt scales amax to
_EPS = 1.0 / (1 << 24)  # modelopt treats a smaller amax as zero


@dataclass
class Conversion:
    """What `convert` did, per layer kind: recorded in the build's metrics."""

    fp8_linear: list[str] = field(default_factory=list)
    int8_linear: list[str] = field(default_factory=list)
    int8_conv_weights_baked: list[str] = field(default_factory=list)
    left_fake: list[str] = field(default_factory=list)  # quantized layers no native kernel could take
    emulated_by_choice: list[str] = field(default_factory=list)  # native-capable, left emulated: the slower kernel here

    def summary(self) -> dict[str, int]:
        return {
            "native_fp8_linears": len(self.fp8_linear),
            "native_int8_linears": len(self.int8_linear),
            "int8_convs_weights_baked": len(self.int8_conv_weights_baked),
            "fake_quant_layers_left": len(self.left_fake),
            "emulated_linears_by_choice": len(self.emulated_by_choice),
        }


def _safe(amax: torch.Tensor) -> torch.Tensor:
    amax = amax.detach().float()
    return torch.where(amax <= _EPS, torch.ones_like(amax), amax)


def _int_bounds(q) -> tuple[float, float]:
    top = 2.0 ** (q.num_bits - 1 + int(q.unsigned)) - 1.0
    return (0.0 if q.unsigned else (-top if q.narrow_range else -top - 1.0)), top


class _NativeLinear(torch.nn.Module):
    """The shared part: flatten leading dims, SmoothQuant's input scale, bias, output dtype."""

    def __init__(
        self, in_features: int, out_features: int, bias: torch.Tensor | None, pre_quant_scale: torch.Tensor | None
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "pre_quant_scale", None if pre_quant_scale is None else pre_quant_scale.detach().reshape(-1).clone()
        )
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    _KEEP_DTYPE = ("weight_t", "w_scale", "x_scale", "pre_quant_scale")  # E4M3 / INT8 weights, calibrated FP32 scales

    def _apply(self, fn, recurse=True):
        """`.half()` / `.to(bfloat16)` on the model moves the quantized weight and its scales but never casts them
        (a float8 tensor counts as floating point, and an fp16 round trip would round the scales)."""
        before = {name: self._buffers[name] for name in self._KEEP_DTYPE if self._buffers[name] is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            if self._buffers[name].dtype != old.dtype:
                self._buffers[name] = old.to(self._buffers[name].device)
        return self

    @staticmethod
    def _parts(mod: torch.nn.Linear) -> dict:
        return {
            "in_features": mod.in_features,
            "out_features": mod.out_features,
            "bias": mod.bias,
            "pre_quant_scale": mod.input_quantizer.pre_quant_scale,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.pre_quant_scale is not None:
            x2 = x2 * self.pre_quant_scale.to(x2.dtype)
        y = self._matmul(x2).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, "
        f"smoothquant={self.pre_quant_scale is not None}"


class Fp8Linear(_NativeLinear):
    """E4M3 weight (per tensor) x E4M3 input (per tensor, static scale) through `torch._scaled_mm`."""

    def __init__(
        self,
        weight: torch.Tensor,
        w_scale: torch.Tensor,
        x_scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        pre_quant_scale: torch.Tensor | None = None,
    ):
        """weight: [out, in] in the engine's dtype or already E4M3 (then `w_scale` is its scale)."""
        super().__init__(weight.shape[1], weight.shape[0], bias, pre_quant_scale)
        if weight.dtype != torch.float8_e4m3fn:
            weight = (weight.detach().float() / w_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        self.register_buffer("weight_t", weight.t())  # [in, out], column-major as _scaled_mm wants its second operand
        self.register_buffer("w_scale", w_scale.detach().float().reshape(()))
        self.register_buffer("x_scale", x_scale.detach().float().reshape(()))

    @classmethod
    def from_quantized(cls, mod: torch.nn.Linear) -> Fp8Linear:
        parts = cls._parts(mod)
        return cls(
            mod.weight,
            _safe(mod.weight_quantizer.amax) / FP8_MAX,
            _safe(mod.input_quantizer.amax) / FP8_MAX,
            parts["bias"],
            parts["pre_quant_scale"],
        )

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        xq = (x.float() / self.x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        rows = xq.shape[0]
        if xq.is_cuda and rows % 16:  # cuBLASLt's FP8 GEMM: row counts in multiples of 16 on some releases
            xq = F.pad(xq.view(torch.uint8), (0, 0, 0, 16 - rows % 16)).view(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, self.weight_t, scale_a=self.x_scale, scale_b=self.w_scale, out_dtype=out_dtype)[
            :rows
        ]


class Int8Linear(_NativeLinear):
    """INT8 weight (per output channel) x INT8 input (per tensor, static scale) through `torch._int_mm`."""

    def __init__(self, mod: torch.nn.Linear):
        super().__init__(**self._parts(mod))
        wq, inq = mod.weight_quantizer, mod.input_quantizer
        w_lo, w_hi = _int_bounds(wq)
        x_lo, x_hi = _int_bounds(inq)
        w_scale = (_safe(wq.amax) / w_hi).reshape(-1)  # one per output channel (or one)
        w = (mod.weight.detach().float() / w_scale[:, None]).round().clamp(w_lo, w_hi).to(torch.int8)
        self.register_buffer("weight_t", w.t().contiguous())  # [in, out]
        self.register_buffer("w_scale", w_scale.expand(self.out_features).clone())
        self.register_buffer("x_scale", (_safe(inq.amax) / x_hi).reshape(()))
        self.x_lo, self.x_hi = x_lo, x_hi

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        xq = (x.float() / self.x_scale).round().clamp(self.x_lo, self.x_hi).to(torch.int8)
        rows = xq.shape[0]
        if xq.is_cuda and rows <= 16:  # cuBLASLt's INT8 GEMM wants more than 16 rows
            xq = F.pad(xq, (0, 0, 0, 32 - rows))
        acc = torch._int_mm(xq, self.weight_t)[:rows]
        return acc.float() * (self.x_scale * self.w_scale)


def _enabled(q) -> bool:
    return q is not None and q.is_enabled and getattr(q, "amax", None) is not None


def _native_kind(mod: torch.nn.Module) -> str | None:
    """'fp8' / 'int8' when the layer's quantizers map onto a native GEMM, else None."""
    wq, inq = getattr(mod, "weight_quantizer", None), getattr(mod, "input_quantizer", None)
    if not (_enabled(wq) and _enabled(inq)) or _enabled(getattr(mod, "output_quantizer", None)):
        return None
    if getattr(wq, "block_sizes", None) or getattr(inq, "block_sizes", None) or inq.amax.numel() != 1:
        return None
    if wq.num_bits == (4, 3) and inq.num_bits == (4, 3) and wq.amax.numel() == 1:
        return "fp8"
    if wq.num_bits == 8 and inq.num_bits == 8 and wq.amax.numel() in (1, mod.weight.shape[0]):
        return "int8"
    return None


def _cuda_shapes_ok(mod: torch.nn.Linear, kind: str) -> bool:
    """The GPU kernels' shape rules: FP8 wants both dimensions a multiple of 16, INT8 of 8."""
    step = 16 if kind == "fp8" else 8
    return mod.in_features % step == 0 and mod.out_features % step == 0


def _bake_conv_weight(mod: torch.nn.Conv2d) -> None:
    """Round the weight to its INT8 grid once and switch its quantizer off: the same values every call returns."""
    with torch.no_grad():
        mod.weight.copy_(mod.weight_quantizer(mod.weight))
    mod.weight_quantizer.disable()


def _quantized(mod: torch.nn.Module) -> bool:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return any(isinstance(m, TensorQuantizer) and m.is_enabled for m in mod.children())


def native_layers(model: torch.nn.Module, device: torch.device | str = "cpu"):
    """(name, layer, kind) for each quantized Linear a native kernel can run on `device`."""
    cuda = torch.device(device).type == "cuda"
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and _quantized(mod):
            kind = _native_kind(mod)
            if kind and not (cuda and not _cuda_shapes_ok(mod, kind)):
                yield name, mod, kind


def convert(
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    kinds: set[str] | frozenset[str] = frozenset({"fp8", "int8"}),
) -> Conversion:
    """Swap every fake-quantized Linear of `kinds` that a native kernel can run for its native twin, in place;
    the rest stay calibrated, with their weights rounded onto their grid once (the same values each call gives)."""
    done = Conversion()
    native = {name: kind for name, _, kind in native_layers(model, device)}
    for name in [n for n, m in model.named_modules() if _quantized(m)]:  # names only: no layer kept alive by the list
        mod = model.get_submodule(name)
        kind = native.get(name)
        if kind in kinds:  # swapped at once: the layer's full-precision weight is freed before the next one converts
            new = Fp8Linear.from_quantized(mod) if kind == "fp8" else Int8Linear(mod)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new.to(device))
            (done.fp8_linear if kind == "fp8" else done.int8_linear).append(name)
        elif isinstance(mod, torch.nn.Conv2d) and "int8" in kinds and _native_kind(mod) == "int8":
            _bake_conv_weight(mod)
            done.int8_conv_weights_baked.append(name)
        elif kind:
            done.emulated_by_choice.append(name)
        else:
            done.left_fake.append(name)
    fold_weights(model)
    return done


ON_GRID = "_weight_on_grid"  # set by a loader that put the grid values themselves into the weight


def fold_weights(model: torch.nn.Module) -> None:
    """Every fake-quantized weight rounded onto its grid once, its quantizer off: what emulated layers compute
    each call, computed at load. A weight a loader marked ON_GRID already holds those values (rounding them again
    gives them back), so its quantizer is only switched off: no full-size temporaries per layer."""
    from modelopt.torch.quantization.nn import QuantModule

    for mod in model.modules():
        if not isinstance(mod, QuantModule):
            continue
        if getattr(mod, ON_GRID, False):
            mod.weight_quantizer.disable()
        else:
            mod.fold_weight()  # what mtq.fold_weight does per module
