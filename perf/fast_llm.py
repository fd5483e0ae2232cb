"""The round's LLM engine at GPT-J 6B's or Llama 2 70B's shape under LoadGen Offline, next to transformers, in one run.

    python perf/fast_llm.py --model llama2-70b --shape tiny        # any machine, a minute: the whole path, tiny
    python perf/fast_llm.py --model gptj --shape tiny
    python perf/fast_llm.py --model llama2-70b --shape real --device cuda --queries 1024   # one H200
    python perf/fast_llm.py --model gptj --shape real --device cuda --queries 512           # one H100 / H200

Weights are random, made on the device (nothing is downloaded; 70B in bf16 would not fit one
GPU, so its linears are made in E4M3 directly). GPT-J goes through the round's own calibrate
and quantize code (per-channel absmax on the prompts, Model Optimizer's FP8 recipe), then its
linears become native FP8 GEMMs. Random weights never stop on EOS, so each query's output
length is fixed: GPT-J 128 new tokens (beam search 4), Llama drawn around MLPerf's 294 tokens
per sample. The engine is the round's (`TorchLLM`: in-flight batching over the paged FP8 KV
cache for Llama, static beam-search batches for GPT-J), served by the round's LoadGen SUT.
The baseline is transformers `generate` on a static batch, timed in the same process.

Limits, measured in the same run: the GEMM ceiling at the model's MLP shape (bf16 and FP8),
and device memory bandwidth (a device-to-device copy). Achieved TFLOP/s counts 2 FLOPs per
weight per token processed (prompt and output; attention not counted); achieved bytes/s counts
the weights read once per decoding step plus the KV cache each step reads (Llama).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlperf_round.backends import lowp  # noqa: E402
from mlperf_round.backends.torch_llm import EngineSpec, TorchLLM, package_versions  # noqa: E402

SHAPES = {
    ("llama2-70b", "real"): dict(
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
    ("llama2-70b", "tiny"): dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
    ("gptj", "real"): dict(vocab_size=50400, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_positions=2048),
    ("gptj", "tiny"): dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=2048),
}
# (input mean, input sd, input max, output mean, output max) in tokens; tiny divides lengths by 8
WORKLOAD = {"gptj": (800, 300, 1919, 128, 128), "llama2-70b": (290, 250, 1024, 294, 1024)}


def workload(model: str, shape: str, n: int, vocab: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Prompts drawn like MLPerf's datasets, and each query's fixed output length."""
    mean_in, sd_in, max_in, mean_out, max_out = WORKLOAD[model]
    div = 8 if shape == "tiny" else 1
    rng = np.random.default_rng(seed)
    lens_in = np.clip(rng.normal(mean_in, sd_in, n), 16 * div, max_in).astype(int) // div
    if model == "gptj":  # beam search to the length limit: MLPerf's reference answers hold it at 128
        lens_out = np.full(n, mean_out // div)
    else:
        lens_out = np.clip(rng.exponential(mean_out, n), 2 * div, max_out).astype(int) // div
    prompts = [rng.integers(1, vocab - 1, size=int(k)).astype(np.int64) for k in lens_in]
    return prompts, [int(max(2, k)) for k in lens_out]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int = 10) -> float:
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def limits(k: int, n: int, device: torch.device) -> dict[str, float]:
    """GEMM TFLOP/s (bf16; FP8 on _scaled_mm) at a 4096-row GEMM of the model's MLP shape; copy bytes/s."""
    m = 4096 if device.type == "cuda" else 64
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(n, k, device=device, dtype=dtype)
    out = {"gemm_tflops_bf16": 2 * m * k * n / timed(lambda: a @ b.t(), device) / 1e12}
    one = torch.ones((), device=device)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    out["gemm_tflops_fp8"] = (
        2
        * m
        * k
        * n
        / timed(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=dtype), device)
        / 1e12
    )
    size = (2 << 30) if device.type == "cuda" else (64 << 20)
    src, dst = torch.empty(size, dtype=torch.uint8, device=device), torch.empty(size, dtype=torch.uint8, device=device)
    out["copy_bytes_per_s"] = 2 * size / timed(lambda: dst.copy_(src), device)
    return out


def _random_fp8_llama(cfg, device: torch.device, dtype: torch.dtype):
    """Llama with E4M3 linears made in place, layer by layer (70B in bf16 exceeds one GPU)."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    for layer in model.model.layers:
        for parent, names in (
            (layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (layer.mlp, ("gate_proj", "up_proj", "down_proj")),
        ):
            for name in names:
                meta = getattr(parent, name)
                w = torch.randn(meta.out_features, meta.in_features, device=device, dtype=dtype, generator=gen) * 0.02
                w_scale = w.abs().amax().float() / lowp.FP8_MAX
                # random weights, no data: activations after RMSNorm are ~N(0, 1); a range of 8 keeps them on the grid
                setattr(parent, name, lowp.Fp8Linear(w, w_scale, torch.tensor(8.0 / lowp.FP8_MAX, device=device)))
                del w
    for mod in model.modules():  # what is still on meta (embeddings, norms, lm_head), in the engine dtype
        if any(t.is_meta for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))):
            mod.to_empty(device=device, recurse=False)
            mod.to(dtype)  # leaf modules: the E4M3 linears are never cast (a float8 tensor is floating point too)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02, generator=gen)
    with torch.device(device):
        model.model.rotary_emb = LlamaRotaryEmbedding(cfg)
    return model.eval()


def build(model_name: str, shape: str, device: torch.device, dtype: torch.dtype, prompts: list[np.ndarray]):
    """(baseline model or None, fast engine, facts): the round's quantize path where the model fits."""
    from transformers import GPTJConfig, LlamaConfig

    if model_name == "llama2-70b":
        cfg = LlamaConfig(**SHAPES[(model_name, shape)], eos_token_id=None, bos_token_id=0, pad_token_id=0)
        fast = _random_fp8_llama(cfg, device, dtype)
        return None, fast, {"quantized_by": "random E4M3 weights made on the device (per-tensor scales)"}
    from mlperf_round.optimization import calibration, quantization

    cfg = GPTJConfig(**SHAPES[(model_name, shape)], eos_token_id=None, bos_token_id=0, pad_token_id=0)
    from transformers import GPTJForCausalLM

    with torch.device(device):  # initialised where it runs: seconds on a GPU, not minutes on the host
        base = GPTJForCausalLM(cfg).to(dtype).eval()
    batches = [{"input_ids": torch.from_numpy(p[None]).to(device)} for p in prompts[:8]]
    import copy

    stats = calibration.collect_absmax(
        copy.deepcopy(base), batches
    )  # the calibrate stage's statistics (it inserts observers)
    fast, summary = quantization.quantize(copy.deepcopy(base), "fp8", stats)  # the quantize stage's recipe
    done = lowp.convert(fast, device)
    return base, fast, {"quantized_by": "the round's calibrate + quantize (modelopt FP8)", **done.summary()}


class Served:
    """What the round's LoadGen SUT serves: prompts by sample index, each query's fixed output length."""

    def __init__(self, engine: TorchLLM, prompts: list[np.ndarray], out_lens: list[int]):
        self.engine, self.spec, self.prompts = engine, engine.spec, prompts
        self.out_len = {id(p): n for p, n in zip(prompts, out_lens)}
        self.steps = self.kv_tokens_read = self.tokens_out = 0

    def sample_ids(self, index: int) -> np.ndarray:
        return self.prompts[index]

    def warmup(self) -> None:
        from mlperf_round.backends.torch_llm import generate_all

        generate_all(self.scheduler(), self.prompts[: self.spec.max_batch_size])
        self.steps = self.kv_tokens_read = self.tokens_out = 0

    def scheduler(self):
        inner, served = self.engine.scheduler(), self

        class Scheduler:
            idle = property(lambda _: inner.idle)

            def submit(self, rid, prompt):
                if hasattr(inner, "active"):  # in-flight: the query's own length; static: min = max new tokens
                    inner.submit(rid, prompt, max_new=served.out_len[id(prompt)])
                else:
                    inner.submit(rid, prompt)

            def step(self):
                served.steps += 1
                served.kv_tokens_read += sum(s.cached for s in getattr(inner, "active", []))
                events = inner.step()
                served.tokens_out += sum(len(ev.tokens) for ev in events if ev.kind == "done")
                return events

        return Scheduler()


def loadgen_offline(served: Served, model_name: str, n: int, outdir: Path, expected_qps: float) -> dict:
    """One LoadGen Offline performance run through the round's SUT and settings; the round's log parser reads it."""
    import mlperf_loadgen as lg

    from mlperf_round.harness.logs import performance_metrics
    from mlperf_round.harness.settings import test_settings
    from mlperf_round.harness.sut import System

    outdir.mkdir(parents=True, exist_ok=True)
    conf = outdir / "user.conf"
    conf.write_text(
        f"{model_name}.Offline.target_qps = {expected_qps}\n{model_name}.Offline.min_duration = 0\n"
        f"{model_name}.Offline.min_query_count = {n}\n{model_name}.*.performance_sample_count_override = {n}\n"
    )
    system = System(lambda: served, list(range(n)), report_first_token=True, desc="Offline")
    ts = test_settings(conf, model_name, "Offline", "PerformanceOnly")
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut = lg.ConstructSUT(system.issue_query, system.flush_queries)
    qsl = lg.ConstructQSL(n, n, system.load_samples, system.unload_samples)
    start = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut, qsl, ts, log, "")
    finally:
        system.close()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if system.error:
        raise SystemExit(f"the SUT failed: {system.error.strip().splitlines()[-1]}")
    return {**performance_metrics(outdir, "Offline"), "wall_s": time.perf_counter() - start}


def baseline(model, prompts: list[np.ndarray], out_len: int, beams: int, batch: int, device: torch.device) -> dict:
    """transformers generate, one static batch of `batch` queries, left-padded, a fixed output length."""
    chosen = prompts[:batch]
    width = max(len(p) for p in chosen)
    ids = torch.zeros((len(chosen), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(chosen):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.from_numpy(p), 1
    ids, mask = ids.to(device), mask.to(device)

    def run():
        with torch.inference_mode():
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                num_beams=beams,
                do_sample=False,
                max_new_tokens=out_len,
                min_new_tokens=out_len,
                pad_token_id=0,
                eos_token_id=None,
            )

    run() if device.type == "cuda" else None  # warm-up: kernels and allocator
    sync(device)
    start = time.perf_counter()
    out = run()
    sync(device)
    elapsed = time.perf_counter() - start
    new = (out.shape[1] - width) * len(chosen)
    return {
        "queries": len(chosen),
        "samples_per_s": len(chosen) / elapsed,
        "tokens_per_s": new / elapsed,
        "wall_s": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["gptj", "llama2-70b"], default="llama2-70b")
    ap.add_argument("--shape", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--queries", type=int, default=64, help="Offline queries (the dataset size of the run)")
    ap.add_argument(
        "--max-batch", type=int, default=0, help="engine batch limit (0: 256 real in-flight, 32 beam, 16 tiny)"
    )
    ap.add_argument("--baseline-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="LoadGen logs and the JSON result (default: a temp folder)")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    out = args.out or Path(tempfile.mkdtemp(prefix="fast_llm_"))
    shape = SHAPES[(args.model, args.shape)]
    vocab = shape["vocab_size"]
    prompts, out_lens = workload(args.model, args.shape, args.queries, vocab)
    beams = 4 if args.model == "gptj" else 1
    inflight = args.model == "llama2-70b"
    max_batch = args.max_batch or (16 if args.shape == "tiny" else 256 if inflight else 32)
    hidden = shape.get("hidden_size", shape.get("n_embd"))
    inner = shape.get("intermediate_size", 4 * hidden)
    result: dict = {
        "model": args.model,
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "queries": args.queries,
        "beams": beams,
        "mean_input_tokens": float(np.mean([len(p) for p in prompts])),
        "mean_output_tokens": float(np.mean(out_lens)),
        "limits": limits(hidden, inner, device),
    }
    t0 = time.perf_counter()
    base, fast, facts = build(args.model, args.shape, device, dtype, prompts)
    result["build_s"], result["build"] = time.perf_counter() - t0, facts
    linear_params = sum(
        m.in_features * m.out_features for m in fast.modules() if isinstance(m, (torch.nn.Linear, lowp.Fp8Linear))
    )
    weight_bytes = sum(m.weight_t.numel() for m in fast.modules() if isinstance(m, lowp.Fp8Linear)) + sum(
        p.numel() * p.element_size() for p in fast.parameters()
    )
    kv_scales = None
    if inflight:
        from mlperf_round.backends.paged import measure_kv_scales

        kv_scales = measure_kv_scales(fast, [p.tolist() for p in prompts[:8]], max(len(p) for p in prompts))
    max_in, max_out = max(len(p) for p in prompts), max(out_lens)
    block = 16
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 8 << 30
    kv_per_token = (
        2
        * fast.config.num_hidden_layers
        * getattr(fast.config, "num_key_value_heads", 1)
        * (hidden // fast.config.num_attention_heads)
        if inflight
        else 0
    )
    pool = (
        min(int(0.8 * free / max(kv_per_token * block, 1)), max_batch * math.ceil((max_in + max_out) / block))
        if inflight
        else 0
    )
    spec = EngineSpec(
        backend="torch",
        benchmark=args.model,
        precision="fp8",
        dtype=str(dtype).split(".")[1],
        max_batch_size=max_batch,
        max_input_len=max_in,
        max_output_len=max_out,
        min_output_len=max_out if not inflight else 1,
        beam_width=beams,
        pad_token_id=0,
        eos_token_id=-1 if inflight else vocab - 1,  # beam search: min = max new tokens bars EOS
        report_first_token=True,
        threads=0,
        versions=package_versions(),
        scheduler="inflight" if inflight else "static",
        kv_block_size=block if inflight else 0,
        kv_pool_blocks=pool,
        device=device.type,
        kv_cache="fp8" if inflight else "auto",
        kernels="native",
    )
    result["engine"] = {k: v for k, v in spec.__dict__.items() if k != "versions"}
    served = Served(TorchLLM.in_memory(fast, spec, kv_scales), prompts, out_lens)
    perf = loadgen_offline(served, args.model, args.queries, out / "offline", expected_qps=10.0)
    tokens = served.tokens_out  # counted as answers completed, not assumed from the fixed lengths
    perf["output_tokens"], perf["output_tokens_expected"] = tokens, sum(out_lens)
    perf["tokens_per_s_generated"] = tokens / perf["wall_s"]
    prompt_tokens = sum(len(p) for p in prompts) * beams
    perf["achieved_tflops"] = 2 * linear_params * (tokens * beams + prompt_tokens) / perf["wall_s"] / 1e12
    decode_steps = served.steps if inflight else served.steps * max_out  # a static step is a whole beam-search batch
    perf["achieved_bytes_per_s"] = (weight_bytes * decode_steps + kv_per_token * served.kv_tokens_read) / perf["wall_s"]
    perf["decode_steps"] = decode_steps
    lim = result["limits"]
    perf["share_of_fp8_gemm_ceiling"] = perf["achieved_tflops"] / lim["gemm_tflops_fp8"]
    perf["share_of_copy_bandwidth"] = perf["achieved_bytes_per_s"] / lim["copy_bytes_per_s"]
    result["round_engine_loadgen_offline"] = perf
    ref_model = base if base is not None else fast  # 70B: no bf16 copy fits; transformers drives the FP8 model
    out_len = max_out if not inflight else int(np.mean(out_lens))
    result["baseline_transformers_generate"] = baseline(ref_model, prompts, out_len, beams, args.baseline_batch, device)
    result["baseline_transformers_generate"]["weights"] = "bf16" if base is not None else "the same FP8 linears"
    result["ratio_samples_per_s"] = perf["samples_per_s"] / result["baseline_transformers_generate"]["samples_per_s"]
    (out / "fast_llm.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
