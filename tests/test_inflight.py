"""The torch backend's in-flight batching and paged KV cache, on a tiny random Llama (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlperf_round.backends.paged import InflightEngine, PoolExhausted
from mlperf_round.backends.torch_llm import generate_all

VOCAB, EOS = 97, 96


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,
        eos_token_id=EOS,
        bos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).double().eval()  # float64: batched and unbatched math agree to ~1e-12


def prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, EOS - 1, size=n).tolist() for n in lengths]


def engine(model, **kw):
    args = dict(max_batch=3, block_size=4, pool_blocks=64, max_input=64, max_new=20, min_new=1, eos_token_id=EOS)
    return InflightEngine(model, **{**args, **kw})


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_paged_greedy_equals_transformers_generate(model, device):
    model = model.to(device)
    ps = prompts((5, 17, 9, 30, 3, 12, 1))
    outs = generate_all(engine(model), ps)
    for p, out in zip(ps, outs):
        ids = torch.tensor([p], device=device)
        ref = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=0,
        )[0, len(p) :]
        assert out.tolist() == ref.tolist()


def run(eng, lengths_new):
    for rid, (p, n) in enumerate(zip(prompts([6] * len(lengths_new), seed=1), lengths_new)):
        eng.submit(rid, p, max_new=n)
    done, peak = {}, 0
    while not eng.idle:
        for ev in eng.step():
            if ev.kind == "done":
                done[ev.rid] = eng.steps
        peak = max(peak, eng.pool.used)
        assert eng.pool.used <= eng.pool.size
    return done, peak


def test_short_queries_join_and_leave_while_a_long_one_runs(model):
    eng = engine(model, max_batch=2, eos_token_id=-1, max_new=64)  # no EOS: lengths are exactly max_new
    done, _ = run(eng, [60, 3, 3, 3, 3, 3])
    admitted = {rid: step for step, kind, rid in eng.trace if kind == "admit"}
    assert done[0] >= 60
    assert all(admitted[r] < done[0] and done[r] < done[0] for r in range(1, 6)), (admitted, done)
    assert eng.pool.used == 0 and eng.reserved == 0  # every block returned on completion

    static = engine(model, max_batch=2, eos_token_id=-1, max_new=64, policy="static")
    done_static, _ = run(static, [60, 3, 3, 3, 3, 3])
    admitted_static = {rid: step for step, kind, rid in static.trace if kind == "admit"}
    assert admitted_static[2] > done_static[0]  # the static batch waits for its longest member
    assert max(done.values()) < max(done_static.values())


def test_pool_is_never_exceeded_and_admission_waits_for_blocks(model):
    # 6-token prompts + 20 new tokens need 7 blocks of 4 at their longest: a 16-block pool holds two
    eng = engine(model, max_batch=8, pool_blocks=16, eos_token_id=-1)
    done, peak = run(eng, [20] * 6)
    assert len(done) == 6 and peak <= 16 and eng.pool.high_water <= 16
    admitted = [step for step, kind, _ in eng.trace if kind == "admit"]
    assert admitted[:2] == [1, 1] and admitted[2] > 1  # the third waited although a batch slot was free
    with pytest.raises(PoolExhausted, match="raise build.kv_pool_blocks"):
        engine(model, pool_blocks=4).submit(99, prompts([30])[0])


def test_fp8_kv_cache_stores_e4m3_with_measured_scales(model):
    from mlperf_round.backends.paged import measure_kv_scales

    m32 = model.float()
    try:
        scales = measure_kv_scales(m32, prompts([20] * 8, seed=4), max_input=64)
        assert len(scales["k"]) == len(scales["v"]) == 2 and min(scales["k"] + scales["v"]) > 0
        fp8, base = engine(m32, kv_scales=scales), engine(m32)
        assert fp8.pool.k.dtype == torch.float8_e4m3fn and fp8.pool.k.element_size() == 1
        for eng in (fp8, base):
            eng.submit(0, prompts([20], seed=4)[0])
            eng.step()  # prefill: the prompt's K/V go into the pool
        for layer in range(2):
            for name in ("k", "v"):
                ref = getattr(base.pool, name)[layer, :20].float()
                got = fp8._load(getattr(fp8.pool, name)[layer, :20], name, layer, torch.float32)
                # E4M3 keeps 3 mantissa bits: 1/16 relative, plus the subnormal step below 2^-6 of the scale
                assert torch.allclose(got, ref, rtol=1 / 16, atol=scales[name][layer] * 2**-6), (name, layer)
        assert generate_all(engine(m32, kv_scales=scales), prompts((5, 9), seed=5))  # and it serves
    finally:
        model.double()


def test_prefill_passes_of_max_num_tokens_give_the_same_tokens(model):
    """Admitted prompts prefill in passes of at most max_num_tokens (its attention mask is that squared)."""
    ps = prompts((5, 17, 9, 30, 3, 12, 1))
    eng = engine(model, max_batch=7, max_num_tokens=20)
    passes = []
    original = eng._prefill
    eng._prefill = lambda seqs: passes.append([len(s.prompt) for s in seqs]) or original(seqs)
    assert [o.tolist() for o in generate_all(eng, ps)] == [
        o.tolist() for o in generate_all(engine(model, max_batch=7), ps)
    ]
    assert passes == [[5], [17], [9], [30], [3, 12, 1]]  # in order; a longer prompt than the budget goes alone
