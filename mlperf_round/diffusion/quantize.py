"""The v4.0 SDXL recipe on Model Optimizer: INT8 SmoothQuant UNet, calibrated on the first
denoising steps only.

Calibration runs every calibration caption through the whole sampling loop, but the UNet's
quantizers collect statistics only during the first `steps_collected` steps (early steps see
the noisiest latents and the widest activations; later ones would narrow the ranges). The
per-channel input absmax of every Linear and Conv2d is stored; quantization then takes the
v4.0 layer set (ResBlock convolutions; Q, K, V and feed-forward linears of the transformer
blocks), folds SmoothQuant scales into those linears and sets every range from the stored
statistics, without touching data again.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import InputError
from ..optimization.quantization import MODELOPT_FILE, set_ranges
from ..weights import safetensors_only

# every Linear and Conv2d input observed per channel; weights and everything else left alone
_STATS_CFG = {
    "quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*input_quantizer", "parent_class": "nn.Linear", "cfg": {"num_bits": 8, "axis": -1}},
        {"quantizer_name": "*input_quantizer", "parent_class": "nn.Conv2d", "cfg": {"num_bits": 8, "axis": 1}},
    ],
    "algorithm": "max",
}
_W8 = {"num_bits": 8, "axis": 0}  # per output channel
_A8 = {"num_bits": 8, "axis": None}  # per tensor
# the v4.0 layer set: (module-name pattern, SmoothQuant applies)
TARGETS = (
    ("*resnets.*.conv[12]", False),  # ResBlock convolutions
    ("*attn[12].to_[qkv]", True),  # self- and cross-attention Q, K, V
    ("*ff.net.0.proj", True),  # feed-forward in (GEGLU projection)
    ("*ff.net.2", True),  # feed-forward out
)


def int8_config() -> dict:
    entries = [{"quantizer_name": "*", "enable": False}]
    for pattern, _ in TARGETS:
        entries += [
            {"quantizer_name": f"{pattern}.weight_quantizer", "cfg": _W8},
            {"quantizer_name": f"{pattern}.input_quantizer", "cfg": _A8},
        ]
    return {"quant_cfg": entries, "algorithm": "max"}


def calibrate(
    pipe,
    captions: list[str],
    latents: torch.Tensor,
    steps_collected: int,
    total_steps: int,
    guidance: float,
    batch_size: int,
    negative_prompt: str = "",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Per-channel input absmax of the UNet's Linear and Conv2d layers over steps 0..steps_collected-1.

    The pipeline's step-end callback switches the quantizers' statistics off after the last
    collected step; a UNet pre-hook records which steps actually ran with them on.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.nn import TensorQuantizer

    from .pipeline import generate

    record = {"steps_run": 0, "unet_calls_collected": {}}
    state = {"step": 0, "collecting": False}

    def count(module, args, kwargs):
        if state["collecting"]:
            calls = record["unet_calls_collected"]
            calls[state["step"]] = calls.get(state["step"], 0) + 1

    def forward_loop(unet) -> None:
        quantizers = [m for m in unet.modules() if isinstance(m, TensorQuantizer) and m._if_calib]

        def on_step_end(p, i, t, kwargs):
            state["step"] = i + 1
            record["steps_run"] = max(record["steps_run"], i + 1)
            if i == steps_collected - 1:
                for q in quantizers:
                    q.disable_calib()
                state["collecting"] = False
            return kwargs

        batches = [captions[i : i + batch_size] for i in range(0, len(captions), batch_size)]
        for batch in tqdm(
            batches, desc=f"calibrate UNet (steps 0..{steps_collected - 1} of {total_steps})", unit="batch"
        ):
            for q in quantizers:  # re-armed for every batch: each trajectory starts at step 0
                q.enable_calib()
            state.update(step=0, collecting=True)
            generate(
                pipe,
                batch,
                latents,
                total_steps,
                guidance,
                on_step_end=on_step_end,
                output="latent",
                negative_prompt=negative_prompt,
            )

    hook = pipe.unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        mtq.quantize(pipe.unet, copy.deepcopy(_STATS_CFG), forward_loop)
    finally:
        hook.remove()
    stats = {}
    for name, mod in pipe.unet.named_modules():
        q = getattr(mod, "input_quantizer", None)
        if (
            isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))
            and q is not None
            and q.is_enabled
            and q.amax is not None
        ):
            stats[name] = q.amax.detach().float().reshape(-1).cpu().clone()
    collected = sorted(record["unet_calls_collected"])
    return stats, {
        "samples": len(captions),
        "total_steps": total_steps,
        "steps_collected": collected,
        "unet_calls_collected": sum(record["unet_calls_collected"].values()),
        "steps_run": record["steps_run"],
    }


def quantize_unet(unet, stats: dict[str, torch.Tensor], alpha: float) -> tuple[torch.nn.Module, dict]:
    """INT8 weights per channel and activations per tensor on the v4.0 layer set; SmoothQuant on its linears."""
    import fnmatch

    import modelopt.torch.quantization as mtq

    def smooth(name: str, mod) -> bool:
        return isinstance(mod, torch.nn.Linear) and any(fnmatch.fnmatch(name, p) and s for p, s in TARGETS)

    unet = mtq.quantize(unet, int8_config(), forward_loop=None)  # inserts quantizers, calibrates weights only
    done, skipped = set_ranges(unet, stats, (torch.nn.Linear, torch.nn.Conv2d), alpha, smooth, "recipe int8_sq (UNet)")
    kinds = {n: "Conv2d" if isinstance(m, torch.nn.Conv2d) else "Linear" for n, m in unet.named_modules()}
    quantized = [{"layer": n, "kind": kinds[n], "smoothquant": s} for n, s in done]
    return unet, {
        "precision": "int8_sq",
        "smoothquant_alpha": alpha,
        "quantized_layers": quantized,
        "skipped_layers": skipped,
    }


def save_unet(unet, out: Path, quantized: bool) -> None:
    """Config plus weights; a quantized UNet also carries its modelopt state (one file)."""
    out.mkdir(parents=True, exist_ok=True)
    if quantized:
        import modelopt.torch.opt as mto

        unet.save_config(out)
        mto.save(unet, str(out / MODELOPT_FILE))
    else:
        unet.save_pretrained(out, safe_serialization=True)


def load_unet(unet_dir: Path, dtype: str = "float32"):
    """The UNet; a quantized one keeps its weight quantizers: the engine picks its kernels, then rounds what stays
    emulated onto its grid once (`lowp.convert`)."""
    from diffusers import UNet2DConditionModel

    dt = getattr(torch, dtype)
    try:
        if (unet_dir / MODELOPT_FILE).exists():
            import modelopt.torch.opt as mto
            import modelopt.torch.quantization as mtq  # noqa: F401  (registers the modes restore replays)

            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir))
            unet = mto.restore(unet, str(unet_dir / MODELOPT_FILE), weights_only=True)
            return unet.to(dt).eval()
        safetensors_only(unet_dir)
        return UNet2DConditionModel.from_pretrained(unet_dir, dtype=dt, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
        raise InputError(f"{unet_dir}: cannot load the UNet ({str(err).splitlines()[0][:200]})") from None
