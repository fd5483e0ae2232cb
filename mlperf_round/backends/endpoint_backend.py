"""The endpoint backend's build, open and serve (the client is endpoint.py, the presets servers.py).

`serve` starts `launch` (a preset's or the user's argv) on a free loopback port, waits until the
server answers, keeps its log beside the stage's results, and stops its whole process group when the
stage's body ends; with `url` it only checks the server answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .. import checkpoints
from ..errors import InputError, ParamsError
from . import endpoint, servers
from .endpoint_client import EndpointError

SERVER_LOG = "server.log"
HOST = "127.0.0.1"


def open_text(engine_dir: Path, runtime: dict | None = None):
    return endpoint.EndpointEngine(engine_dir, runtime)


def open_image(engine_dir: Path, runtime: dict | None = None):
    raise InputError(f"{engine_dir}: the endpoint backend serves text generation, not images")


def build_image(ctx, bench) -> dict:
    raise ParamsError(f"entries.{ctx.key}.build.backend: endpoint serves text generation, not {ctx.benchmark_name}")


def describe(e: dict) -> list[str]:
    """The engine as a result's README states it: the server, how it was reached, what it served."""
    how = f"at {e['url']}" if e["url"] else "launched by each stage: `" + " ".join(e["launch"]) + "`"
    model = f"sha256 {e['model_sha256']}" if e["model_sha256"] else f"model id {e['model_source']}"
    info = e.get("server_info") or {}
    version = info.get("version") or "(its API reports no version)"
    return [
        f"- backend: endpoint, {e['server']} {version} {how}, precision {e['precision']}, greedy decoding, "
        f"{e['concurrency']} requests in flight",
        f"- served model: {model}; prompts sent as {e['prompt']}, answer token ids from the {e['token_ids']}",
        f"- client versions: {', '.join(f'{k} {v}' for k, v in sorted(e['versions'].items()))}",
    ]


def _served_checkpoint(ctx) -> Path:
    """The quantize stage's export: Model Optimizer's unified checkpoint, or the plain one of an unquantized entry."""
    out = ctx.input("quantize")
    for name in ("deployable", "model"):
        path = out / name
        if (path / "config.json").exists() and any(path.glob("*.safetensors")):
            return path
    raise InputError(
        f"{out}: no Hugging Face checkpoint a server loads (deployable/ or a plain model/); "
        f"set entries.{ctx.key}.recipe.export_hf: true"
    )


def build_text(ctx, bench) -> dict:
    """The engine directory: the served model (linked), its tokenizer, engine.json; checked by one generation on
    the server, whose name and version are recorded."""
    from ..benchmarks import get
    from ..benchmarks.text import sample_ids
    from .torch_llm import package_versions

    entry, gen = ctx.entry, ctx.benchmark.generation
    ep = entry.build.endpoint
    server = servers.get(ep.server)
    source = ctx.input("download", ctx.benchmark_name)
    tokenizer_dir = bench.tokenizer_dir(source)
    tok = bench.load_tokenizer(tokenizer_dir)
    checkpoints.copy_tokenizer(tokenizer_dir, ctx.out / "tokenizer")
    sha = None
    if ep.model == "export":
        checkpoints.link_tree(_served_checkpoint(ctx), ctx.out / "model")
        checkpoints.copy_tokenizer(tokenizer_dir, ctx.out / "model")  # servers read the tokenizer beside the weights
        sha = endpoint.tree_sha256(ctx.out / "model")
    launch = None if ep.url else (list(ep.launch) if ep.launch else server.launch(ep, entry.build))
    if launch and any(servers.TRTLLM_OPTIONS in arg for arg in launch):
        (ctx.out / servers.TRTLLM_OPTIONS).write_text(servers.trtllm_options(entry.build.kv_cache))
    token_ids = ep.token_ids if ep.token_ids != "auto" else ("server" if server.ids_request else "tokenizer")
    samples = bench.load_samples(source / "dataset.json")
    prompts = [sample_ids(s, tok, gen.max_input_tokens) for s in samples]
    strip_bos = _strip_bos(tok, prompts) if server.prompt == "text" else False
    spec = endpoint.EndpointSpec(
        backend="endpoint",
        benchmark=ctx.benchmark_name,
        precision=entry.recipe.precision,
        server=server.name,
        url=ep.url,
        launch=launch,
        served_model=ep.served_model or (None if ep.model == "export" else ep.model),
        model_source=ep.model,
        model_sha256=sha,
        max_input_len=gen.max_input_tokens,
        max_output_len=gen.max_new_tokens,
        min_output_len=gen.min_new_tokens,
        eos_token_id=int(tok.eos_token_id),
        report_first_token=get(ctx.benchmark_name).token_latencies(),
        concurrency=ep.concurrency or entry.build.max_batch_size,
        token_ids=token_ids,
        prompt=server.prompt,
        strip_bos=strip_bos,
        request_timeout_s=ep.request_timeout_s,
        ready_timeout_s=ep.ready_timeout_s,
        versions=package_versions(),
    )
    endpoint.write_spec(spec, ctx.out)
    metrics: dict = {"server": server.name, "token_ids": token_ids, "prompt": server.prompt}
    if server.prompt == "text":  # the prompt as the server's tokenizer will see it, against the dataset's ids
        exact = sum(_round_trips(tok, ids, strip_bos) for ids in prompts)
        metrics["prompt_text_exact"] = exact / max(len(prompts), 1)
    start = time.perf_counter()
    with serve(ctx.out, ctx.out) as runtime:
        ready = time.perf_counter()
        engine = endpoint.EndpointEngine(ctx.out, runtime)
        info = endpoint.server_info(engine.url, server.name)
        answer, _ = engine.complete(prompts[0])
        done = time.perf_counter()
    endpoint.write_spec(spec, ctx.out, server_info=info)
    ctx.tracker.set_tag("mlperf.server", f"{info['name']} {info['version'] or '(version not reported)'}")
    return {
        **metrics,
        "server_version": info["version"] or "not reported",
        "model_sha256": sha or "",
        "ready_s": ready - start,
        "check_generate_s": done - ready,
        "check_output_tokens": len(answer),
        "concurrency": spec.concurrency,
    }


def _strip_bos(tok, prompts) -> bool:
    """Text prompts: drop the dataset's BOS when the server's tokenizer adds its own."""
    bos = tok.bos_token_id
    return bos is not None and bool(prompts) and int(prompts[0][0]) == bos and tok("x")["input_ids"][:1] == [bos]


def _round_trips(tok, ids, strip_bos: bool) -> bool:
    ids = [int(i) for i in ids]
    text = tok.decode(ids[1:] if strip_bos else ids, skip_special_tokens=False)
    return tok(text, add_special_tokens=strip_bos)["input_ids"] == ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(engine_dir: Path, log_dir: Path):
    """The engine's server for the length of a stage: started from `launch`, or reached at `url`."""
    spec = endpoint.read_spec(engine_dir)
    if spec.url:
        endpoint.wait_ready(spec.url, spec.ready_timeout_s)
        yield {"url": spec.url}
        return
    port = _free_port()
    model = str((engine_dir / "model").resolve()) if spec.model_source == "export" else spec.model_source
    fill = {"model": model, "host": HOST, "port": str(port), "engine": str(engine_dir.resolve())}
    argv = [a.format(**fill) for a in spec.launch]
    why = servers.get(spec.server).missing(argv)
    if why:
        raise ParamsError(f"{engine_dir}/engine.json launch: {why}")
    argv[0] = servers.executable(argv[0]) or argv[0]
    log_path = Path(log_dir) / SERVER_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{port}"
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def alive() -> None:
            if proc.poll() is not None:
                raise EndpointError(
                    f"{spec.server} exited with code {proc.returncode} before it was ready: {_last_line(log_path)} "
                    f"(log: {log_path})"
                )

        endpoint.wait_ready(url, spec.ready_timeout_s, alive)
        yield {"url": url, "model": model, "pid": proc.pid}
    finally:
        _stop(proc)


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(empty log)"


def _group_running(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies, left for their adopter to reap, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the server's process group (servers fork workers and trackers), SIGKILL to what is left after
    the grace period: when this returns nothing of it runs, and its log no longer changes."""
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    while True:
        proc.poll()  # reaps the leader
        if not _group_running(proc.pid):
            break
        if time.monotonic() > deadline + 10.0:  # unkillable (uninterruptible I/O): give up, never hang
            break
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)
