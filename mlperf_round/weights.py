"""Checkpoints are read from safetensors only: a pickle (`.bin`, `.pt`, `.ckpt`) can run code when it is loaded.

Params refuse pickle files before anything is fetched (params.PICKLE_SUFFIXES); this refuses a
directory that holds them in place of safetensors, whoever put it there, and every loader of the
project passes `use_safetensors=True`. The pickles the project does read (MLPerf's latents.pt,
Model Optimizer's modelopt.pth, which the quantize stage writes) go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .params import PICKLE_SUFFIXES


def safetensors_only(model_dir: Path) -> None:
    """Refuse, naming the file, pickle weights in place of safetensors and a safetensors file that is not whole
    (truncated, or not safetensors at all): its header is read, and must cover the file."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return
    tensors = sorted(model_dir.rglob("*.safetensors"))
    if not tensors:
        pickles = sorted(p for p in model_dir.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise InputError(f"{pickles[0]}: pickle weights are refused (loading one can run code); "
                             "convert the checkpoint to .safetensors")
    for path in tensors:
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise InputError(f"{path}: not a whole safetensors file ({str(err).splitlines()[0][:160]})") from None
