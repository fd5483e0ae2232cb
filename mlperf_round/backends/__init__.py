"""The backends, keyed by `build.backend`: each builds an engine directory and opens it for the harness.

A backend module has `build_text(ctx, bench)` and `build_image`, `open_text(engine_dir, runtime)` and
`open_image`, `describe(engine_json)` (a result README's lines), and `serve(engine_dir, log_dir)`: a context
manager that makes the engine reachable for a stage's tests (starts its server, or does nothing) and yields the
runtime facts the harness passes to `open_*`. A backend that cannot serve a kind refuses it in one line.
The stages and the harness go through this module and never name a backend.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

BACKENDS = {"torch": "torch_backend", "endpoint": "endpoint_backend"}


def get(name: str):
    if name not in BACKENDS:
        raise KeyError(f"backend {name!r} (known: {', '.join(BACKENDS)})")
    return importlib.import_module(f"{__name__}.{BACKENDS[name]}")


def of_engine(engine_dir: Path):
    """The backend that built an engine directory, as its engine.json says."""
    from ..errors import InputError

    path = Path(engine_dir) / "engine.json"
    try:
        name = json.loads(path.read_text()).get("backend", "torch")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not readable as an engine description ({err})") from None
    if name not in BACKENDS:
        raise InputError(f"{path}: backend {name!r} is not one of this project's ({', '.join(BACKENDS)})")
    return get(name)
