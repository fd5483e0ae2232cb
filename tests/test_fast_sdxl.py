"""The SDXL engine's speed knobs (native INT8 linears, channels-last, torch.compile, batch buckets) keep its images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlperf_round import engines
from mlperf_round.backends.torch_sdxl import TorchSDXL, bucket, buckets
from mlperf_round.benchmarks.sdxl import DiffusionGeneration, TinySDXL
from mlperf_round.diffusion import pipeline
from mlperf_round.diffusion.quantize import calibrate, quantize_unet, save_unet
from mlperf_round.metrics.psnr import psnr
from mlperf_round.params import BuildParams, DeepCacheParams

CAPTIONS = ["a red cat sitting on a table", "two old dogs walking along the street", "a boat"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny pipeline, its INT8 SmoothQuant UNet (calibrated on steps 0..7 of 20) and the fixed latent."""
    root = tmp_path_factory.mktemp("fast-sdxl")
    pipeline.build_tiny_pipeline(TinySDXL(), root / "pipeline")
    pipe = pipeline.load_pipeline(root / "pipeline")
    latents = pipeline.make_latents(TinySDXL().image_size, 0)
    stats, _ = calibrate(pipe, CAPTIONS[:2], latents, 8, 20, 8.0, 2)
    unet = pipeline.load_pipeline(root / "pipeline").unet
    quantized, _ = quantize_unet(unet, stats, alpha=0.8)
    save_unet(quantized, root / "unet", quantized=True)
    torch.save(latents, root / "latents.pt")
    return root


def engine(parts: Path, name: str, deepcache: int = 0, **build) -> TorchSDXL:
    out = parts / "engines" / name
    out.mkdir(parents=True)
    engines.build_image_engine(
        "stable-diffusion-xl",
        "int8_sq",
        BuildParams(max_batch_size=4, **build),
        DiffusionGeneration(),
        DeepCacheParams(interval=deepcache),
        parts / "pipeline",
        parts / "unet",
        parts / "latents.pt",
        out,
    )
    return TorchSDXL(out)


def test_native_int8_and_channels_last_render_the_emulated_images(parts):
    ref = engine(parts, "emulated", kernels="emulated")
    fast = engine(parts, "native", kernels="native", channels_last=True)
    assert ref.kernels["native_int8_linears"] == 0 and ref.kernels["emulated_linears_by_choice"] > 0
    assert fast.kernels["native_int8_linears"] > 0 and fast.kernels["int8_convs_weights_baked"] > 0
    assert fast.kernels["fake_quant_layers_left"] == 0
    assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = ref.generate(CAPTIONS), fast.generate(CAPTIONS)
    assert a.shape == b.shape == (3, 64, 64, 3)
    # the same INT8 grid and scales; INT32 accumulation and memory layout move a few pixels by a level or two
    assert psnr(a, b) > 40, f"native INT8 images are {psnr(a, b):.1f} dB from the emulated ones"


def test_auto_kernels_time_both_int8_candidates_and_keep_the_faster(parts):
    auto = engine(parts, "auto")  # BuildParams' default
    record = auto.kernel_record
    timings, choice = record["timings_us"]["int8"], record["choice"]["int8"]
    assert set(record["choice"]) == {"int8"} and record["rows"] == auto.spec.kernel_rows() > 0
    assert choice == ("native" if timings["native"] < timings["emulated"] else "emulated"), record
    linears = auto.kernels["native_int8_linears"] + auto.kernels["emulated_linears_by_choice"]
    assert auto.kernels["native_int8_linears"] == (linears if choice == "native" else 0) and linears > 0
    assert auto.kernels["kernels_int8"] == choice and auto.kernels["kernels_retimed"] is False


def test_batch_buckets_are_powers_of_two_up_to_the_limit():
    assert [bucket(n, 32) for n in (1, 2, 3, 5, 8, 9, 31, 32)] == [1, 2, 4, 8, 8, 16, 32, 32]
    assert bucket(5, 6) == 6 and buckets(6) == [1, 2, 4, 6] and buckets(32) == [1, 2, 4, 8, 16, 32]


def test_compile_scope_is_the_whole_unet_or_its_blocks_under_deepcache(parts):
    """Compilation is lazy: building the engine wraps the modules; the first call compiles (GPU test below)."""
    whole = engine(parts, "compiled", kernels="native", compile="default")
    assert whole.compiled == {
        "channels_last": False,
        "compile": "default",
        "compiled_modules": 2,
        "compile_scope": "unet",
    }
    assert whole.pipe.unet._compiled_call_impl is not None and whole.pipe.vae.decoder._compiled_call_impl is not None
    cached = engine(parts, "compiled-deepcache", deepcache=3, compile="max-autotune")
    blocks = [m for m in cached.pipe.unet.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert cached.compiled["compile_scope"] == "blocks" and len(blocks) == cached.compiled["compiled_modules"] - 1 > 2
    assert cached.pipe.unet._compiled_call_impl is None  # DeepCache's per-step choice stays in Python, outside graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("deepcache", [0, 3])
def test_compiled_engine_on_cuda_renders_the_eager_images(parts, deepcache):
    name = f"cuda-{deepcache}"
    ref = engine(parts, f"{name}-eager", deepcache=deepcache, device="cuda", dtype="float16")
    fast = engine(
        parts,
        f"{name}-fast",
        deepcache=deepcache,
        device="cuda",
        dtype="float16",
        kernels="native",
        compile="reduce-overhead",
        channels_last=True,
    )
    fast.warmup()
    a, b = ref.generate(CAPTIONS), fast.generate(CAPTIONS)
    assert psnr(a, b) > 30, f"compiled native fp16/INT8 images are {psnr(a, b):.1f} dB from eager ones"
