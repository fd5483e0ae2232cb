"""One LoadGen test, in a process of its own.

LoadGen reads its configuration once per process and takes the process down on some SUT
faults, so every test (scenario x mode, and each compliance audit) runs in a child, under a
watchdog in the parent. Children are forked from a fork server that imported torch,
transformers and Model Optimizer once: those imports take ~6 s, which every test used to
pay again. The fork server runs no torch work, so no thread pool is forked half-alive.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sys
from pathlib import Path

from ..errors import RoundError
from .timing_lock import timed_run

ENGINE_STATS = "engine_stats.json"
PRELOAD = ["torch", "transformers", "modelopt.torch.opt", "modelopt.torch.quantization", "mlperf_round.benchmarks"]
_context = None


def _fork_server(benchmark: str):
    """One per stage process, which serves one benchmark: text-to-image also preloads diffusers."""
    global _context
    if _context is None:
        from .. import benchmarks

        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD + benchmarks.get(benchmark).kind.PRELOAD)
    return _context


def _child(spec_file: str) -> None:
    sys.exit(_main(spec_file))


def run_test(spec: dict, timeout_s: float) -> None:
    """Run one test in a child process; its logs land in spec['outdir']."""
    from ..backends import serving

    outdir = Path(spec["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)  # a missing outdir aborts LoadGen
    # a served engine's server: started at the stage's first test, its log beside the stage's results
    spec["runtime"] = serving.runtime(Path(spec["engine"]), outdir.parent)
    spec_file = outdir / "test_spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    name = f"{spec['benchmark']} {spec.get('label', spec['scenario'])} {spec['mode']}"
    timed = timed_run(name) if spec["mode"] == "PerformanceOnly" else contextlib.nullcontext()
    with timed:
        _supervise(spec, spec_file, name, timeout_s)


def _supervise(spec: dict, spec_file: Path, name: str, timeout_s: float) -> None:
    outdir = Path(spec["outdir"])
    proc = _fork_server(spec["benchmark"]).Process(target=_child, args=(str(spec_file),), name=f"loadgen {name}")
    proc.start()
    try:
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise RoundError(f"{spec['scenario']} {spec['mode']}: LoadGen test did not finish in {timeout_s:.0f} s")
    except BaseException:
        if proc.is_alive():
            proc.kill()
            proc.join()
        raise
    finally:
        spec_file.unlink(missing_ok=True)
    rc = proc.exitcode
    if rc != 0:
        reason = (
            (outdir / "sut_error.txt").read_text().strip().splitlines()[-1]
            if (outdir / "sut_error.txt").exists()
            else f"exit code {rc}"
        )
        raise RoundError(f"{spec['scenario']} {spec['mode']}: LoadGen test failed: {reason}")


def _main(spec_file: str) -> int:
    import mlperf_loadgen as lg

    from .. import benchmarks
    from .settings import test_settings
    from .sut import System

    spec = json.loads(Path(spec_file).read_text())
    outdir = Path(spec["outdir"])
    bench, scenario = benchmarks.get(spec["benchmark"]), spec["scenario"]
    samples = bench.load_samples(Path(spec["dataset"]))
    try:
        system = System(
            lambda: bench.kind.open_engine(Path(spec["engine"]), spec.get("runtime")),
            samples,
            bench.token_latencies(scenario),
            desc=f"{spec.get('label', scenario)} {spec['mode']}",
            token_counts=bench.kind.TOKEN_COUNTS,
        )
    except Exception as err:  # the engine did not load or warm up (its server gone): the parent says why, in a line
        (outdir / "sut_error.txt").write_text(str(err).strip() or type(err).__name__)
        raise
    # Interactive is a Server run under mlperf.conf's interactive model name (its own latency bounds)
    ts = test_settings(
        Path(spec["user_conf"]), bench.loadgen_name(scenario), bench.loadgen_scenario(scenario), spec["mode"]
    )
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False  # the trace is not valid JSON and large
    sut = lg.ConstructSUT(system.issue_query, system.flush_queries)
    qsl = lg.ConstructQSL(len(samples), len(samples), system.load_samples, system.unload_samples)
    try:
        lg.StartTestWithLogSettings(sut, qsl, ts, log, spec.get("audit_config", ""))
    finally:
        system.close()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    stats = system.engine.stats() if system.engine is not None else None
    if stats is not None:  # what the UNet computed, for DeepCache's accounting
        (outdir / ENGINE_STATS).write_text(json.dumps(stats))
    if system.error:
        (outdir / "sut_error.txt").write_text(system.error)
        print(system.error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
