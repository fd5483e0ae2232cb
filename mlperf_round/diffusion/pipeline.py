"""The SDXL pipeline: a tiny one built locally from configs, or the real one loaded from disk.

The tiny pipeline uses the real component classes (two CLIP text encoders, the second with
a projection; a UNet with SDXL's text-and-time added conditioning; a VAE with SDXL's 8x
downsampling; SDXL base's EulerDiscrete scheduler), so every code path a real checkpoint
takes is taken here too. Initial latents are fixed, as MLPerf fixes them: one latent for
every prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..weights import safetensors_only

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
LATENTS_FILE = "latents.pt"
LATENT_CHANNELS = 4
VAE_SCALE = 8  # SDXL's VAE downsamples 8x


def build_clip_tokenizer(out: Path, max_length: int = 77):
    """CLIP's tokenizer with a character-level vocabulary: deterministic, no training, no download.

    Every byte symbol, alone and as a word end (`</w>`), plus the two specials; no merges.
    `model_max_length` must be set, or the pipeline's max-length padding overflows.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([BOS, EOS] + alphabet + [a + "</w>" for a in alphabet])}
    tok = CLIPTokenizer(
        vocab=vocab, merges=[], model_max_length=max_length, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    tok.save_pretrained(out)
    return tok


def _text_encoder_config(cfg, tok):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=cfg.text_hidden,
        intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=2,
        max_position_embeddings=tok.model_max_length,
        projection_dim=cfg.text_hidden,
        hidden_act="quick_gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def tiny_unet_config(cfg) -> dict:
    """SDXL's UNet layout at the tiny widths of `cfg` (image_size, unet_channels, layers_per_block, text_hidden)."""
    levels = len(cfg.unet_channels)
    return dict(
        sample_size=cfg.image_size // VAE_SCALE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.layers_per_block,
        transformer_layers_per_block=(0,) + (1,) * (levels - 1),  # SDXL: no attention at the top level
        attention_head_dim=(2,) * levels,
        use_linear_projection=True,
        cross_attention_dim=2 * cfg.text_hidden,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + cfg.text_hidden,  # 6 time ids + the pooled projection
        norm_num_groups=8,
    )


def build_tiny_pipeline(cfg, out: Path) -> None:
    """Seeded random weights in SDXL's architecture, saved as a diffusers pipeline directory."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(cfg.seed)
    tok = build_clip_tokenizer(out / "tokenizer")
    tok2 = build_clip_tokenizer(out / "tokenizer_2")
    text_encoder = CLIPTextModel(_text_encoder_config(cfg, tok))
    text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(cfg, tok2))
    unet = UNet2DConditionModel(**tiny_unet_config(cfg))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=cfg.image_size,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(out)


def make_latents(image_size: int, seed: int, count: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    side = image_size // VAE_SCALE
    return torch.randn((count, LATENT_CHANNELS, side, side), generator=gen, dtype=torch.float32)


def load_latents(path: Path) -> torch.Tensor:
    try:
        latents = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"{path}: cannot load the initial latents ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise InputError(
            f"{path}: initial latents must be a (1, 4, h, w) tensor, got "
            f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}"
        )
    return latents


def load_pipeline(model_dir: Path, dtype: str = "float32", unet=None, device: str = "cpu"):
    from diffusers import StableDiffusionXLPipeline

    kwargs = {"unet": unet} if unet is not None else {}
    try:
        safetensors_only(model_dir)
        pipe = StableDiffusionXLPipeline.from_pretrained(
            model_dir,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            local_files_only=True,
            add_watermarker=False,
            **kwargs,
        )
    except (OSError, ValueError, EnvironmentError) as err:
        raise InputError(f"{model_dir}: cannot load the SDXL pipeline ({str(err).splitlines()[0][:200]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(
    pipe,
    prompts: list[str],
    latents: torch.Tensor,
    steps: int,
    guidance: float,
    on_step_end=None,
    output: str = "uint8",
    negative_prompt: str = "",
) -> np.ndarray | torch.Tensor:
    """Images for `prompts`, uint8 (N, H, W, 3): from one shared initial latent (MLPerf), or one each; guided away
    from `negative_prompt` (MLPerf's reference SUT passes one to every image)."""
    unet = pipe.unet
    lat = latents.expand(len(prompts), -1, -1, -1) if latents.shape[0] == 1 else latents
    lat = lat.to(unet.device, unet.dtype)  # the pipeline does not cast
    side = lat.shape[-1] * VAE_SCALE
    kwargs = {"callback_on_step_end": on_step_end} if on_step_end is not None else {}
    if negative_prompt:
        kwargs["negative_prompt"] = [negative_prompt] * len(prompts)
    with torch.no_grad():
        result = pipe(
            prompt=prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=lat,
            height=side,
            width=side,
            output_type="latent" if output == "latent" else "np",
            **kwargs,
        )
    if output == "latent":
        return result.images
    return (np.clip(result.images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
