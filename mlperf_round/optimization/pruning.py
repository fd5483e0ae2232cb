"""Structured pruning of a decoder: whole layers, then attention heads per layer, by importance
measured on the calibration list.

Not Model Optimizer's pruning, and why: in modelopt 0.47 attention heads are a pruning axis
only for Megatron-core models (`mcore_minitron`); its FastNAS search space on a Hugging Face
GPT-J sees Linear widths, which cut q/k/v/out independently and break the head structure.
So the scores are measured here, as Minitron measures them on Megatron models:
- a head's importance is the mean L2 norm of its contribution to the attention output
  (its slice of out_proj applied to its own output), over the calibration tokens;
- a layer's importance is its block influence, 1 - cos(input, output) of the residual stream
  (ShortGPT): a layer that barely turns the stream is the cheapest to drop.

The result is a smaller dense checkpoint of the same class (GPTJForCausalLM): the config keeps
the head size and records the heads each layer kept (ATTENTION_HEADS); `shrink` rebuilds those
shapes before weights are loaded.
"""

from __future__ import annotations

import torch

from ..errors import ParamsError

ATTENTION_HEADS = "mlperf_attention_heads"  # config key: heads kept per layer, in layer order


def _blocks(model) -> torch.nn.ModuleList:
    return model.transformer.h


def _head_dim(model) -> int:
    cfg = model.config
    return cfg.n_embd // cfg.n_head


def _tokens(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask.bool() if mask is not None else torch.ones_like(batch["input_ids"], dtype=torch.bool)


@torch.no_grad()
def importance(model, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(head scores [layers, heads], layer scores [layers]) on the calibration batches."""
    blocks, d = _blocks(model), _head_dim(model)
    heads = [b.attn.q_proj.out_features // d for b in blocks]
    head_sum = [torch.zeros(h, dtype=torch.float64) for h in heads]
    layer_sum = torch.zeros(len(blocks), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    mask: torch.Tensor | None = None
    hooks = []

    def on_out_proj(i):
        def hook(mod, args):
            x = args[0]  # [batch, tokens, heads * d]: each head's output before the projection
            w = mod.weight.view(mod.out_features, heads[i], d)
            per_head = torch.einsum("btnd,ond->btno", x.view(*x.shape[:2], heads[i], d), w).norm(dim=-1)
            head_sum[i] += per_head[mask].sum(dim=0).double()

        return hook

    def on_block(i):
        def hook(mod, args, kwargs, out):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)
            layer_sum[i] += (1 - cos)[mask].sum().double()

        return hook

    for i, b in enumerate(blocks):
        hooks.append(b.attn.out_proj.register_forward_pre_hook(on_out_proj(i)))
        hooks.append(b.register_forward_hook(on_block(i), with_kwargs=True))
    try:
        model.eval()
        for batch in batches:
            mask = _tokens(batch)
            count += mask.sum()
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([s / count for s in head_sum]).float(), (layer_sum / count).float()


def _keep_rows(linear: torch.nn.Linear, rows: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(
        linear.in_features,
        len(rows),
        bias=linear.bias is not None,
        dtype=linear.weight.dtype,
        device=linear.weight.device,
    )
    new.weight.data.copy_(linear.weight.data[rows])
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.data[rows])
    return new


def _keep_columns(linear: torch.nn.Linear, cols: torch.Tensor) -> torch.nn.Linear:
    new = torch.nn.Linear(
        len(cols),
        linear.out_features,
        bias=linear.bias is not None,
        dtype=linear.weight.dtype,
        device=linear.weight.device,
    )
    new.weight.data.copy_(linear.weight.data[:, cols])
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.data)
    return new


def _slice_heads(attn, keep: list[int], d: int) -> None:
    idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    attn.q_proj, attn.k_proj, attn.v_proj = (_keep_rows(getattr(attn, n), idx) for n in ("q_proj", "k_proj", "v_proj"))
    attn.out_proj = _keep_columns(attn.out_proj, idx)
    attn.num_attention_heads = len(keep)


def _reindex(model) -> None:
    """Layer indices address the KV cache: renumber the kept layers 0..n-1."""
    for i, b in enumerate(_blocks(model)):
        b.attn.layer_idx = i
        if hasattr(b, "layer_idx"):
            b.layer_idx = i
    model.config.n_layer = len(_blocks(model))


def prune(model, heads_kept: int, layers_kept: int, batches: list[dict]) -> tuple[torch.nn.Module, dict]:
    """Drop the least important layers, then the least important heads of each kept layer."""
    if model.config.model_type != "gptj":
        raise ParamsError(f"recipe.prune: pruning supports GPT-J, not {model.config.model_type}")
    cfg, d = model.config, _head_dim(model)
    if not 1 <= layers_kept <= cfg.n_layer:
        raise ParamsError(
            f"recipe.prune.layers_kept: {layers_kept} is not between 1 and the model's {cfg.n_layer} layers"
        )
    if not 1 <= heads_kept <= cfg.n_head:
        raise ParamsError(f"recipe.prune.heads_kept: {heads_kept} is not between 1 and the model's {cfg.n_head} heads")
    before = sum(p.numel() for p in model.parameters())
    head_scores, layer_scores = importance(model, batches)
    layers = sorted(torch.argsort(layer_scores, descending=True)[:layers_kept].tolist())
    kept_heads = {}
    for i in layers:
        keep = sorted(torch.argsort(head_scores[i], descending=True)[:heads_kept].tolist())
        _slice_heads(_blocks(model)[i].attn, keep, d)
        kept_heads[i] = keep
    model.transformer.h = torch.nn.ModuleList([_blocks(model)[i] for i in layers])
    _reindex(model)
    setattr(model.config, ATTENTION_HEADS, [heads_kept] * layers_kept)
    after = sum(p.numel() for p in model.parameters())
    return model, {
        "method": "importance on the calibration list (head output norm, block influence)",
        "layers_kept": layers,
        "heads_kept": {str(k): v for k, v in kept_heads.items()},
        "layer_importance": [round(float(s), 6) for s in layer_scores],
        "head_importance": [[round(float(s), 6) for s in row] for row in head_scores],
        "parameters_before": before,
        "parameters_after": after,
    }


def shrink(model) -> torch.nn.Module:
    """Give a model built from a pruned config its pruned shapes (weights are loaded after)."""
    heads = getattr(model.config, ATTENTION_HEADS, None)
    if not heads:
        return model
    d = _head_dim(model)
    for block, n in zip(_blocks(model), heads):
        _slice_heads(block.attn, list(range(n)), d)
    _reindex(model)
    return model


def is_pruned_checkpoint(model_dir) -> bool:
    import json
    from pathlib import Path

    config = Path(model_dir) / "config.json"
    return config.exists() and bool(json.loads(config.read_text()).get(ATTENTION_HEADS))


def load_pruned(model_dir, dtype: torch.dtype) -> torch.nn.Module:
    """A pruned checkpoint: the class built from its config, given its pruned shapes, then its safetensors weights."""
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model = shrink(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32))
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {model_dir}")
    state = {}
    for f in files:
        state.update(load_file(f))
    if model.config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(dtype)
