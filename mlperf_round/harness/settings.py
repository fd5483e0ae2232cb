"""LoadGen settings: user.conf written from params; mlperf.conf is compiled into LoadGen."""

from __future__ import annotations

from pathlib import Path

from ..benchmarks.base import BOUND_KEYS
from ..params import EntryParams
from ..versions import SERVER_LIKE


def user_conf(entry: EntryParams, smoke: bool, qsl_size: int, server_qps: dict[str, float] | None = None) -> str:
    """The user.conf of one entry. Outside smoke rounds only the QPS hints are set.

    Interactive's lines are under mlperf.conf's interactive model name (`llama2-70b-interactive.Server.*`), the
    name its run reads them by. `target_qps: auto` is resolved by the performance stage (`server_qps`, per
    scenario, from its Offline run); until then the line says so and sets nothing."""
    bench, model = entry.bench, entry.bench.loadgen_model
    lines = [f"# written by mlperf-round for {entry.mlperf_id}" + (" (smoke: NOT submittable)" if smoke else "")]
    single = entry.loadgen.SingleStream if "SingleStream" in entry.scenarios else None
    off = entry.loadgen.Offline if "Offline" in entry.scenarios else None
    if single is not None:
        lines.append(f"{model}.SingleStream.target_latency = {single.expected_latency_ms:g}")
    if off is not None:
        lines.append(f"{model}.Offline.target_qps = {off.expected_qps}")
    for scenario in SERVER_LIKE:
        if scenario not in entry.scenarios:
            continue
        srv, name = getattr(entry.loadgen, scenario), bench.loadgen_name(scenario)
        found = (server_qps or {}).get(scenario)
        if srv.target_qps != "auto":
            lines.append(f"{name}.Server.target_qps = {srv.target_qps}")
        elif found is not None:
            lines.append(
                f"# {scenario} target_qps auto: {srv.auto_fraction:g} x this entry's measured Offline samples/s"
            )
            lines.append(f"{name}.Server.target_qps = {found:.6g}")
        else:
            lines.append(f"# {scenario} target_qps auto: set from the Offline run, before the {scenario} run")
        # the latency bounds, written out so the conf says what the run was held to
        for key, official in bench.latency_bounds(scenario).items():
            lines.append(f"{name}.Server.{BOUND_KEYS[key]} = {getattr(srv, key) or official}")
        if smoke:
            lines += [
                f"{name}.*.performance_sample_count_override = {qsl_size}" if name != model else "",
                f"{name}.Server.min_duration = {srv.min_duration_ms}",
                f"{name}.Server.min_query_count = {srv.min_query_count}",
            ]
    if smoke:
        lines.append(f"{model}.*.performance_sample_count_override = {qsl_size}")
        if single is not None:
            lines += [
                f"{model}.SingleStream.min_duration = {single.min_duration_ms}",
                f"{model}.SingleStream.min_query_count = {single.min_query_count}",
            ]
        if off is not None:
            lines += [
                f"{model}.Offline.min_duration = {off.min_duration_ms}",
                f"{model}.Offline.min_query_count = {off.min_query_count}",
            ]
    return "\n".join(line for line in lines if line) + "\n"


def test_settings(conf: Path, model: str, scenario: str, mode: str):
    """TestSettings through FromConfig (the only path that applies the round's seeds); once per process."""
    import mlperf_loadgen as lg

    ts = lg.TestSettings()
    rc = ts.FromConfig(str(conf), model, scenario)
    if rc != 0:
        raise ValueError(f"{conf}: LoadGen could not read it (FromConfig returned {rc})")
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = getattr(lg.TestMode, mode)
    return ts


def accuracy_conf(models: list[str], qsl_size: int) -> str:
    """For AccuracyOnly runs: every sample once, issued as fast as the SUT takes them.

    Accuracy mode ignores durations and counts, but Server pacing still applies; a high
    target QPS keeps it from stretching the run, and keeps QPS knobs out of accuracy's inputs.
    `models`: mlperf.conf's names the runs read (Interactive has its own).
    """
    lines = ["# accuracy runs: every sample once"]
    for model in dict.fromkeys(models):
        lines += [
            f"{model}.Offline.target_qps = 1000",
            f"{model}.Server.target_qps = 1000",
            f"{model}.*.performance_sample_count_override = {qsl_size}",
        ]
    return "\n".join(lines) + "\n"
