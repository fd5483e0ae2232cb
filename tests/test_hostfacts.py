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


def test_the_system_description_is_the_measuring_hosts():
    """Package may run on the orchestrating machine: the system is described from the performance stages' hosts."""
    import pytest

    from mlperf_round.errors import RoundError
    from mlperf_round.params import load_params
    from mlperf_round.submission.system import describe, measured_host

    from .conftest import ROOT

    gpu = {
        "host": "gpu-box",
        "cpu": "AMD EPYC 9654",
        "cores": "192",
        "memory": "2268 GB",
        "accelerators": "8 x NVIDIA H200",
        "accelerator_memory": "141 GB",
        "driver": "570.86",
    }
    perf = [{"provenance": {"host": gpu}}, {"provenance": {"host": gpu | {"host": "gpu-box-2"}}}]
    host = measured_host(perf, "h200x8")
    desc = describe(load_params(ROOT / "params.yaml"), "closed", {"torch": "2.13"}, host)
    assert desc["host_processor_model_name"] == "AMD EPYC 9654" and desc["host_processor_core_count"] == 192
    assert desc["accelerators_per_node"] == 8 and desc["accelerator_model_name"] == "NVIDIA H200"
    assert desc["accelerator_memory_capacity"] == "141 GB" and desc["host_memory_capacity"] == "2268 GB"
    assert desc["host_processor_frequency"] == "unknown"  # /proc/cpuinfo here says nothing about gpu-box
    with pytest.raises(RoundError, match=r"h200x8: its performance runs ran on different hardware \(gpu-box: "):
        measured_host([*perf, {"provenance": {"host": gpu | {"host": "cpu", "accelerators": "none"}}}], "h200x8")
    here = describe(load_params(ROOT / "params.yaml"), "closed", {"torch": "2.13"}, measured_host([{}], "cpu-smoke"))
    assert here["host_processor_core_count"] == os.cpu_count()
