"""`build.kernels: auto`: native or emulated low-precision GEMMs, whichever is faster where the engine runs.

A kernel that is fast on one machine can be a reference loop on another: torch 2.13's CPU
`torch._scaled_mm` takes 4 ms for a 16x64x64 FP8 GEMM on an AMX Xeon, where fp32 takes 5 us and
`torch._int_mm` is fast. So the build times both candidates for each kind of quantized linear
(FP8, INT8) at the model's own shapes, on the engine's device, warm, and keeps the faster one.

The choice is recorded with the host it was measured on (CPU model or GPU, torch, threads). An
engine opened on another host is timed again there before it serves, so it never runs a path
that is slow on the machine it landed on; the engine's record keeps the build's figures.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from ..errors import InputError
from ..hostfacts import cpuinfo

BUDGET_S = 0.003  # per candidate and shape: a few warm calls


@dataclass
class KernelChoice:
    """Per kind: the candidate kept, and each candidate's time for one forward of all that kind's linears."""

    choice: dict[str, str] = field(default_factory=dict)
    timings_us: dict[str, dict[str, float]] = field(default_factory=dict)
    host: str = ""
    rows: int = 0
    lower_bound: dict[str, str] = field(default_factory=dict)  # kind -> the candidate abandoned part-way (a floor)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> KernelChoice | None:
        try:
            return cls(**data) if data else None
        except TypeError as err:
            raise InputError(f"engine.json: kernel_choice is not a recorded kernel choice ({err})") from None

    def metrics(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for kind, chosen in self.choice.items():
            out[f"kernels_{kind}"] = chosen
            for cand, us in self.timings_us.get(kind, {}).items():
                out[f"kernels_{kind}_{cand}_us"] = us
        return out

    def describe(self) -> str:
        parts = []
        for kind, chosen in self.choice.items():
            t = self.timings_us.get(kind, {})
            figures = ", ".join(
                f"{c} {'>=' if self.lower_bound.get(kind) == c else ''}{us:.0f} us" for c, us in t.items()
            )
            parts.append(f"{kind} {chosen} ({figures})")
        return "; ".join(parts)


# the ISA features low-precision CPU kernels dispatch on
_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def _cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_identity() -> str:
    """The CPU as kernels see it. A VM's model name is often generic ("Intel(R) Xeon(R) Processor" on chips
    with and without AMX), so family, model, stepping and the ISA features go in too."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = "+".join(f for f in _ISA if f in flags) or "none"
    ids = "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
    digest = hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:8]
    return f"{_cpu_model()} [{ids}; {isa}; flags {digest}]"


def host_fingerprint(device: torch.device) -> str:
    """What a kernel's speed depends on: the chip, torch's build and (on the CPU) the thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}|torch {torch.__version__}"
    return f"cpu:{cpu_identity()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_us(fn, device: torch.device, budget_s: float = BUDGET_S, stop_above: float | None = None) -> float:
    """Median of warm calls in microseconds, after one untimed warm-up call (first-call setup, such as cuBLASLt's
    handles or allocations, is not the kernel's speed). Returns after one timed call already above `stop_above`."""
    fn()
    _sync(device)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - begin < budget_s and len(times) < 50):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e6)
        if stop_above is not None and times[0] > stop_above:
            break
    return statistics.median(times)


def _emulated_twin(mod: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The emulated candidate as the engine would run it: weight rounded once (folded), input fake-quantized."""
    from .lowp import fold_weights

    twin = copy.deepcopy(mod).to(device)
    fold_weights(twin)
    return twin


def _native_twin(mod: torch.nn.Module, kind: str, device: torch.device) -> torch.nn.Module:
    from .lowp import Fp8Linear, Int8Linear

    return (Fp8Linear.from_quantized(mod) if kind == "fp8" else Int8Linear(mod)).to(device)


def candidates(model: torch.nn.Module, device: torch.device) -> dict[str, dict[tuple[int, int], list[torch.nn.Module]]]:
    """Native-capable quantized linears grouped by kind and (in, out) shape."""
    from .lowp import native_layers

    groups: dict[str, dict[tuple[int, int], list[torch.nn.Module]]] = {}
    for _, mod, kind in native_layers(model, device):
        groups.setdefault(kind, {}).setdefault((mod.in_features, mod.out_features), []).append(mod)
    return groups


@torch.inference_mode()
def choose(model: torch.nn.Module, device: torch.device, rows: int, budget_s: float = BUDGET_S) -> KernelChoice:
    """Time emulated and native for each kind over its distinct shapes (weighted by how many layers share one).

    Native is timed smallest shape first and abandoned as soon as its running total passes emulated's whole
    total, so a reference-loop kernel costs two calls at the smallest shape, not minutes at the largest.
    """
    result = KernelChoice(host=host_fingerprint(device), rows=rows)
    dtype = next(model.parameters()).dtype
    for kind, shapes in candidates(model, device).items():
        order = sorted(shapes, key=lambda s: s[0] * s[1])
        inputs = {s: torch.randn(rows, s[0], device=device, dtype=dtype) for s in order}
        emulated = 0.0
        for s in order:
            twin = _emulated_twin(shapes[s][0], device)
            emulated += len(shapes[s]) * _time_us(lambda: twin(inputs[s]), device, budget_s)
        native = 0.0
        for i, s in enumerate(order):
            twin = _native_twin(shapes[s][0], kind, device)
            left = (emulated - native) / len(shapes[s])  # what this shape may cost for native still to win
            native += len(shapes[s]) * _time_us(lambda: twin(inputs[s]), device, budget_s, stop_above=left)
            if native > emulated:
                if i < len(order) - 1:
                    result.lower_bound[kind] = "native"
                break
        result.timings_us[kind] = {"native": round(native, 1), "emulated": round(emulated, 1)}
        result.choice[kind] = "native" if native < emulated else "emulated"
    return result


def resolve(
    model: torch.nn.Module, recorded: KernelChoice | None, device: torch.device, rows: int, where: str
) -> tuple[KernelChoice, bool]:
    """The build's choice where it was measured; timed again on any other host (one line on stderr says so)."""
    here = host_fingerprint(device)
    if recorded is not None and recorded.host == here:
        return recorded, False
    if recorded is None:  # the build's measurement: the host to itself, as a timed LoadGen run has it
        from ..harness.timing_lock import timed_run

        with timed_run(f"kernel timing {where}"):
            return choose(model, device, rows), False
    fresh = choose(model, device, rows)  # no lock: a LoadGen child opens engines while its parent holds the host
    print(
        f"note: {where}: engine built on {recorded.host}; kernels re-timed on {here}: {fresh.describe()}",
        file=sys.stderr,
    )
    return fresh, True
