"""Quantizing from stored statistics gives what Model Optimizer's own calibration gives."""

from __future__ import annotations

import copy

import pytest
import torch

from mlperf_round.optimization import calibration, quantization


@pytest.fixture(scope="module")
def tiny():
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    cfg = GPTJConfig(vocab_size=96, n_positions=128, n_embd=32, n_layer=2, n_head=4, rotary_dim=8, n_inner=64)
    model = GPTJForCausalLM(cfg).eval()
    batches = [{"input_ids": torch.randint(0, 96, (2, 24))} for _ in range(3)]
    return model, batches


def _amax(model):
    return {
        n: (m.input_quantizer.amax.clone(), m.weight_quantizer.amax.clone())
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.input_quantizer.is_enabled
    }


def test_fp8_from_statistics_equals_modelopt_calibration(tiny):
    import modelopt.torch.quantization as mtq

    model, batches = tiny
    stats = calibration.collect_absmax(copy.deepcopy(model), batches)
    ours, summary = quantization.quantize(copy.deepcopy(model), "fp8", stats)

    def loop(m):
        for b in batches:
            m(**b)

    theirs = mtq.quantize(copy.deepcopy(model), quantization._config("fp8", False), loop)
    a, b = _amax(ours), _amax(theirs)
    assert a.keys() == b.keys() and len(a) == len(summary["quantized_layers"]) > 0
    for name in a:
        torch.testing.assert_close(a[name][0], b[name][0], msg=f"input amax of {name}")
        torch.testing.assert_close(a[name][1], b[name][1], msg=f"weight amax of {name}")
    assert "lm_head" in summary["skipped_layers"]


def test_smoothquant_keeps_the_function_and_tames_outliers(tiny):
    model, batches = tiny
    stats = calibration.collect_absmax(copy.deepcopy(model), batches)
    sq, summary = quantization.quantize(copy.deepcopy(model), "int8_sq", stats, alpha=0.5)
    x = batches[0]["input_ids"]
    with torch.no_grad():
        ref, out = model(input_ids=x).logits, sq(input_ids=x).logits
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.1, f"INT8 SmoothQuant moved the logits by {rel:.3f}"
    layer = summary["quantized_layers"][0]
    mod = dict(sq.named_modules())[layer]
    # smoothed activations have a smaller spread of per-channel maxima than the raw ones
    smoothed = stats[layer] * mod.input_quantizer.pre_quant_scale
    assert smoothed.max() / smoothed.min() < stats[layer].max() / stats[layer].min()


def test_save_and_load_restore_the_quantized_model_exactly(tiny, tmp_path):
    model, batches = tiny
    stats = calibration.collect_absmax(copy.deepcopy(model), batches)
    q, _ = quantization.quantize(copy.deepcopy(model), "fp8", stats)
    model.config.architectures = ["GPTJForCausalLM"]
    quantization.save(q, tmp_path / "m", quantized=True)
    back = quantization.load(tmp_path / "m")
    x = batches[1]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(q(input_ids=x).logits, back(input_ids=x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["fp8", "int8_sq"])
def test_the_quantized_layers_alone_rebuild_the_quantized_model_exactly(tiny, tmp_path, precision):
    """The quantize stage writes only what quantization changed (grid values in E4M3 / int8, ranges, SmoothQuant's
    scales) and names the source; loading rebuilds the same fake-quantized model, bit for bit."""
    from safetensors import safe_open

    from mlperf_round.optimization import quantized_checkpoint

    model, batches = tiny
    model.config.architectures = ["GPTJForCausalLM"]
    model.save_pretrained(tmp_path / "source" / "model")  # a download stage's output
    stats = calibration.collect_absmax(copy.deepcopy(model), batches)
    q, summary = quantization.quantize(copy.deepcopy(model), precision, stats, alpha=0.5)
    written = quantized_checkpoint.save(
        q, tmp_path / "quantize" / "model", summary["quantized_layers"], precision, False, tmp_path / "source"
    )
    assert not (tmp_path / "quantize/model/model.safetensors").exists()
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    assert written < full / 2, (written, full)  # one byte a quantized weight, nothing unchanged
    with safe_open(str(tmp_path / "quantize/model" / quantized_checkpoint.TENSORS_FILE), "pt") as f:
        weight = f.get_tensor(summary["quantized_layers"][0] + ".weight")
    assert weight.dtype == (torch.float8_e4m3fn if precision == "fp8" else torch.int8)
    layer = q.get_submodule(summary["quantized_layers"][0])
    whole, in_rows = quantized_checkpoint._grid(layer, chunk=1 << 30), quantized_checkpoint._grid(layer, chunk=40)
    assert torch.equal(whole[0].view(torch.uint8), in_rows[0].view(torch.uint8))  # rounded a few rows at a time alike
    back = quantization.load(tmp_path / "quantize" / "model")
    x = batches[1]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(q(input_ids=x).logits, back(input_ids=x).logits, rtol=0, atol=0)
    (tmp_path / "source" / "model").rename(tmp_path / "gone")
    with pytest.raises(Exception, match="re-run download"):
        quantization.load(tmp_path / "quantize" / "model")


def test_the_export_for_serving_stacks_holds_e4m3_weights_with_their_scales(tiny, tmp_path):
    """recipe.export_hf: Model Optimizer's unified checkpoint, the layout TensorRT-LLM, vLLM and SGLang read."""
    import json

    from safetensors import safe_open

    model, batches = tiny
    stats = calibration.collect_absmax(copy.deepcopy(model), batches)
    q, summary = quantization.quantize(copy.deepcopy(model), "fp8", stats)
    result = quantization.export_deployable(q, tmp_path / "deployable")
    assert result["quant_algo"] == "FP8"
    assert json.loads((tmp_path / "deployable/hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    layer = summary["quantized_layers"][0]
    with safe_open(str(next((tmp_path / "deployable").glob("*.safetensors"))), "pt") as f:
        assert f.get_tensor(f"{layer}.weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor(f"{layer}.weight_scale").numel() == 1 and f"{layer}.input_scale" in f.keys()
