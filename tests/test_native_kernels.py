"""Native FP8 / INT8 GEMMs run the quantize stage's scales and give what Model Optimizer's fake quantization gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mlperf_round.backends import kernel_choice, lowp
from mlperf_round.backends.paged import InflightEngine
from mlperf_round.backends.torch_llm import generate_all
from mlperf_round.optimization import calibration, quantization

VOCAB, EOS = 97, 96
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=EOS,
        bos_token_id=0,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    batches = [{"input_ids": torch.randint(1, EOS, (2, 24))} for _ in range(3)]
    return model, calibration.collect_absmax(copy.deepcopy(model), batches)


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, EOS - 1, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("precision", ["fp8", "int8_sq"])
@pytest.mark.parametrize("device", DEVICES)
def test_native_llm_matches_fake_quantization_token_for_token(llama, precision, device):
    model, stats = llama
    fake, summary = quantization.quantize(copy.deepcopy(model), precision, stats)
    fake = fake.to(device)
    native = copy.deepcopy(fake)
    done = lowp.convert(native, device)
    kinds = done.fp8_linear if precision == "fp8" else done.int8_linear
    assert sorted(kinds) == sorted(summary["quantized_layers"]) and not done.left_fake
    assert not any(
        isinstance(m, torch.nn.Linear) and getattr(m, "input_quantizer", None) is not None
        for n, m in native.named_modules()
        if n in kinds
    ), "a quantized layer was not swapped"
    layer = native.get_submodule(kinds[0])
    assert layer.weight_t.dtype == (torch.float8_e4m3fn if precision == "fp8" else torch.int8)
    scale = layer.w_scale.clone()
    layer.half().float()  # a dtype cast of the model moves, never casts, the quantized weight and its scales
    assert layer.weight_t.dtype in (torch.float8_e4m3fn, torch.int8) and torch.equal(layer.w_scale, scale)

    x = torch.randint(1, EOS, (3, 40), device=device)
    with torch.no_grad():
        ref, out = fake(input_ids=x).logits, native(input_ids=x).logits
    # the same grid and scales; only the accumulation order differs
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)

    ps = _prompts((5, 17, 9, 30, 3))
    args = dict(max_batch=3, block_size=4, pool_blocks=64, max_input=64, max_new=20, min_new=1, eos_token_id=EOS)
    assert [o.tolist() for o in generate_all(InflightEngine(native, **args), ps)] == [
        o.tolist() for o in generate_all(InflightEngine(fake, **args), ps)
    ]


def test_native_int8_unet_linears_and_convs_match_fake_quantization():
    """The SDXL recipe's layer set: INT8 SmoothQuant linears on _int_mm, convolutions with weights baked once."""
    from types import SimpleNamespace

    import modelopt.torch.quantization as mtq
    from diffusers import UNet2DConditionModel

    from mlperf_round.diffusion.pipeline import tiny_unet_config
    from mlperf_round.diffusion.quantize import _STATS_CFG, quantize_unet

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **tiny_unet_config(SimpleNamespace(image_size=64, unet_channels=[16, 32], layers_per_block=1, text_hidden=16))
    ).eval()
    sample = torch.randn(2, unet.config.in_channels, 8, 8)
    t = torch.tensor([500.0, 500.0])
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim)
    added = {
        "text_embeds": torch.randn(
            2, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        ),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
    }

    probe = mtq.quantize(
        copy.deepcopy(unet),
        copy.deepcopy(_STATS_CFG),
        lambda m: m(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added),
    )
    stats = {
        n: m.input_quantizer.amax.detach().float().reshape(-1)
        for n, m in probe.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
        and m.input_quantizer.is_enabled
        and m.input_quantizer.amax is not None
    }
    fake, summary = quantize_unet(copy.deepcopy(unet), stats, alpha=0.8)
    native = copy.deepcopy(fake)
    done = lowp.convert(native)
    linears = [q["layer"] for q in summary["quantized_layers"] if q["kind"] == "Linear"]
    convs = [q["layer"] for q in summary["quantized_layers"] if q["kind"] == "Conv2d"]
    assert sorted(done.int8_linear) == sorted(linears) and linears
    assert sorted(done.int8_conv_weights_baked) == sorted(convs) and convs
    with torch.no_grad():
        ref = fake(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        out = native(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_layers_without_a_native_kernel_are_left_as_calibrated(llama):
    """Per-channel FP8 weights have no per-tensor _scaled_mm: those layers stay fake-quantized and are counted."""
    model, stats = llama
    fake, _ = quantization.quantize(copy.deepcopy(model), "fp8", stats)
    layer = fake.get_submodule("model.layers.0.mlp.up_proj")
    layer.weight_quantizer.reset_amax()
    layer.weight_quantizer.amax = layer.weight.detach().abs().amax(dim=1, keepdim=True)
    done = lowp.convert(fake)
    assert done.left_fake == ["model.layers.0.mlp.up_proj"]
    assert isinstance(fake.get_submodule("model.layers.0.mlp.up_proj"), torch.nn.Linear)
    assert done.summary()["fake_quant_layers_left"] == 1


def test_auto_times_native_and_emulated_at_the_models_shapes_and_keeps_the_faster(llama):
    model, stats = llama
    for precision, kind in (("fp8", "fp8"), ("int8_sq", "int8")):
        fake, _ = quantization.quantize(copy.deepcopy(model), precision, stats)
        choice = kernel_choice.choose(fake, torch.device("cpu"), rows=8)
        t = choice.timings_us[kind]
        assert set(choice.choice) == {kind} and t["native"] > 0 and t["emulated"] > 0
        assert choice.choice[kind] == ("native" if t["native"] < t["emulated"] else "emulated"), choice
        assert choice.host == kernel_choice.host_fingerprint(torch.device("cpu")) and choice.host.startswith("cpu:")
        assert choice.describe().startswith(f"{kind} {choice.choice[kind]} (native ")


def _spec(choice: dict | None):
    from mlperf_round.backends.torch_llm import EngineSpec

    return EngineSpec(
        backend="torch",
        benchmark="llama2-70b",
        precision="fp8",
        dtype="float32",
        max_batch_size=4,
        max_input_len=64,
        max_output_len=8,
        min_output_len=1,
        beam_width=1,
        eos_token_id=EOS,
        pad_token_id=0,
        report_first_token=True,
        threads=0,
        versions={},
        kernels="auto",
        kernel_choice=choice,
    )


def test_a_recorded_choice_is_kept_on_its_host_and_timed_again_on_another(llama, capsys):
    from mlperf_round.backends.torch_llm import place_kernels

    model, stats = llama
    here = kernel_choice.host_fingerprint(torch.device("cpu"))
    # the record says native (whatever is faster here): on the host it was measured on, it is obeyed
    record = {
        "choice": {"fp8": "native"},
        "timings_us": {"fp8": {"native": 1.0, "emulated": 2.0}},
        "host": here,
        "rows": 4,
    }
    fake, _ = quantization.quantize(copy.deepcopy(model), "fp8", stats)
    info, kept = place_kernels(fake, _spec(record), torch.device("cpu"))
    assert (
        info["native_fp8_linears"] == 14 and info["kernels_retimed"] is False and kept == {**record, "lower_bound": {}}
    )
    assert "re-timed" not in capsys.readouterr().err
    # the same engine opened on another machine: timed again there, and said so in one line
    elsewhere = {**record, "host": "cpu:Some Other CPU|2 cpus|2 threads|torch 2.13.0+cpu"}
    fake, _ = quantization.quantize(copy.deepcopy(model), "fp8", stats)
    info, fresh = place_kernels(fake, _spec(elsewhere), torch.device("cpu"), "engine-dir")
    assert info["kernels_retimed"] is True and fresh["host"] == here and fresh["timings_us"]["fp8"]["native"] != 1.0
    assert info["native_fp8_linears"] == (14 if fresh["choice"]["fp8"] == "native" else 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("note: engine-dir: engine built on cpu:Some Other CPU")
        and "re-timed on" in err[0]
    )
