"""Host facts, and the check that keeps a worker off another system's branches."""

from __future__ import annotations

import os

from mlperf_round import hostfacts
from mlperf_round.params import SystemParams


def test_facts_describe_this_host():
    found = hostfacts.facts()
    assert found["cores"] == str(os.cpu_count()) and found["cpu"] and found["host"]
    assert found["accelerators"] == "none" or " x " in found["accelerators"]


def test_a_worker_refuses_a_system_whose_accelerators_it_lacks():
    h200 = SystemParams(name="h200x1", accelerators_per_node=1, accelerator_model_name="NVIDIA H200")
    cpu_box = {"host": "ci", "cpu": "Xeon", "cores": "2", "accelerators": "none", "driver": "none"}
    assert hostfacts.mismatch(h200, cpu_box) == "system h200x1 is 1 x NVIDIA H200; this host (ci) has none"
    gpu_box = cpu_box | {"host": "gpu", "accelerators": "1 x NVIDIA H200 NVL", "driver": "570.86"}
    assert hostfacts.mismatch(h200, gpu_box) is None
    eight = gpu_box | {"accelerators": "8 x NVIDIA H200 NVL"}
    assert "has 8 x NVIDIA H200 NVL" in hostfacts.mismatch(h200, eight)
    b200 = SystemParams(name="b200x8", accelerators_per_node=8, accelerator_model_name="NVIDIA B200")
    assert "is 8 x NVIDIA B200" in hostfacts.mismatch(b200, eight)
    assert hostfacts.mismatch(SystemParams(), gpu_box) is None  # a CPU system's branches run anywhere
