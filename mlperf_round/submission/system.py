"""systems/<system>.json: host facts detected, the rest from params; every required field filled."""

from __future__ import annotations

import platform

from .. import hostfacts
from ..errors import ParamsError, RoundError
from ..params import RoundParams, SystemParams

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


def measured_host(performance: list[dict], system: str) -> dict | None:
    """The host the performance stages ran on (their provenance): the system the results describe. Hosts with
    different processors or accelerators under one system name are one line, not a system description."""
    hosts: dict[tuple[str, str], dict] = {}
    for metrics in performance:
        host = metrics.get("provenance", {}).get("host")
        if host:
            hosts.setdefault((host["cpu"], host["accelerators"]), host)
    if len(hosts) > 1:
        seen = "; ".join(f"{h['host']}: {h['cpu']}, accelerators {h['accelerators']}" for h in hosts.values())
        raise RoundError(f"system {system}: its performance runs ran on different hardware ({seen})")
    return next(iter(hosts.values()), None)


def describe(
    params: RoundParams,
    division: str,
    versions: dict[str, str],
    host: dict | None = None,
    system: SystemParams | None = None,
) -> dict[str, object]:
    """`system`: which of the round's systems (default: round.system). `host`: the facts of the host its results
    were measured on (default: this one); what only /proc/cpuinfo says (sockets, frequency, caches) is read here
    when this is that host, else left unknown."""
    s, here = system or params.round.system, hostfacts.facts()
    host = host or here
    cpu = hostfacts.cpuinfo() if (host["host"], host["cpu"]) == (here["host"], here["cpu"]) else {}
    n_acc, acc_name = hostfacts.count_and_model(host["accelerators"])
    acc_mem = host.get("accelerator_memory", "N/A") if n_acc else ""
    sockets = len({v for k, v in cpu.items() if k == "physical id"}) or 1
    desc = {
        "division": division,
        "submitter": params.round.submitter,
        "status": s.status,
        "system_name": s.name,
        "number_of_nodes": 1,
        "host_processor_model_name": host["cpu"],
        "host_processors_per_node": sockets,
        "host_processor_core_count": int(host["cores"]),
        "host_processor_frequency": f"{float(cpu['cpu MHz']):.0f} MHz" if "cpu MHz" in cpu else "unknown",
        "host_processor_caches": cpu.get("cache size", "unknown"),
        "host_processor_interconnect": "N/A",
        "host_memory_capacity": host.get("memory", "unknown"),
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
        where = "round.system" if s.name == params.round.system.name else f"round.systems.{s.name}"
        raise ParamsError(f"{where}: systems/{s.name}.json needs {empty[0]} (set it in params.yaml)")
    return desc
