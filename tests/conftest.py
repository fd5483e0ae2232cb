"""Shared fixtures: a throwaway copy of the project, so tests never touch the working tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> Path:
    """The project's code and params in a fresh git repository (what a workspace of the Prefect flow is)."""
    from mlperf_round.workspace import sync

    return sync(ROOT, dest)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": "."})
    e["PATH"] = f"{Path(sys.executable).parent}:{e.get('PATH', '')}"
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`cmd` tethered to this test process: killed with it (a CI timeout), or on `timeout`, with everything it
    started."""
    from mlperf_round.tether import tethered

    child = subprocess.Popen(
        tethered(cmd), cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except BaseException:
        child.terminate()  # the tether ends the command's whole tree
        child.communicate()
        raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def edit_params(project: Path, edit) -> None:
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP port listens on, from /proc/net/tcp{,6} (127.0.0.1, 0.0.0.0, ::, ...)."""
    import ipaddress

    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host order
                found.add(str(ipaddress.ip_address(words)) if width == 8 else str(ipaddress.IPv6Address(words)))
    return found
