"""The round's SDXL engines (closed INT8 SmoothQuant, open DeepCache) under LoadGen Offline next to eager fp16,
in one run.

    python perf/fast_sdxl.py --shape tiny                      # any machine, about a minute: the whole path
    python perf/fast_sdxl.py --shape real --device cuda        # one H100 / H200: SDXL's shapes, 1024x1024

Weights are random at SDXL base's shapes, made on the device (nothing is downloaded); the
tokenizers are the round's local character-level CLIP tokenizers. Everything after that is
the round's own code: `calibrate` (statistics from the first 8 of 20 steps), `quantize_unet`
(INT8 SmoothQuant on the v4.0 layer set), `build_image_engine` with the build knobs under test,
and the performance stage's LoadGen Offline run (`run_test`, a child process per engine). The
baseline is the plain eager fp16 pipeline, one image per call, timed in this process.

The limit: the UNet's FLOPs per image, counted once with torch's FlopCounterMode on the fp16
pipeline (for DeepCache, on the cached schedule), over the measured fp16 GEMM ceiling. Each
engine's images for the fixed latent are compared with the eager pipeline's (PSNR).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlperf_round import engines  # noqa: E402
from mlperf_round.benchmarks.sdxl import DiffusionGeneration, TinySDXL
from mlperf_round.diffusion import pipeline  # noqa: E402
from mlperf_round.metrics.psnr import psnr  # noqa: E402
from mlperf_round.params import BuildParams, DeepCacheParams  # noqa: E402

STEPS, GUIDANCE, COLLECTED = 20, 8.0, 8


def real_pipeline(out: Path, device: torch.device) -> None:
    """SDXL base's architecture (2.57 B-parameter UNet, CLIP ViT-L and bigG encoders, 8x VAE), random fp16 weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = pipeline.build_clip_tokenizer(out / "tokenizer")
    tok2 = pipeline.build_clip_tokenizer(out / "tokenizer_2")

    def text(hidden, layers, heads, projection=None):
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            projection_dim=projection or hidden,
            hidden_act="gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )

    with torch.device(device):
        parts = dict(
            text_encoder=CLIPTextModel(text(768, 12, 12)),
            text_encoder_2=CLIPTextModelWithProjection(text(1280, 32, 20, 1280)),
            unet=UNet2DConditionModel(
                sample_size=128,
                in_channels=4,
                out_channels=4,
                layers_per_block=2,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20),
                use_linear_projection=True,
                cross_attention_dim=2048,
                addition_embed_type="text_time",
                addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
                norm_num_groups=32,
            ),
            vae=AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                sample_size=1024,
                scaling_factor=0.13025,
            ),
        )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        tokenizer=tok,
        tokenizer_2=tok2,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
        **{k: v.half() for k, v in parts.items()},
    )
    pipe.save_pretrained(out)


def gemm_ceiling(device: torch.device) -> float:
    """TFLOP/s of an fp16 GEMM at the UNet's widest feed-forward shape (4096 tokens x 1280 -> 10240)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    m, k, n = (4096, 1280, 10240) if device.type == "cuda" else (256, 128, 512)
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e12


def unet_flops_per_image(pipe, latents, deepcache: int) -> float:
    """UNet FLOPs of one image's 20 steps (classifier-free guidance doubles the batch), DeepCache's skips included."""
    from torch.utils.flop_counter import FlopCounterMode

    from mlperf_round.diffusion.deepcache import DeepCache

    cache = DeepCache(pipe.unet, deepcache).enable() if deepcache > 1 else None
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            pipeline.generate(pipe, ["a flop count"], latents, STEPS, GUIDANCE, output="latent")
    finally:
        if cache is not None:
            cache.disable()
    return float(sum(counter.get_flop_counts().get("UNet2DConditionModel", {}).values()) or counter.get_total_flops())


def offline(engine_dir: Path, dataset: Path, n: int, out: Path) -> dict:
    """The performance stage's LoadGen Offline run: a child process that opens the engine, warms it up, serves."""
    from mlperf_round.harness.logs import performance_metrics
    from mlperf_round.harness.run import run_test

    conf = out / "user.conf"
    out.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"stable-diffusion-xl.Offline.target_qps = 2\nstable-diffusion-xl.Offline.min_duration = 0\n"
        f"stable-diffusion-xl.Offline.min_query_count = {n}\n"
        f"stable-diffusion-xl.*.performance_sample_count_override = {n}\n"
    )
    start = time.perf_counter()
    run_test(
        {
            "engine": str(engine_dir),
            "benchmark": "stable-diffusion-xl",
            "dataset": str(dataset),
            "scenario": "Offline",
            "mode": "PerformanceOnly",
            "user_conf": str(conf),
            "outdir": str(out / "run"),
        },
        timeout_s=3000,
    )
    return {**performance_metrics(out / "run", "Offline"), "process_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=0, help="Offline queries per engine (0: 32 real, 64 tiny)")
    ap.add_argument("--batch", type=int, default=0, help="images per UNet call (0: 8 real, 16 tiny)")
    ap.add_argument("--compile", default="", help="torch.compile mode (default: max-autotune on CUDA, off on the CPU)")
    ap.add_argument("--baseline-images", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = "float16" if cuda else "float32"
    n = args.images or (32 if args.shape == "real" else 64)
    batch = args.batch or (8 if args.shape == "real" else 16)
    mode = args.compile or ("max-autotune" if cuda else "off")
    out = args.out or Path(tempfile.mkdtemp(prefix="fast_sdxl_"))
    from mlperf_round.benchmarks.sdxl import generate_captions
    from mlperf_round.diffusion.quantize import calibrate, load_unet, quantize_unet, save_unet

    t0 = time.perf_counter()
    side = 1024 if args.shape == "real" else TinySDXL().image_size
    if args.shape == "real":
        real_pipeline(out / "pipeline", device)
    else:
        pipeline.build_tiny_pipeline(TinySDXL(), out / "pipeline")
    latents = pipeline.make_latents(side, 0)
    torch.save(latents, out / "latents.pt")
    captions = generate_captions(n + 8, seed=0)
    (out / "dataset.json").write_text(json.dumps(captions[:n]))
    result: dict = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "images": n,
        "batch": batch,
        "compile": mode,
        "pipeline_s": time.perf_counter() - t0,
        "gemm_tflops_fp16": gemm_ceiling(device),
    }

    # the round's calibrate and quantize stages' functions: statistics from steps 0..7 of 20, INT8 SmoothQuant
    pipe = pipeline.load_pipeline(out / "pipeline", dtype, device=str(device))
    t0 = time.perf_counter()
    stats, record = calibrate(pipe, [c["caption"] for c in captions[n : n + 4]], latents, COLLECTED, STEPS, GUIDANCE, 2)
    unet, summary = quantize_unet(load_unet(out / "pipeline" / "unet", dtype).to(device), stats, alpha=0.8)
    save_unet(unet, out / "unet-int8", quantized=True)
    del unet
    result["calibrate_quantize_s"] = time.perf_counter() - t0
    result["int8_layers"] = len(summary["quantized_layers"])
    result["unet_flops_per_image"] = {
        "full": unet_flops_per_image(pipe, latents, 0),
        "deepcache": unet_flops_per_image(pipe, latents, 3),
    }

    # baseline: the plain eager fp16 pipeline, one image per call
    probe = [c["caption"] for c in captions[:2]]
    pipeline.generate(pipe, probe[:1], latents, STEPS, GUIDANCE)  # warm-up
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for c in captions[: args.baseline_images]:
        pipeline.generate(pipe, [c["caption"]], latents, STEPS, GUIDANCE)
    if cuda:
        torch.cuda.synchronize()
    base_ips = args.baseline_images / (time.perf_counter() - t0)
    reference = pipeline.generate(pipe, probe, latents, STEPS, GUIDANCE)
    result["baseline_eager_fp16"] = {
        "images_per_s": base_ips,
        "share_of_gemm_ceiling": base_ips * result["unet_flops_per_image"]["full"] / 1e12 / result["gemm_tflops_fp16"],
    }
    del pipe
    if cuda:
        torch.cuda.empty_cache()

    runs = {
        "closed_int8_sq": ("int8_sq", out / "unet-int8", 0),
        "open_deepcache_fp16": ("fp16", out / "pipeline" / "unet", 3),
    }
    for name, (precision, unet_dir, interval) in runs.items():
        build = BuildParams(
            dtype=dtype, device=device.type, max_batch_size=batch, kernels="native", compile=mode, channels_last=cuda
        )
        engine_dir = out / name / "engine"
        engine_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        engines.build_image_engine(
            "stable-diffusion-xl",
            precision,
            build,
            DiffusionGeneration(),
            DeepCacheParams(interval=interval),
            out / "pipeline",
            unet_dir,
            out / "latents.pt",
            engine_dir,
        )
        from mlperf_round.backends.torch_sdxl import TorchSDXL

        engine = TorchSDXL(engine_dir)
        engine.warmup()  # compiles (and fills inductor's cache for the LoadGen child)
        build_s = time.perf_counter() - t0
        images = engine.generate(probe)
        del engine
        if cuda:
            torch.cuda.empty_cache()
        perf = offline(engine_dir, out / "dataset.json", n, out / name)
        flops = result["unet_flops_per_image"]["deepcache" if interval else "full"]
        perf.update(
            build_and_warmup_s=build_s,
            psnr_vs_eager_db=psnr(images, reference),
            max_abs_diff_vs_eager=int(np.abs(images.astype(int) - reference.astype(int)).max()),
            ratio_vs_eager=perf["samples_per_s"] / base_ips,
            share_of_gemm_ceiling=perf["samples_per_s"] * flops / 1e12 / result["gemm_tflops_fp16"],
        )
        result[name] = perf
    (out / "fast_sdxl.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
