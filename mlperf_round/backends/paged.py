"""In-flight batching over a paged KV cache, for decoder LLMs with Llama's layer layout.

Sequences join the running batch at any step a slot and enough KV blocks are free, and
leave it the step they finish; their blocks go back to the pool at once. The pool is one
tensor of fixed-size blocks per layer; a sequence's block table maps its positions to
slots. Admission follows TensorRT-LLM's GUARANTEED_NO_EVICT policy: a sequence is admitted
only when the pool can hold it at its longest, so nothing is ever evicted, while blocks are
still taken on demand as it grows. The same code runs on the CPU and on a CUDA device.

The layers' own modules (norms, projections, MLP, rotary embedding) do the math, so
Model Optimizer's quantized layers run as they were calibrated; attention over the paged
cache is torch's scaled_dot_product_attention with grouped-query heads.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .engine import Event


class PoolExhausted(RuntimeError):
    pass


class BlockPool:
    """Fixed-size KV blocks from one preallocated pool; counts what it ever handed out at once."""

    def __init__(
        self,
        layers: int,
        blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (layers, blocks * block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.size, self.block_size = blocks, block_size
        self.free: deque[int] = deque(range(blocks))
        self.high_water = 0

    @property
    def used(self) -> int:
        return self.size - len(self.free)

    def take(self) -> int:
        if not self.free:
            raise PoolExhausted(f"KV pool of {self.size} blocks is exhausted")
        block = self.free.popleft()
        self.high_water = max(self.high_water, self.used)
        return block

    def give_back(self, blocks: list[int]) -> None:
        self.free.extend(blocks)


@dataclass
class Sequence:
    rid: int
    prompt: list[int]
    max_new: int
    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # generated so far
    cached: int = 0  # positions whose K/V are in the pool

    def slots(self, block_size: int, start: int, stop: int) -> list[int]:
        return [self.blocks[p // block_size] * block_size + p % block_size for p in range(start, stop)]


class InflightEngine:
    """Greedy generation with in-flight batching; `submit` queues, `step` advances every sequence."""

    def __init__(
        self,
        model,
        *,
        max_batch: int,
        block_size: int,
        pool_blocks: int,
        max_input: int,
        max_new: int,
        min_new: int,
        eos_token_id: int,
        policy: str = "inflight",
        kv_scales: dict | None = None,
        max_num_tokens: int = 8192,
    ):
        cfg = model.config
        self.model, self.body = model, model.model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_batch, self.max_input, self.max_new, self.min_new = max_batch, max_input, max_new, min_new
        self.eos, self.policy = eos_token_id, policy
        self.max_num_tokens = max_num_tokens  # prompt tokens per prefill pass (its attention mask is that squared)
        # FP8 KV cache: E4M3 storage, per-layer K and V scales (absmax / 448) measured on calibration prompts
        self.kv_scales = None
        if kv_scales is not None:
            self.kv_scales = {
                n: torch.tensor(kv_scales[n], dtype=torch.float32, device=self.device) for n in ("k", "v")
            }
        store = torch.float8_e4m3fn if self.kv_scales is not None else self.dtype
        self.pool = BlockPool(
            cfg.num_hidden_layers, pool_blocks, block_size, self.kv_heads, self.head_dim, store, self.device
        )
        self.observe = False  # record K/V absmax (calibration only: it syncs the device every layer)
        self.kv_absmax = torch.zeros((2, cfg.num_hidden_layers), dtype=torch.float32)
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.reserved = 0  # blocks promised to active sequences but not yet taken
        self.steps = 0
        self.trace: list[tuple[int, str, int]] = []  # (step, "admit" | "finish", rid)

    # ------------------------------------------------------------ queue
    def submit(self, rid: int, prompt: np.ndarray | list[int], max_new: int | None = None) -> None:
        ids = [int(t) for t in prompt][-self.max_input :]
        if not ids:
            raise ValueError(f"request {rid}: empty prompt")
        seq = Sequence(rid, ids, min(max_new or self.max_new, self.max_new))
        if self._worst_blocks(seq) > self.pool.size:
            raise PoolExhausted(
                f"request {rid} needs {self._worst_blocks(seq)} KV blocks at its longest; "
                f"the pool has {self.pool.size} (raise build.kv_pool_blocks)"
            )
        self.waiting.append(seq)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    def _worst_blocks(self, seq: Sequence) -> int:
        # the last generated token is never fed back, so its K/V is never stored
        return math.ceil((len(seq.prompt) + seq.max_new - 1) / self.pool.block_size)

    # ------------------------------------------------------------ scheduling
    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit what fits, prefill it, then decode one token for every running sequence."""
        self.steps += 1
        events: list[Event] = []
        admitted = self._admit()
        for group in self._prefill_groups(admitted):
            for seq, token in zip(group, self._pick(group, self._prefill(group))):
                events += self._append(seq, token)
        running = [s for s in self.active if s not in admitted]  # the admitted decode from the next step
        if running:
            for seq, token in zip(running, self._pick(running, self._decode(running))):
                events += self._append(seq, token)
        return events

    def _prefill_groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Admitted prompts in passes of at most max_num_tokens tokens (a longer prompt goes alone)."""
        groups: list[list[Sequence]] = []
        total = 0
        for seq in seqs:
            if not groups or total + len(seq.prompt) > self.max_num_tokens:
                groups.append([])
                total = 0
            groups[-1].append(seq)
            total += len(seq.prompt)
        return groups

    def _admit(self) -> list[Sequence]:
        if self.policy == "static" and self.active:
            return []  # a static batch runs to its end before the next starts
        admitted = []
        while self.waiting and len(self.active) < self.max_batch:
            seq = self.waiting[0]
            worst = self._worst_blocks(seq)
            if len(self.pool.free) - self.reserved < worst:
                break  # first come, first served: no overtaking by shorter prompts
            self.waiting.popleft()
            self.reserved += worst
            self.active.append(seq)
            admitted.append(seq)
            self.trace.append((self.steps, "admit", seq.rid))
        return admitted

    def _grow(self, seq: Sequence, upto: int) -> None:
        while len(seq.blocks) * self.pool.block_size < upto:
            seq.blocks.append(self.pool.take())
            self.reserved -= 1

    def _pick(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Greedy tokens for a batch, EOS barred below min_new: one device-to-host copy per step, not per sequence."""
        young = [j for j, seq in enumerate(seqs) if len(seq.tokens) < self.min_new]
        if young and 0 <= self.eos < logits.shape[-1]:
            logits[torch.tensor(young, device=logits.device), self.eos] = float("-inf")
        return logits.argmax(dim=-1).tolist()

    def _append(self, seq: Sequence, token: int) -> list[Event]:
        seq.tokens.append(token)
        events = []
        if len(seq.tokens) == 1:
            events.append(Event(seq.rid, "first", np.asarray([token], dtype=np.int32)))
        if token == self.eos or len(seq.tokens) >= seq.max_new:
            events.append(Event(seq.rid, "done", np.asarray(seq.tokens, dtype=np.int32)))
            self._finish(seq)
        return events

    def _finish(self, seq: Sequence) -> None:
        self.active.remove(seq)
        self.reserved -= self._worst_blocks(seq) - len(seq.blocks)
        self.pool.give_back(seq.blocks)
        seq.blocks = []
        self.trace.append((self.steps, "finish", seq.rid))

    # ------------------------------------------------------------ model
    def _rope(self, hidden: torch.Tensor, positions: torch.Tensor):
        return self.body.rotary_emb(hidden, positions[None])

    def _layers(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, attend) -> torch.Tensor:
        """x: [tokens, hidden]; writes every token's K/V into its slot, then `attend(q, layer)`."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = self._rope(x[None], positions)
        n = x.shape[0]
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, n, self.heads, self.head_dim)
            k = attn.k_proj(h).view(1, n, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(n, self.kv_heads, self.head_dim)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
            if self.observe:
                self.kv_absmax[0, i] = max(self.kv_absmax[0, i], float(k.abs().max()))
                self.kv_absmax[1, i] = max(self.kv_absmax[1, i], float(v.abs().max()))
            self.pool.k[i, slots] = self._store(k[0], "k", i)
            self.pool.v[i, slots] = self._store(v, "v", i)
            out = attend(q[0], k[0], v, i, attn.scaling)  # [tokens, heads, head_dim]
            x = x + attn.o_proj(out.reshape(n, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.body.norm(x)

    def _store(self, x: torch.Tensor, name: str, layer: int) -> torch.Tensor:
        if self.kv_scales is None:
            return x.to(self.pool.k.dtype)
        return (x.float() / self.kv_scales[name][layer]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)

    def _load(self, x: torch.Tensor, name: str, layer: int, dtype: torch.dtype) -> torch.Tensor:
        if self.kv_scales is None:
            return x.to(dtype)
        return (x.float() * self.kv_scales[name][layer]).to(dtype)

    def _prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """All new prompts as one ragged batch: block-diagonal causal attention over their own tokens."""
        bs = self.pool.block_size
        ids, positions, slots, owner = [], [], [], []
        for j, seq in enumerate(seqs):
            self._grow(seq, len(seq.prompt))
            ids += seq.prompt
            positions += range(len(seq.prompt))
            slots += seq.slots(bs, 0, len(seq.prompt))
            owner += [j] * len(seq.prompt)
            seq.cached = len(seq.prompt)
        dev = self.device
        ids_t = torch.tensor(ids, device=dev)
        pos_t = torch.tensor(positions, device=dev)
        own = torch.tensor(owner, device=dev)
        mask = (own[:, None] == own[None, :]) & (pos_t[:, None] >= pos_t[None, :])

        def attend(q, k, v, layer, scale):
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None],
                k.transpose(0, 1)[None],
                v.transpose(0, 1)[None],
                attn_mask=mask[None, None],
                scale=scale,
                enable_gqa=True,
            )
            return out[0].transpose(0, 1)

        x = self._layers(self.body.embed_tokens(ids_t), pos_t, torch.tensor(slots, device=dev), attend)
        last = torch.tensor([i for i, (a, b) in enumerate(zip(owner, owner[1:] + [-1])) if a != b], device=dev)
        return self.model.lm_head(x[last]).float()

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One new token per sequence, attending over its cached positions through the block table."""
        bs, dev = self.pool.block_size, self.device
        for seq in seqs:
            self._grow(seq, seq.cached + 1)
        # the block table, then every position's slot from it on the device: per step, host work grows with the
        # sequences' blocks, not their tokens (a 1,000-token sequence is 63 entries at 16 tokens a block, not 1,000)
        lengths = torch.tensor([seq.cached + 1 for seq in seqs])
        width = int(lengths.max())
        blocks = torch.zeros((len(seqs), -(-width // bs)), dtype=torch.long)
        for j, seq in enumerate(seqs):
            blocks[j, : len(seq.blocks)] = torch.tensor(seq.blocks)
        blocks, lengths = blocks.to(dev), lengths.to(dev)
        positions = torch.arange(width, device=dev)
        table = blocks[:, positions // bs] * bs + positions % bs  # [batch, width]; past a sequence's end: masked
        valid = positions[None, :] < lengths[:, None]
        ids_t = torch.tensor([seq.tokens[-1] for seq in seqs], device=dev)
        pos_t = lengths - 1
        new_slots = table[torch.arange(len(seqs), device=dev), pos_t]

        def attend(q, k, v, layer, scale):
            keys = self._load(self.pool.k[layer][table], "k", layer, q.dtype)  # [batch, width, kv_heads, head_dim]
            values = self._load(self.pool.v[layer][table], "v", layer, q.dtype)
            out = F.scaled_dot_product_attention(
                q[:, :, None],
                keys.transpose(1, 2),
                values.transpose(1, 2),
                attn_mask=valid[:, None, None],
                scale=scale,
                enable_gqa=True,
            )
            return out[:, :, 0]

        x = self._layers(self.body.embed_tokens(ids_t), pos_t, new_slots, attend)
        for seq in seqs:
            seq.cached += 1
        return self.model.lm_head(x).float()


def measure_kv_scales(model, prompts: list[list[int]], max_input: int) -> dict[str, list[float]]:
    """Per-layer FP8 scales of K (after RoPE) and V: their absmax over the prompts' prefill, / 448.

    One prompt at a time: the pool and the prefill's activations stay one prompt's size beside the model."""
    eng = InflightEngine(
        model,
        max_batch=1,
        block_size=16,
        pool_blocks=math.ceil((max_input + 1) / 16),
        max_input=max_input,
        max_new=1,
        min_new=0,
        eos_token_id=-1,
    )
    eng.observe = True
    for i, p in enumerate(prompts):
        eng.submit(i, p)
    while not eng.idle:
        eng.step()
    amax = eng.kv_absmax.clamp(min=1e-6) / 448.0
    return {"k": amax[0].tolist(), "v": amax[1].tolist()}


def default_pool_blocks(max_batch: int, max_input: int, max_new: int, block_size: int) -> int:
    return max_batch * math.ceil((max_input + max_new) / block_size)
