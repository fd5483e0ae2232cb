"""What the harness asks of an engine, whatever serves it: one module, so the SUT and the speed scripts
depend on this interface and never on a backend.

An engine opens from its directory (engine.json and what the build put beside it), warms up before
LoadGen's clock starts, and hands out schedulers. A scheduler takes requests and, each step, returns
events: a request's first new token (TTFT, reported to LoadGen where mlperf.conf asks for token
latencies) and its whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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
