"""The streamed safetensors writer: what safetensors itself reads back, and nothing left by a writer that fails."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from mlperf_round.tensor_stream import TensorStream


def tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "a.weight": (torch.randn(5, 7) * 100).to(torch.float8_e4m3fn),
        "a.weight_scale": torch.tensor(0.25),
        "b.weight": torch.randint(-128, 127, (3, 2), dtype=torch.int8),
        "b.scale": torch.rand(3, 1),
        "c": torch.randn(4, dtype=torch.bfloat16),
    }


def test_a_streamed_file_reads_back_tensor_for_tensor(tmp_path):
    ts = tensors()
    with TensorStream(
        tmp_path / "x.safetensors", [(k, v.dtype, v.shape) for k, v in ts.items()], {"format": "pt"}
    ) as out:
        for k, v in ts.items():
            out.write(k, v)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(ts)
        for k, v in ts.items():
            back = f.get_tensor(k)
            assert back.dtype == v.dtype and back.shape == v.shape
            assert (
                torch.equal(back.view(torch.uint8), v.view(torch.uint8))
                if v.dtype == torch.float8_e4m3fn
                else torch.equal(back, v)
            )


def test_a_tensor_out_of_plan_or_a_missing_one_leaves_no_file(tmp_path):
    ts = tensors()
    plan = [(k, v.dtype, v.shape) for k, v in ts.items()]
    with pytest.raises(ValueError, match="tensor 0 should be"):
        with TensorStream(tmp_path / "x.safetensors", plan) as out:
            out.write("a.weight", ts["a.weight"].float())  # the planned dtype is E4M3
    with pytest.raises(ValueError, match="4 planned tensors were never written"):
        with TensorStream(tmp_path / "x.safetensors", plan) as out:
            out.write("a.weight", ts["a.weight"])
    assert list(tmp_path.iterdir()) == []
