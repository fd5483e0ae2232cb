"""Per-benchmark knowledge, one module each; the stages dispatch here."""

from __future__ import annotations

from types import ModuleType

from . import gptj

REGISTRY: dict[str, ModuleType] = {gptj.NAME: gptj}


def get(name: str) -> ModuleType:
    return REGISTRY[name]
