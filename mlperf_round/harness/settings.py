"""LoadGen settings: user.conf written from params; mlperf.conf is compiled into LoadGen."""

from __future__ import annotations

from pathlib import Path

from ..params import SERVER_BOUNDS, EntryParams

# params key -> LoadGen user.conf key
_BOUND_KEYS = {"target_latency_ms": "target_latency", "ttft_latency_ms": "ttft_latency", "tpot_latency_ms": "tpot_latency"}


def user_conf(model: str, entry: EntryParams, smoke: bool, qsl_size: int, server_qps: float | None = None) -> str:
    """The user.conf of one entry. Outside smoke rounds only the QPS hints are set.

    `target_qps: auto` is resolved by the performance stage (`server_qps`, from its Offline run); until then
    the Server line says so and sets nothing."""
    lines = [f"# written by mlperf-round for {entry.mlperf_id}" + (" (smoke: NOT submittable)" if smoke else "")]
    single = entry.loadgen.SingleStream if "SingleStream" in entry.scenarios else None
    off = entry.loadgen.Offline if "Offline" in entry.scenarios else None
    srv = entry.loadgen.Server if "Server" in entry.scenarios else None
    if single is not None:
        lines.append(f"{model}.SingleStream.target_latency = {single.expected_latency_ms:g}")
    if off is not None:
        lines.append(f"{model}.Offline.target_qps = {off.expected_qps}")
    if srv is not None:
        if srv.target_qps != "auto":
            lines.append(f"{model}.Server.target_qps = {srv.target_qps}")
        elif server_qps is not None:
            lines.append(f"# target_qps auto: {srv.auto_fraction:g} x this entry's measured Offline samples/s")
            lines.append(f"{model}.Server.target_qps = {server_qps:.6g}")
        else:
            lines.append("# target_qps auto: set from the Offline run, before the Server run")
        # the Server latency bounds, written out so the conf says what the run was held to
        for key, official in SERVER_BOUNDS[entry.benchmark].items():
            value = getattr(srv, key) or official
            lines.append(f"{model}.Server.{_BOUND_KEYS[key]} = {value}")
    if smoke:
        lines.append(f"{model}.*.performance_sample_count_override = {qsl_size}")
        if single is not None:
            lines += [f"{model}.SingleStream.min_duration = {single.min_duration_ms}",
                      f"{model}.SingleStream.min_query_count = {single.min_query_count}"]
        if off is not None:
            lines += [f"{model}.Offline.min_duration = {off.min_duration_ms}", f"{model}.Offline.min_query_count = {off.min_query_count}"]
        if srv is not None:
            lines += [
                f"{model}.Server.min_duration = {srv.min_duration_ms}",
                f"{model}.Server.min_query_count = {srv.min_query_count}",
            ]
    return "\n".join(lines) + "\n"


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


def accuracy_conf(model: str, qsl_size: int) -> str:
    """For AccuracyOnly runs: every sample once, issued as fast as the SUT takes them.

    Accuracy mode ignores durations and counts, but Server pacing still applies; a high
    target QPS keeps it from stretching the run, and keeps QPS knobs out of accuracy's inputs.
    """
    return (
        f"# accuracy runs: every sample once\n"
        f"{model}.Offline.target_qps = 1000\n"
        f"{model}.Server.target_qps = 1000\n"
        f"{model}.*.performance_sample_count_override = {qsl_size}\n"
    )
