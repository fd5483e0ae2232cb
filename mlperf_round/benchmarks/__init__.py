"""Per-benchmark knowledge, one module each; the stages dispatch here."""

from __future__ import annotations

from types import ModuleType

from . import gptj, llama2

REGISTRY: dict[str, ModuleType] = {m.NAME: m for m in (gptj, llama2)}


def get(name: str) -> ModuleType:
    return REGISTRY[name]
