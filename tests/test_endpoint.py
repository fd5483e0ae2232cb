"""The endpoint backend against a real OpenAI-compatible server on loopback: `transformers serve` on the CPU,
serving the tiny Llama round's checkpoint. Nothing is mocked: each stage launches the server, the SUT streams
completions from it, LoadGen measures it, and the answers are compared with the torch engine's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlperf_round import layout
from mlperf_round.backends import endpoint, endpoint_backend, servers
from mlperf_round.backends.endpoint_client import EndpointError
from mlperf_round.errors import RoundError
from mlperf_round.workspace import select_benchmarks

from .conftest import copy_project, edit_params, run

pytestmark = pytest.mark.skipif(
    servers.executable("transformers") is None, reason="transformers serve is not installed (the test extra has it)"
)
ENTRY = "llama2-70b-endpoint"


def endpoint_round(d: dict) -> None:
    """The Llama 2 benchmark alone, one closed fp32 entry served by `transformers serve` (FP8 exports need a GPU)."""
    d["round"]["name"] = "smoke-endpoint"
    d.update(select_benchmarks(d, ["llama2-70b"]))
    entry = d["entries"]["llama2-70b-99p9"]
    entry["recipe"] = {"precision": "fp32"}
    entry["build"] = {"backend": "endpoint", "max_batch_size": 8, "endpoint": {"server": "transformers"}}
    d["entries"] = {ENTRY: entry}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = copy_project(tmp_path_factory.mktemp("endpoint") / "project")
    edit_params(ws, endpoint_round)
    proc = run([sys.executable, "-m", "dvc", "repro"], ws, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return ws


def answers(path: Path) -> dict[int, list[int]]:
    return {
        r["qsl_idx"]: np.frombuffer(bytes.fromhex(r["data"]), np.int32).tolist() for r in json.loads(path.read_text())
    }


def test_round_on_an_endpoint_answers_as_the_torch_engine_does(workspace: Path):
    engine_dir = workspace / layout.out_dir(ENTRY, "build")
    spec = json.loads((engine_dir / "engine.json").read_text())
    assert (
        spec["backend"] == "endpoint"
        and spec["server"] == "transformers"
        and spec["launch"][:2]
        == [
            "transformers",
            "serve",
        ]
    )
    assert spec["model_sha256"] == endpoint.tree_sha256(engine_dir / "model")
    assert spec["server_info"]["name"] == "transformers" and spec["token_ids"] == "tokenizer"
    build = json.loads((workspace / layout.metrics_path(ENTRY, "build")).read_text())
    assert build["prompt_text_exact"] == 1.0  # every prompt reaches the server's tokenizer as the dataset's ids

    # greedy decoding on the same fp32 weights: the reference stage's torch engine and the server agree exactly
    # (the streamed text leaves out the EOS the model stopped on; the client puts it back, as torch keeps it)
    torch_answers = answers(workspace / layout.out_dir("llama2-70b", "reference") / "Offline/mlperf_log_accuracy.json")
    for scenario in ("Offline", "Server"):
        served = answers(workspace / layout.out_dir(ENTRY, "accuracy") / scenario / "mlperf_log_accuracy.json")
        assert served == torch_answers, scenario
    acc = json.loads((workspace / layout.metrics_path(ENTRY, "accuracy")).read_text())
    assert acc["passed"] and acc["Offline"]["ratio"]["rouge1"] == 1.0 and acc["Offline"]["first_token_splices"] == 0

    perf = json.loads((workspace / layout.metrics_path(ENTRY, "performance")).read_text())
    assert perf["Offline"]["valid"] and perf["Offline"]["tokens_per_s"] > 0
    assert perf["Server"]["valid"] and 0 < perf["Server"]["ttft_p99_ms"] < 2000  # streamed first tokens: TTFT
    for stage in ("accuracy", "performance", "compliance"):  # each stage started its server and kept its log
        log = (workspace / layout.out_dir(ENTRY, stage) / endpoint_backend.SERVER_LOG).read_text()
        assert log.startswith("$ ") and " serve " in log.splitlines()[0]
        assert "Uvicorn running on http://127.0.0.1:" in log
    comp = json.loads((workspace / layout.metrics_path(ENTRY, "compliance")).read_text())
    assert comp["Offline.TEST06"]["passed"] and comp["Server.TEST06"]["passed"]
    assert comp["Server.TEST06"]["first_token"] is True
    readme = next((workspace / "submission/package/tree").rglob("measurements/*/llama2-70b-99.9/Server/README.md"))
    assert "- backend: endpoint, transformers" in readme.read_text()
    leftover = subprocess.run(["pgrep", "-f", "transformers serve"], capture_output=True, text=True).stdout
    assert not leftover.strip(), f"a server outlived its stage: {leftover}"


def _kill_after_answers(server: subprocess.Popen, log: Path, answers: int, timeout_s: float = 120) -> None:
    """SIGKILL once the server has begun `answers` completions (the warm-up, then LoadGen's queries): mid-run on
    any CPU, where a fixed delay killed it before the run began on a slow one."""
    deadline = time.monotonic() + timeout_s
    while (
        time.monotonic() < deadline
        and log.read_text(errors="replace").count('POST /v1/completions HTTP/1.1" 200') < answers
    ):
        time.sleep(0.1)
    os.killpg(server.pid, signal.SIGKILL)


def test_server_killed_mid_run_fails_the_test_in_one_line(workspace: Path, tmp_path: Path):
    """A server that dies mid-run: every query LoadGen issued is still completed, and the test ends at once
    with one line naming the endpoint (the watchdog's timeout is never reached)."""
    from mlperf_round.harness.run import run_test

    built = workspace / layout.out_dir(ENTRY, "build")
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    for name in ("tokenizer", "model"):
        (engine_dir / name).symlink_to(built / name)
    port = endpoint_backend._free_port()
    url = f"http://127.0.0.1:{port}"
    spec = json.loads((built / "engine.json").read_text()) | {"url": url, "launch": None}
    (engine_dir / "engine.json").write_text(json.dumps(spec))
    argv = [servers.executable("transformers"), "serve", str(built / "model"), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--continuous-batching"]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        endpoint.wait_ready(url, 120)
        with pytest.raises(EndpointError, match=r"HTTP [45]\d\d"):  # a model the server cannot load: one line
            endpoint.EndpointEngine(engine_dir, {"url": url, "model": str(tmp_path / "no-such-model")}).complete(
                np.asarray([1, 2, 3])
            )
        conf = tmp_path / "user.conf"
        conf.write_text(
            "llama2-70b.Offline.target_qps = 100\nllama2-70b.Offline.min_duration = 0\n"
            "llama2-70b.Offline.min_query_count = 50000\nllama2-70b.*.performance_sample_count_override = 64\n"
        )
        killer = threading.Thread(target=_kill_after_answers, args=(server, tmp_path / "server.log", 3))
        killer.start()
        start = time.perf_counter()
        with pytest.raises(RoundError) as err:
            run_test(
                {
                    "engine": str(engine_dir),
                    "benchmark": "llama2-70b",
                    "dataset": str(workspace / layout.out_dir("llama2-70b", "download") / "dataset.json"),
                    "scenario": "Offline",
                    "mode": "PerformanceOnly",
                    "user_conf": str(conf),
                    "outdir": str(tmp_path / "run"),
                },
                timeout_s=300,
            )
        elapsed = time.perf_counter() - start
        killer.join()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()
    message = str(err.value)
    assert "\n" not in message and f"endpoint {url}/v1/completions" in message, message
    assert "dropped" in message or "refused" in message, message
    assert elapsed < 60, f"{elapsed:.0f} s: the failure should end the test, not the watchdog"


def test_a_launch_that_exits_before_ready_is_one_line(tmp_path: Path):
    """A server that cannot start (here: a command that exits at once) fails the stage with its log's last line."""
    script = "import sys; print('RuntimeError: no CUDA GPUs are available'); sys.exit(3)"
    spec = endpoint.EndpointSpec(
        backend="endpoint",
        benchmark="llama2-70b",
        precision="fp32",
        server="vllm",
        url=None,
        launch=[sys.executable, "-c", script, "{model}", "{port}"],
        served_model=None,
        model_source="export",
        model_sha256=None,
        max_input_len=16,
        max_output_len=4,
        min_output_len=1,
        eos_token_id=2,
        report_first_token=True,
        concurrency=1,
        token_ids="server",
        prompt="ids",
        strip_bos=False,
        request_timeout_s=5,
        ready_timeout_s=60,
    )
    endpoint.write_spec(spec, tmp_path)
    with pytest.raises(EndpointError) as err:
        with endpoint_backend.serve(tmp_path, tmp_path / "logs"):
            pass
    message = str(err.value)
    assert message.startswith("vllm exited with code 3 before it was ready: RuntimeError: no CUDA GPUs"), message
    assert (tmp_path / "logs" / endpoint_backend.SERVER_LOG).read_text().startswith(f"$ {sys.executable} -c")


def test_presets_carry_the_knobs_submitters_tune():
    from mlperf_round.params import BuildParams, EndpointParams

    build = BuildParams.model_construct(max_batch_size=256, max_num_tokens=16384, kv_cache="fp8")
    ep = EndpointParams.model_construct(
        server="trtllm-serve", dtype="auto", tp_size=2, pp_size=1, kv_cache_memory_fraction=0.95, extra_args=[]
    )
    argv = servers.get("trtllm-serve").launch(ep, build)
    pairs = dict(zip(argv[2::2], argv[3::2]))
    assert argv[:3] == ["trtllm-serve", "{model}", "--host"]
    assert pairs["--max_batch_size"] == "256" and pairs["--max_num_tokens"] == "16384"
    assert pairs["--kv_cache_free_gpu_memory_fraction"] == "0.95" and pairs["--tp_size"] == "2"
    assert pairs["--extra_llm_api_options"] == "{engine}/" + servers.TRTLLM_OPTIONS  # FP8 KV cache: no CLI flag
    assert servers.trtllm_options("fp8") == "kv_cache_config:\n  dtype: fp8\n"
    vllm = servers.get("vllm").launch(ep, build)
    assert vllm[:3] == ["vllm", "serve", "{model}"] and vllm[-2:] == ["--kv-cache-dtype", "fp8"]
    assert "--max-num-seqs" in vllm and "--gpu-memory-utilization" in vllm
    sglang = servers.get("sglang").launch(ep, build)
    assert sglang[1:3] == ["-m", "sglang.launch_server"] and sglang[-2:] == ["--kv-cache-dtype", "fp8_e4m3"]
    body = servers.get("vllm").request("m", [1, 2], 128, 1, want_ids=True)
    assert body["prompt"] == [1, 2] and body["return_token_ids"] is True and body["min_tokens"] == 1
    assert servers.get("trtllm-serve").request("m", [1], 8, 1, want_ids=True)["detokenize"] is False
    assert "generation_config" in servers.get("transformers").request("m", "x", 8, 2, want_ids=False)
