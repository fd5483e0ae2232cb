"""Task kinds: the stage bodies every benchmark of a kind shares (`Benchmark.kind`)."""

from . import text_generation, text_to_image

KINDS = {k.NAME: k for k in (text_generation, text_to_image)}
