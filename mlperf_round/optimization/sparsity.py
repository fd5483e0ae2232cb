"""2:4 structured sparsity: the open-division Llama 2 70B recipe of MLPerf v4.0, and its disk format.

Model Optimizer prunes every attention and MLP Linear to 2 non-zeros per 4 consecutive inputs,
post-training, then `mts.export` bakes the zeros into plain nn.Linear weights (FP8 and export
need that). modelopt skips a layer that breaks its shape rule with only a warning: checked here.
On disk a 2:4 weight [out, in] is `<w>.values_24` (kept values, same dtype, [out, in/2]) plus
`<w>.index_24` (uint8 [out, in/8]: two 2-bit positions p0 < p1 per group, two groups a byte, low
nibble first); `<w>.signs_24` (bitmask [out, in/8]) restores dropped -0.0s, so it is bit-exact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import InputError, ParamsError, RoundError

METHODS = ("sparsegpt", "sparse_magnitude")
MANIFEST = "sparsity_24.json"
_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # bit views, any dtype


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT[t.element_size()])


def _nonzero(w: torch.Tensor) -> torch.Tensor:
    """Numeric non-zeros, on the bit pattern so float8 works too: ±0.0 are zeros."""
    b = _bits(w.detach())
    return (b & torch.iinfo(b.dtype).max) != 0 if w.is_floating_point() else b != 0


def _groups_ok(w: torch.Tensor) -> torch.Tensor:
    """[out, ceil(in/4)]: True where a group of 4 inputs has at most 2 non-zeros (zero-padded tail)."""
    nz = _nonzero(w).reshape(w.shape[0], -1)
    nz = torch.nn.functional.pad(nz, (0, -nz.shape[1] % 4))
    return nz.reshape(nz.shape[0], -1, 4).sum(-1) <= 2


def decoder_linears(model: torch.nn.Module) -> list[str]:
    """Linears inside the repeated decoder blocks (a ModuleList index in the name): never lm_head."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and any(p.isdigit() for p in n.split(".")) and "lm_head" not in n
    ]


def sparsify(model: torch.nn.Module, method: str, batches: list[dict]) -> tuple[torch.nn.Module, dict]:
    """Prune every decoder Linear to 2:4 with modelopt and bake the zeros in; report what was pruned."""
    import modelopt.torch.sparsity as mts

    if method not in METHODS:
        raise ParamsError(f"sparsity method {method!r} is not one of {', '.join(METHODS)}")
    targets = decoder_linears(model)
    if not targets:
        raise RoundError(f"{type(model).__name__}: no Linear layer inside decoder blocks to sparsify")
    config = {}
    if method == "sparsegpt":
        if not batches:
            raise RoundError("sparsegpt needs calibration batches for its Hessians")
        # a plain iterator: modelopt tests `None in [data_loader, ...]`, which tqdm's __eq__ breaks
        config = {"data_loader": iter(tqdm(batches, desc="sparsegpt", unit="batch")), "collect_func": lambda b: b}
    rules = {"nn.Linear": {"*": None, **{n: {} for n in targets}}, "nn.Conv2d": {"*": None}}
    model = mts.export(mts.sparsify(model, [(method, rules)], config=config))
    modules = dict(model.named_modules())
    for name in targets:
        w = modules[name].weight
        if not bool(_groups_ok(w).all()):
            raise RoundError(
                f"{method}: {name} {tuple(w.shape)} was left dense (modelopt skips shapes it cannot "
                "prune: sparsegpt needs both dims % 4, sparse_magnitude out % 8 and in % 16)"
            )
        with torch.no_grad():
            w.masked_fill_(w == 0, 0.0)  # mask * negative weight leaves -0.0; store plain zeros
    dense = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in targets]
    return model, {"method": method, "sparsified_layers": targets, "dense_layers": dense}


def measure_24(model: torch.nn.Module, layers: list[str]) -> dict:
    """How 2:4 the named Linears are: share of groups of 4 inputs with at most 2 non-zeros."""
    modules, ok, groups, zeros, numel, full = dict(model.named_modules()), 0, 0, 0, 0, 0
    for name in layers:
        if not isinstance(w := getattr(modules.get(name), "weight", None), torch.Tensor):
            raise RoundError(f"measure_24: the model has no weighted layer {name}")
        g = _groups_ok(w)
        ok, groups, full = ok + int(g.sum()), groups + g.numel(), full + bool(g.all())
        zeros, numel = zeros + int((~_nonzero(w)).sum()), numel + w.numel()
    return {
        "groups_24_share": ok / groups if groups else 0.0,
        "zero_fraction": zeros / numel if numel else 0.0,
        "layers_fully_24": full,
        "layers": len(layers),
    }


def _pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    out, n = w.shape
    bits = _bits(w).reshape(out, n // 4, 4)
    rank = torch.where(_nonzero(w).reshape(out, n // 4, 4), 0, torch.where(bits != 0, 1, 2))
    pos = rank.argsort(dim=-1, stable=True)[..., :2].sort(dim=-1).values  # values, then -0.0, then +0.0
    values = bits.gather(-1, pos).reshape(out, n // 2).view(w.dtype)
    codes = (pos[..., 0] | pos[..., 1] << 2).reshape(out, n // 8, 2)
    index = (codes[..., 0] | codes[..., 1] << 4).to(torch.uint8)
    dropped = bits.scatter(-1, pos, 0).reshape(out, n) != 0  # a -0.0 outside the kept pair
    shifts = torch.arange(8, dtype=torch.uint8)
    signs = (dropped.reshape(out, n // 8, 8).to(torch.uint8) << shifts).sum(-1, dtype=torch.uint8)
    return values, index, signs if bool(dropped.any()) else None


def _unpack(values: torch.Tensor, index: torch.Tensor, signs: torch.Tensor | None) -> torch.Tensor | None:
    """The dense weight, or None when the tensors do not fit together."""
    if (
        values.dim() != 2
        or index.dim() != 2
        or index.dtype != torch.uint8
        or index.shape[0] != values.shape[0]
        or values.shape[1] != 4 * index.shape[1]
    ):
        return None
    out, n = index.shape[0], 8 * index.shape[1]
    codes = torch.stack([index & 15, index >> 4], -1).reshape(out, n // 4).long()
    pos = torch.stack([codes & 3, codes >> 2], -1)
    if bool((pos[..., 0] >= pos[..., 1]).any()):
        return None
    vbits = _bits(values)
    dense = torch.zeros(out, n // 4, 4, dtype=vbits.dtype).scatter_(-1, pos, vbits.reshape(out, n // 4, 2))
    if signs is not None:
        if signs.dtype != torch.uint8 or signs.shape != index.shape:
            return None
        neg = ((signs.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).bool().reshape(out, n // 4, 4)
        if bool(neg.gather(-1, pos).any()):  # a sign bit may only mark a dropped position
            return None
        dense = torch.where(neg, torch.iinfo(dense.dtype).min, dense)  # the sign bit alone: -0.0
    return dense.reshape(out, n).view(values.dtype)


def _resolve(keys: set[str], layers: list[str], where: Path) -> dict[str, str]:
    """{checkpoint key: layer}, one rule for all layers: same names, or one leading component
    ('model.') less or more in the checkpoint; never a guess per tensor."""
    layers = list(dict.fromkeys(layers))
    strip = [n.split(".", 1)[-1] for n in layers]
    extra = sorted({k.split(".", 1)[0] + "." for k in keys if "." in k})
    candidates = [[n + ".weight" for n in layers], [n + ".weight" for n in strip]]
    candidates += [[p + n + ".weight" for n in layers] for p in extra]
    found = [c for c in candidates if len(set(c)) == len(layers) and set(c) <= keys]
    if not found:
        missing = next(n for n in layers if n + ".weight" not in keys)
        raise RoundError(f"{where}: no weight for layer {missing} (tried with and without a leading prefix)")
    return dict(zip(found[0], layers))


def compress_checkpoint(src_dir: Path, dst_dir: Path, layers: list[str]) -> dict:
    """Write src_dir's checkpoint with the named 2:4 weights as values + 2-bit indices; sizes are measured."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    files = sorted(src_dir.glob("*.safetensors"))
    if not files:
        raise InputError(f"{src_dir}: no *.safetensors file")
    if dst_dir.resolve() == src_dir.resolve():
        raise RoundError(f"{dst_dir}: the compressed checkpoint must not overwrite its source")
    meta, keys = {}, set()
    for f in files:  # resolve every layer before writing anything
        with safe_open(str(f), "pt") as h:
            meta[f], keys = h.metadata(), keys | set(h.keys())
    targets = _resolve(keys, layers, src_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    manifest, dense, renamed = {}, [], {}
    for f in files:
        tensors = load_file(str(f))
        for key in [k for k in tensors if k in targets]:
            t = tensors[key]
            if t.dim() != 2 or not bool(_groups_ok(t).all()):
                raise RoundError(f"{f.name}: {key} {tuple(t.shape)} is not 2:4 sparse along its input dimension")
            if t.shape[1] % 8:
                dense.append(key)
                continue
            parts = dict(zip((".values_24", ".index_24", ".signs_24"), _pack(tensors.pop(key))))
            tensors.update({key + suf: v for suf, v in parts.items() if v is not None})
            renamed[key] = [key + suf for suf, v in parts.items() if v is not None]
            manifest[key] = {"file": f.name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        save_file(tensors, str(dst_dir / f.name), metadata=meta[f])
    for p in src_dir.iterdir():
        if p.suffix == ".safetensors":
            continue
        if p.name.endswith(".safetensors.index.json"):  # the shard map must name the new tensors
            index_json = json.loads(p.read_text())
            wm = index_json.get("weight_map", {})
            for key, new in renamed.items():
                if key in wm:
                    wm.update(dict.fromkeys(new, wm.pop(key)))
            (dst_dir / p.name).write_text(json.dumps(index_json, indent=2))
        elif p.is_dir():
            shutil.copytree(p, dst_dir / p.name, dirs_exist_ok=True)
        else:
            shutil.copy2(p, dst_dir / p.name)
    (dst_dir / MANIFEST).write_text(
        json.dumps(
            {"format": "2:4 values_24 + index_24 (+ signs_24)", "tensors": manifest, "kept_dense": dense}, indent=2
        )
    )
    return {
        "dense_bytes": sum(f.stat().st_size for f in files),
        "compressed_bytes": sum(f.stat().st_size for f in dst_dir.glob("*.safetensors")),
        "compressed_tensors": len(manifest),
    }


def decompress_checkpoint(src_dir: Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a compressed checkpoint, bit-exact to what was compressed."""
    from safetensors.torch import load_file

    files = sorted(src_dir.glob("*.safetensors"))
    if not files:
        raise InputError(f"{src_dir}: no *.safetensors file")
    state = {}
    for f in files:
        tensors = load_file(str(f))
        for key in [k for k in tensors if k.endswith(".values_24")]:
            base = key.removesuffix(".values_24")
            index, signs = tensors.pop(base + ".index_24", None), tensors.pop(base + ".signs_24", None)
            dense = None if index is None or base in tensors else _unpack(tensors.pop(key), index, signs)
            if dense is None:
                raise InputError(
                    f"{f}: the 2:4 tensors of {base} are inconsistent (values/index/signs shapes or codes)"
                )
            state[base] = dense
        stray = [k for k in tensors if k.endswith((".index_24", ".signs_24"))]
        if stray:
            raise InputError(f"{f}: {stray[0]} has no matching .values_24 tensor")
        state.update(tensors)
    return state
