"""CLIP score as MLPerf's accuracy_coco.py computes it: 100 x cosine(image, caption), averaged.

The model is a transformers CLIPModel (MLPerf's is open_clip ViT-bigG-14 on laion2b, which
exists in that format too); the tiny round builds a small one with fixed seeds. Images are
prepared as open_clip's transform prepares them (torchvision on a PIL image): the shorter side
resized to the model's input size with PIL's bicubic filter (which antialiases), a center crop,
then CLIP's mean and std. A torch bicubic resize of the tensor, without antialiasing, gives other
pixels at 1024 -> 224, and CLIP's accepted window is 0.2% wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..weights import safetensors_only

MODEL_DIR = "clip"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(path: Path):
    from transformers import AutoTokenizer, CLIPModel

    try:
        safetensors_only(path)
        return CLIPModel.from_pretrained(path, use_safetensors=True).eval(), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot load the CLIP model ({str(err).splitlines()[0][:160]})") from None


def preprocess(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) images as open_clip's transform gives them: Resize(size, bicubic) of the shorter side on a
    PIL image, CenterCrop(size), ToTensor, Normalize(CLIP's mean and std). (N, 3, size, size) float32."""
    from PIL import Image

    out = []
    for image in images:
        h, w = image.shape[:2]
        short, long = (w, h) if w <= h else (h, w)
        other = int(size * long / short)  # torchvision's rounding of the longer side
        new_w, new_h = (size, other) if w <= h else (other, size)
        pil = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        out.append(np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns a ModelOutput from get_*_features, 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_scores(model, tokenizer, images: np.ndarray, captions: list[str], batch: int = 64) -> np.ndarray:
    """Per-image score: 100 x cos(image embedding, caption embedding)."""
    size = model.config.vision_config.image_size
    scores = []
    for i in range(0, len(images), batch):
        img = _pooled(model.get_image_features(pixel_values=preprocess(images[i : i + batch], size)))
        tok = tokenizer(
            captions[i : i + batch],
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            max_length=model.config.text_config.max_position_embeddings,
        )
        txt = _pooled(model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        scores.append((100.0 * (img * txt).sum(dim=-1)).double().numpy())
    return np.concatenate(scores)


def build_tiny_clip(out: Path, seed: int) -> None:
    from transformers import CLIPConfig, CLIPModel

    from ..diffusion.pipeline import build_clip_tokenizer

    tok = build_clip_tokenizer(out)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": tok.model_max_length,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    CLIPModel(config).eval().save_pretrained(out)
