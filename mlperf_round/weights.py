"""Which weight files a checkpoint directory is read from: safetensors, or transformers' PyTorch shards read safely.

A pickle (`.bin`, `.pt`, `.ckpt`) can run code when it is loaded. Safetensors cannot, and are
preferred wherever a directory has them. Transformers' `pytorch_model*.bin` shards (MLCommons'
GPT-J checkpoint is shipped so) are read only through `torch.load(weights_only=True)`, which
rebuilds tensors and containers and refuses any other object; transformers passes it by default,
and the loaders here check each shard the same way first, so a refused one is one line naming it.
Params refuse every other pickle before anything is fetched (params.refused_pickle); this refuses a
directory that holds only such pickles, whoever put them there. The other pickles the project reads
(MLPerf's latents.pt, Model Optimizer's modelopt.pth, which the quantize stage writes) also go
through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from .errors import InputError
from .params import PICKLE_SUFFIXES, TORCH_WEIGHTS


def torch_shards(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).glob("*.bin") if TORCH_WEIGHTS.fullmatch(p.name))


def check_weights(model_dir: Path) -> bool:
    """True when the checkpoint is read from safetensors (each one checked whole), False when from transformers'
    PyTorch shards (each one opened with weights_only: nothing but tensors comes out of it). Anything else, such as
    a directory of other pickles, is refused naming the file."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return True
    tensors = sorted(model_dir.rglob("*.safetensors"))
    for path in tensors:
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise InputError(f"{path}: not a whole safetensors file ({str(err).splitlines()[0][:160]})") from None
    if tensors:
        return True
    shards = torch_shards(model_dir)
    if shards:
        for path in shards:
            check_torch_shard(path)
        return False
    pickles = sorted(p for p in model_dir.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise InputError(
            f"{pickles[0]}: pickle weights are refused (loading one can run code); "
            "convert the checkpoint to .safetensors"
        )
    return True


def check_torch_shard(path: Path) -> None:
    """The shard opened as transformers will open it, with weights_only: a refused object is one line naming it."""
    import torch

    try:
        # the zip format loads onto the meta device: every record is checked, no tensor's bytes are read
        state = torch.load(path, map_location="meta" if _zip(path) else "cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(
            f"{path}: refused by torch.load(weights_only=True), which loads tensors only ({first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict of tensors")


def _zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def safetensors_only(model_dir: Path) -> None:
    """For the loaders that read safetensors alone (diffusers components, CLIP): anything else is refused."""
    if not check_weights(model_dir):
        raise InputError(f"{torch_shards(model_dir)[0]}: this loader reads .safetensors weights only")
