"""What the host a stage or a worker runs on is: CPU, memory, accelerators (NVML, where a driver is).

The system description (systems/<name>.json) is filled from these facts, every stage's MLflow run is
tagged with them, and a Prefect worker refuses a branch of a system whose accelerators it does not have.
"""

from __future__ import annotations

import os
import platform
import socket
from functools import cache
from pathlib import Path


def cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (p.strip() for p in line.split(":", 1))
                info.setdefault(k, v)
    except OSError:
        pass
    return info


@cache
def accelerators() -> tuple[int, str, str, str]:
    """(count, model, memory per device, driver); zeros and empty strings without NVML, a driver or a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        if n:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total / 1024**3
            driver = pynvml.nvmlSystemGetDriverVersion()
            decode = lambda v: v if isinstance(v, str) else v.decode()  # noqa: E731
            return n, decode(name), f"{mem:.0f} GB", decode(driver)
    except Exception:  # no NVML, no driver, no GPU: the params say what the accelerator is
        pass
    return 0, "", "", ""


def memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GB"
    except OSError:
        pass
    return "unknown"


def facts() -> dict[str, str]:
    n, model, mem, driver = accelerators()
    return {
        "host": socket.gethostname(),
        "cpu": cpuinfo().get("model name", platform.processor() or platform.machine()),
        "cores": str(os.cpu_count() or 1),
        "memory": memory_gb(),
        "accelerators": f"{n} x {model}" if n else "none",
        "accelerator_memory": mem or "N/A",
        "driver": driver or "none",
    }


def count_and_model(accelerators_fact: str) -> tuple[int, str]:
    if accelerators_fact == "none":
        return 0, ""
    n, model = accelerators_fact.split(" x ", 1)
    return int(n), model


def mismatch(system, found: dict[str, str] | None = None) -> str | None:
    """Why this host is not `system` (round.system): it names accelerators the host does not have."""
    found = found or facts()
    want_n, want_model = system.accelerators_per_node, system.accelerator_model_name
    if not want_n:
        return None  # a CPU system's branches run anywhere (its stages run on the CPU unless told otherwise)
    n, model = count_and_model(found["accelerators"])
    if n != want_n or (want_model not in ("", "N/A") and want_model.lower() not in model.lower()):
        return (
            f"system {system.name} is {want_n} x {want_model}; this host ({found['host']}) has {found['accelerators']}"
        )
    return None
