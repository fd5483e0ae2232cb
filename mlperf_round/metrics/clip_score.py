"""CLIP score as MLPerf's accuracy_coco.py computes it: 100 x cosine(image, caption), averaged.

The model is a transformers CLIPModel (MLPerf's is open_clip ViT-bigG-14 on laion2b, which
exists in that format too); the tiny round builds a small one with fixed seeds. Images are
resized to the model's input size (bicubic) and normalized with CLIP's mean and std.
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


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns a ModelOutput from get_*_features, 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_scores(model, tokenizer, images: np.ndarray, captions: list[str], batch: int = 64) -> np.ndarray:
    """Per-image score: 100 x cos(image embedding, caption embedding)."""
    size = model.config.vision_config.image_size
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    scores = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        img = _pooled(model.get_image_features(pixel_values=(x - mean) / std))
        tok = tokenizer(captions[i:i + batch], padding="max_length", truncation=True, return_tensors="pt",
                        max_length=model.config.text_config.max_position_embeddings)
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
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": tok.model_max_length,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    CLIPModel(config).eval().save_pretrained(out)
