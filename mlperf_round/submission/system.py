"""systems/<system>.json: host facts detected, the rest from params; every required field filled."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .. import hostfacts
from ..errors import ParamsError
from ..params import RoundParams

REQUIRED = (
    "division",
    "submitter",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processor_model_name",
    "host_processors_per_node",
    "host_processor_core_count",
    "host_processor_frequency",
    "host_processor_caches",
    "host_processor_interconnect",
    "host_memory_capacity",
    "host_memory_configuration",
    "host_storage_capacity",
    "host_storage_type",
    "host_networking",
    "host_networking_topology",
    "host_network_card_count",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_memory_capacity",
    "accelerator_memory_configuration",
    "accelerator_frequency",
    "accelerator_host_interconnect",
    "accelerator_interconnect",
    "accelerator_interconnect_topology",
    "accelerator_on-chip_memories",
    "cooling",
    "framework",
    "operating_system",
    "other_software_stack",
    "system_type",
    "system_type_detail",
    "hw_notes",
    "sw_notes",
)
# the checker's "may be empty" fields; every other one must be truthy (so 0 is empty: see accelerators_per_node)
MAY_BE_EMPTY = {
    "host_processor_frequency",
    "host_processor_caches",
    "host_processor_interconnect",
    "accelerator_frequency",
    "accelerator_interconnect_topology",
    "accelerator_on-chip_memories",
    "hw_notes",
    "sw_notes",
    "system_type_detail",
}


def _memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GB"
    except OSError:
        pass
    return "unknown"


def describe(params: RoundParams, division: str, versions: dict[str, str]) -> dict[str, object]:
    s, cpu = params.round.system, hostfacts.cpuinfo()
    n_acc, acc_name, acc_mem, _ = hostfacts.accelerators()
    sockets = len({v for k, v in cpu.items() if k == "physical id"}) or 1
    desc = {
        "division": division,
        "submitter": params.round.submitter,
        "status": s.status,
        "system_name": s.name,
        "number_of_nodes": 1,
        "host_processor_model_name": cpu.get("model name", platform.processor() or platform.machine()),
        "host_processors_per_node": sockets,
        "host_processor_core_count": os.cpu_count() or 1,
        "host_processor_frequency": f"{float(cpu['cpu MHz']):.0f} MHz" if "cpu MHz" in cpu else "unknown",
        "host_processor_caches": cpu.get("cache size", "unknown"),
        "host_processor_interconnect": "N/A",
        "host_memory_capacity": _memory_gb(),
        "host_memory_configuration": "unknown",
        "host_storage_capacity": s.host_storage_capacity,
        "host_storage_type": s.host_storage_type,
        "host_networking": s.host_networking,
        "host_networking_topology": "N/A",
        "host_network_card_count": "N/A",
        # a CPU-only system writes "0": the checker reads a numeric 0 as an empty field
        "accelerators_per_node": (n_acc or s.accelerators_per_node) or "0",
        "accelerator_model_name": acc_name or s.accelerator_model_name,
        "accelerator_memory_capacity": acc_mem or "N/A",
        "accelerator_memory_configuration": "N/A",
        "accelerator_frequency": "N/A",
        "accelerator_host_interconnect": "N/A",
        "accelerator_interconnect": "N/A",
        "accelerator_interconnect_topology": "N/A",
        "accelerator_on-chip_memories": "N/A",
        "cooling": s.cooling,
        "framework": s.framework,
        "operating_system": f"{platform.system()} {platform.release()}",
        "other_software_stack": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        "system_type": s.system_type,
        "system_type_detail": "smoke round (not submittable)" if params.round.smoke else "N/A",
        "hw_notes": s.hw_notes,
        "sw_notes": s.sw_notes,
    }
    empty = [k for k in REQUIRED if k not in MAY_BE_EMPTY and str(desc.get(k, "")).strip() == ""]
    if empty:
        raise ParamsError(f"round.system: systems/{s.name}.json needs {empty[0]} (set it in params.yaml)")
    return desc
