"""A safetensors file written one tensor at a time, so the writer never holds more than one tensor.

`safetensors.torch.save_file` takes every tensor at once: the quantize stage would hold the whole
quantized checkpoint (70 GB of E4M3 for Llama 2 70B) beside the model it came from. The format is
a little-endian u64 header length, a JSON header of dtype, shape and byte range per tensor, then
the bytes in that order; shapes are known before any value is, so the header is written first and
each tensor's bytes follow as it is computed. The result is read by `safetensors.safe_open`, which
checks that the ranges cover the file exactly.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

DTYPES = {
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int8: "I8",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.uint8: "U8",
    torch.int32: "I32",
    torch.int64: "I64",
}


class TensorStream:
    """`with TensorStream(path, plan) as out: out.write(name, tensor)` for each (name, dtype, shape) of `plan`, in
    order. The file appears at `path` only once every tensor was written (a `.partial` file until then)."""

    def __init__(self, path: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict | None = None):
        self.path, self.tmp = Path(path), Path(path).with_name(Path(path).name + ".partial")
        self.plan = [(name, dtype, tuple(int(d) for d in shape)) for name, dtype, shape in plan]
        header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}} if metadata else {}
        offset = 0
        for name, dtype, shape in self.plan:
            size = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.header = raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.next = 0

    def __enter__(self) -> TensorStream:
        self.file = open(self.tmp, "wb")
        self.file.write(struct.pack("<Q", len(self.header)) + self.header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want = self.plan[self.next] if self.next < len(self.plan) else None
        got = (name, tensor.dtype, tuple(tensor.shape))
        if want != got:
            raise ValueError(f"{self.path.name}: tensor {self.next} should be {want}, got {got}")
        self.file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        self.next += 1

    def __exit__(self, kind, err, tb) -> None:
        self.file.close()
        if kind is None and self.next == len(self.plan):
            os.replace(self.tmp, self.path)
            return
        self.tmp.unlink(missing_ok=True)
        if kind is None:
            raise ValueError(f"{self.path.name}: {len(self.plan) - self.next} planned tensors were never written")
