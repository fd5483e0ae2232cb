"""What the harness asks of an engine, whatever serves it: one module, so the SUT and the speed scripts
depend on this interface and never on a backend.

An engine opens from its directory (engine.json and what the build put beside it), warms up before
LoadGen's clock starts, and hands out schedulers. A scheduler takes requests and, each step, returns
events: a request's first new token (TTFT, reported to LoadGen where mlperf.conf asks for token
latencies) and its whole answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

ENGINE_FILE = "engine.json"


@dataclass
class Event:
    rid: int
    kind: str  # "first": the first new token; "done": every new token (an image: its pixels)
    tokens: np.ndarray


class Scheduler(Protocol):
    @property
    def idle(self) -> bool: ...

    def submit(self, rid: int, prompt) -> None: ...

    def step(self) -> list[Event]: ...


class Engine(Protocol):
    def warmup(self) -> None:
        """First calls pay for allocations, kernel selection, compilation: paid before LoadGen's clock starts."""

    def scheduler(self, policy: str | None = None) -> Scheduler: ...

    def sample_ids(self, sample): ...

    def stats(self) -> dict | None:
        """Work the engine did beyond its answers (the UNet's full and shallow steps), for the accuracy record."""


def read_spec(engine_dir: Path, spec_type: type):
    """engine.json as a backend's spec dataclass; a missing or foreign one is an InputError."""
    from ..errors import InputError

    path = Path(engine_dir) / ENGINE_FILE
    try:
        return spec_type(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; {engine_dir} is not an engine directory") from None
    except (json.JSONDecodeError, TypeError) as err:
        raise InputError(f"{path}: not a valid {spec_type.__name__} engine description ({err})") from None
