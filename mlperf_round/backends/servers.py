"""What each OpenAI-compatible server needs: its launch preset, its request dialect, where it says its version.

Facts checked in each server's source (vLLM 0.34.0, SGLang 0.5.23, TensorRT-LLM main, transformers 5.25):
- vLLM, SGLang and trtllm-serve take `prompt` as token ids; `transformers serve` takes text only.
- vLLM and SGLang return the answer's ids with `return_token_ids`; trtllm-serve only with `detokenize: false`
  (then without text) and refuses fields it does not know; transformers returns text only.
- min_tokens is a request field of vLLM, SGLang and trtllm-serve; transformers takes it in `generation_config`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    name: str
    what: str  # for the one-line refusals
    prompt: str  # ids | text
    ids_request: dict | None  # what a request adds for the server to return token ids (None: it cannot)
    version_paths: tuple[str, ...]
    fp8_kv: tuple[str, ...] | None  # the launch flags of an FP8 KV cache (None: not offered)
    parallel: bool  # takes tensor / pipeline parallel sizes

    def request(self, model: str, prompt, max_tokens: int, min_tokens: int, want_ids: bool) -> dict:
        """Greedy decoding, streamed, with the usage chunk."""
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.name == "transformers":
            if min_tokens > 1:
                body["generation_config"] = json.dumps({"min_new_tokens": min_tokens})
            return body
        body.update(top_p=1.0, top_k=1)
        if min_tokens:
            body["min_tokens"] = min_tokens
        if want_ids and self.ids_request:
            body.update(self.ids_request)
        return body

    def launch(self, endpoint, build, python: str = sys.executable) -> list[str]:
        """The preset's argv, with {model} {host} {port} {engine} left for the stage that starts it."""
        batch, tokens, frac = (
            str(build.max_batch_size),
            str(build.max_num_tokens),
            str(endpoint.kv_cache_memory_fraction),
        )
        tp, pp = str(endpoint.tp_size), str(endpoint.pp_size)
        dtype = [] if endpoint.dtype == "auto" else ["--dtype", endpoint.dtype]
        fp8 = list(self.fp8_kv) if build.kv_cache == "fp8" and self.fp8_kv else []
        if self.name == "vllm":
            argv = ["vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}", "--max-num-seqs", batch]
            argv += ["--max-num-batched-tokens", tokens, "--gpu-memory-utilization", frac]
            argv += ["--tensor-parallel-size", tp, "--pipeline-parallel-size", pp, *dtype, *fp8]
        elif self.name == "sglang":
            argv = [python, "-m", "sglang.launch_server", "--model-path", "{model}", "--host", "{host}"]
            argv += ["--port", "{port}", "--max-running-requests", batch, "--chunked-prefill-size", tokens]
            argv += ["--mem-fraction-static", frac, "--tp-size", tp, "--pp-size", pp, *dtype, *fp8]
        elif self.name == "trtllm-serve":
            argv = ["trtllm-serve", "{model}", "--host", "{host}", "--port", "{port}", "--backend", "pytorch"]
            argv += ["--max_batch_size", batch, "--max_num_tokens", tokens]
            argv += ["--kv_cache_free_gpu_memory_fraction", frac, "--tp_size", tp, "--pp_size", pp, *fp8]
        else:
            argv = ["transformers", "serve", "{model}", "--host", "{host}", "--port", "{port}"]
            argv += ["--continuous-batching", "--cb-max-batch-tokens", tokens, "--dtype", endpoint.dtype]
        return argv + list(endpoint.extra_args)

    def missing(self, argv: list[str]) -> str | None:
        """Why the launch command cannot start here (None: it can)."""
        if self.name == "sglang" and argv[:3] == [sys.executable, "-m", "sglang.launch_server"]:
            return None if importlib.util.find_spec("sglang") else f"sglang is not installed in {sys.executable}"
        return None if executable(argv[0]) else f"{argv[0]} is not on the PATH"


TRTLLM_OPTIONS = "trtllm_options.yaml"  # written beside engine.json when the launch names it

SERVERS = {
    "trtllm-serve": Server(  # detokenize false: ids without text; an FP8 KV cache has no flag, only the options file
        "trtllm-serve",
        "TensorRT-LLM (NVIDIA GPUs)",
        "ids",
        {"detokenize": False},
        ("/version",),
        ("--extra_llm_api_options", "{engine}/" + TRTLLM_OPTIONS),
        True,
    ),
    "vllm": Server("vllm", "vLLM", "ids", {"return_token_ids": True}, ("/version",), ("--kv-cache-dtype", "fp8"), True),
    "sglang": Server(
        "sglang",
        "SGLang",
        "ids",
        {"return_token_ids": True},
        ("/server_info", "/get_server_info"),
        ("--kv-cache-dtype", "fp8_e4m3"),
        True,
    ),
    "transformers": Server("transformers", "transformers serve", "text", None, ("/version",), None, False),
}


def get(name: str) -> Server:
    return SERVERS[name]


def executable(name: str) -> str | None:
    """On the PATH, or beside this interpreter (a virtual environment not activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def trtllm_options(kv_cache: str) -> str:
    """trtllm-serve's extra LLM API options: an FP8 KV cache has no command-line flag."""
    return "kv_cache_config:\n  dtype: fp8\n" if kv_cache == "fp8" else ""
