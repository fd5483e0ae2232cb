"""Per-benchmark knowledge, one module each; the stages dispatch here."""

from __future__ import annotations

from types import ModuleType

from . import gptj, llama2, sdxl

REGISTRY: dict[str, ModuleType] = {m.NAME: m for m in (gptj, llama2, sdxl)}


def get(name: str) -> ModuleType:
    return REGISTRY[name]


def is_image(bench: ModuleType) -> bool:
    """Text-to-image benchmarks answer with images and have their own engine and stage bodies."""
    return getattr(bench, "KIND", "text-generation") == "text-to-image"


def open_engine(bench: ModuleType, engine_dir):
    """The engine an entry's build stage made, for the harness to serve."""
    if is_image(bench):
        from ..backends.torch_sdxl import TorchSDXL

        return TorchSDXL(engine_dir)
    from ..backends.torch_llm import TorchLLM

    return TorchLLM(engine_dir)
