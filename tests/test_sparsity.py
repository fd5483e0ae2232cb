"""2:4 sparsity with Model Optimizer on a tiny GQA Llama, and the compressed 2:4 checkpoint format."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mlperf_round.errors import InputError, RoundError
from mlperf_round.optimization import sparsity

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _llama(intermediate: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(0, 128, (2, 16), generator=g),
            "attention_mask": torch.ones(2, 16, dtype=torch.long),
        }
        for _ in range(4)
    ]


@pytest.fixture(scope="module")
def sparse(batches):
    return sparsity.sparsify(_llama(), "sparsegpt", batches)


@pytest.fixture(scope="module")
def fp8(sparse, batches):
    import modelopt.torch.quantization as mtq

    def loop(m):
        with torch.no_grad():
            for b in batches:
                m(**b)

    return mtq.quantize(copy.deepcopy(sparse[0]), mtq.FP8_DEFAULT_CFG, loop)


def _bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _assert_bit_exact(ours, theirs):
    assert ours.keys() == theirs.keys()
    for k, t in theirs.items():
        assert ours[k].dtype == t.dtype and torch.equal(_bits(ours[k]), _bits(t)), k


@pytest.mark.parametrize("method", ["sparsegpt", "sparse_magnitude"])
def test_every_attention_and_mlp_linear_becomes_24(method, batches):
    model, report = sparsity.sparsify(_llama(), method, batches)
    layers = report["sparsified_layers"]
    assert len(layers) == 14 and report["dense_layers"] == ["lm_head"] and report["method"] == method
    assert {n.rsplit(".", 1)[-1] for n in layers} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert sparsity.measure_24(model, layers) == {
        "groups_24_share": 1.0,
        "zero_fraction": 0.5,
        "layers_fully_24": 14,
        "layers": 14,
    }
    assert sparsity.measure_24(copy.deepcopy(model).to(torch.bfloat16), layers)["groups_24_share"] == 1.0
    assert sparsity.measure_24(model, ["lm_head"])["zero_fraction"] == 0.0
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))  # exported
    q = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.signbit(q[q == 0]).any()  # pruned zeros are plain +0.0
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0]).logits).all()


def test_fp8_on_top_keeps_24(sparse, fp8):
    layers = sparse[1]["sparsified_layers"]
    mods = dict(fp8.named_modules())
    assert all(type(mods[n]).__name__ == "QuantLinear" for n in layers)
    assert sparsity.measure_24(fp8, layers)["groups_24_share"] == 1.0
    assert sparsity.measure_24(fp8, layers)["zero_fraction"] == 0.5
    for n in layers:  # the fake-quantized weight the kernels see keeps the pattern too
        assert bool(sparsity._groups_ok(mods[n].weight_quantizer(mods[n].weight)).all()), n


@pytest.mark.parametrize("method", ["sparsegpt", "sparse_magnitude"])
def test_a_layer_modelopt_skips_is_an_error(method, batches):
    # intermediate 130: gate/up (130, 64) fail both shape rules, and modelopt only warns
    with pytest.warns(UserWarning, match="Skipping"):
        with pytest.raises(RoundError, match=r"model\.layers\.0\.mlp\.gate_proj \(130, 64\)"):
            sparsity.sparsify(_llama(130), method, batches)


def _load_dir(d):
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("dtype,shard", [(torch.float32, None), (torch.bfloat16, "60KB")])
def test_compressed_checkpoint_round_trips_bit_exact(sparse, tmp_path, dtype, shard):
    model, report = copy.deepcopy(sparse[0]).to(dtype), sparse[1]
    with torch.no_grad():  # modelopt's own export leaves -0.0 where it masked negative weights
        model.model.layers[1].mlp.down_proj.weight.neg_()
    model.save_pretrained(tmp_path / "dense", safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    sizes = sparsity.compress_checkpoint(tmp_path / "dense", tmp_path / "24", report["sparsified_layers"])
    assert sizes["compressed_tensors"] == 14 and sizes["compressed_bytes"] < sizes["dense_bytes"]
    assert sizes["compressed_bytes"] == sum(f.stat().st_size for f in (tmp_path / "24").glob("*.safetensors"))
    print(f"\n{dtype} checkpoint: {sizes}")
    stored = _load_dir(tmp_path / "24")
    assert "model.layers.0.self_attn.q_proj.weight" not in stored
    assert stored["model.layers.0.self_attn.q_proj.weight.values_24"].shape == (64, 32)
    assert stored["model.layers.0.self_attn.k_proj.weight.index_24"].shape == (32, 8)
    assert [k for k in stored if k.endswith(".signs_24")] == ["model.layers.1.mlp.down_proj.weight.signs_24"]
    assert (tmp_path / "24" / "config.json").read_bytes() == (tmp_path / "dense" / "config.json").read_bytes()
    assert len(json.loads((tmp_path / "24" / sparsity.MANIFEST).read_text())["tensors"]) == 14
    if shard:  # the shard map names exactly the stored tensors
        files = {f.name for f in (tmp_path / "24").glob("*.safetensors")}
        assert len(files) > 1
        weight_map = json.loads((tmp_path / "24" / "model.safetensors.index.json").read_text())["weight_map"]
        assert weight_map.keys() == stored.keys() and set(weight_map.values()) == files
    _assert_bit_exact(sparsity.decompress_checkpoint(tmp_path / "24"), _load_dir(tmp_path / "dense"))
    # the same layers named without the leading "model." still find their weights
    bare = [n.removeprefix("model.") for n in report["sparsified_layers"]]
    assert sparsity.compress_checkpoint(tmp_path / "dense", tmp_path / "bare", bare) == sizes


def test_compressed_fp8_export_round_trips_bit_exact(sparse, fp8, tmp_path):
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import load_file

    clone = copy.deepcopy(fp8)  # the export turns the model's weights into float8 in place
    clone.config.architectures = ["LlamaForCausalLM"]
    export_hf_checkpoint(clone, dtype=torch.float16, export_dir=str(tmp_path / "fp8"))
    dense = load_file(str(tmp_path / "fp8" / "model.safetensors"))
    assert dense["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    sizes = sparsity.compress_checkpoint(tmp_path / "fp8", tmp_path / "24", sparse[1]["sparsified_layers"])
    assert sizes["compressed_tensors"] == 14 and sizes["compressed_bytes"] < sizes["dense_bytes"]
    print(f"\nFP8 checkpoint: {sizes}")
    stored = load_file(str(tmp_path / "24" / "model.safetensors"))
    assert stored["model.layers.0.mlp.up_proj.weight.values_24"].dtype == torch.float8_e4m3fn
    assert "model.layers.0.mlp.up_proj.weight_scale" in stored and "lm_head.weight" in stored
    assert (tmp_path / "24" / "hf_quant_config.json").exists()
    _assert_bit_exact(sparsity.decompress_checkpoint(tmp_path / "24"), dense)


def test_compressing_a_dense_weight_is_an_error(tmp_path):
    model = _llama()
    model.save_pretrained(tmp_path / "dense", safe_serialization=True)
    with pytest.raises(RoundError, match=r"model\.layers\.0\.mlp\.down_proj\.weight \(64, 128\) is not 2:4"):
        sparsity.compress_checkpoint(tmp_path / "dense", tmp_path / "24", sparsity.decoder_linears(model))


def test_a_corrupt_index_is_an_input_error(sparse, tmp_path):
    from safetensors.torch import load_file, save_file

    sparse[0].save_pretrained(tmp_path / "dense", safe_serialization=True)
    sparsity.compress_checkpoint(tmp_path / "dense", tmp_path / "24", sparse[1]["sparsified_layers"])
    path = tmp_path / "24" / "model.safetensors"
    tensors = load_file(str(path))
    key = "model.layers.0.mlp.down_proj.weight.index_24"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(
        InputError, match=r"model\.safetensors: the 2:4 tensors of model\.layers\.0\.mlp\.down_proj\.weight"
    ):
        sparsity.decompress_checkpoint(tmp_path / "24")
