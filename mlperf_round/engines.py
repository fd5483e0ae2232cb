"""Engine building, dispatched on the entry's backend."""

from __future__ import annotations

from pathlib import Path

from .backends import torch_llm
from .errors import ParamsError
from .params import BuildParams, GenerationParams


def check_backend(backend: str, where: str) -> None:
    if backend == "tensorrt-llm":
        try:
            import tensorrt_llm  # noqa: F401
            import torch

            if not torch.cuda.is_available():
                raise ImportError("no CUDA device")
        except ImportError as err:
            raise ParamsError(f"{where}: tensorrt-llm needs the tensorrt_llm package and a GPU ({err}); use backend: torch") from None


def build_engine(benchmark: str, precision: str, build: BuildParams, gen: GenerationParams,
                 model_dir: Path, tokenizer_dir: Path, out: Path, report_first_token: bool = False) -> torch_llm.EngineSpec:
    from .benchmarks import get

    tok = get(benchmark).load_tokenizer(tokenizer_dir)
    spec = torch_llm.EngineSpec(
        backend="torch",
        benchmark=benchmark,
        precision=precision,
        dtype=build.dtype,
        max_batch_size=build.max_batch_size,
        max_input_len=gen.max_input_tokens,
        max_output_len=gen.max_new_tokens,
        min_output_len=gen.min_new_tokens,
        beam_width=gen.num_beams,
        eos_token_id=int(tok.eos_token_id),
        pad_token_id=int(tok.pad_token_id),
        report_first_token=report_first_token,
        threads=build.threads,
        versions=torch_llm.package_versions(),
    )
    torch_llm.build(model_dir, tokenizer_dir, spec, out)
    return spec
