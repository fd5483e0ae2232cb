"""The benchmark registry: every benchmark object answers what the stages, check and package ask of it,
and its rules agree with their sources (the installed LoadGen's mlperf.conf, versions.py, MLCommons' checker)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from mlperf_round import benchmarks
from mlperf_round.benchmarks.base import Benchmark
from mlperf_round.harness import mlperf_conf
from mlperf_round.params import BenchmarkParams, parse_params, read_yaml
from mlperf_round.versions import VERSIONS

ROOT = Path(__file__).resolve().parent.parent
MASTER_CONF = ROOT.parent / "shared" / "mlcommons" / "main-b66003e1" / "loadgen" / "mlperf.conf"
BENCHES = sorted(benchmarks.REGISTRY.values(), key=lambda b: b.key)
TEXT = (
    "build_tokenizer",
    "build_tiny_model",
    "write_generated_dataset",
    "read_shipped",
    "load_samples",
    "load_tokenizer",
    "tokenizer_dir",
    "load_model",
    "calibration_batches",
    "score",
    "targets",
    "upper_limits",
)
IMAGE = ("download", "load_samples", "evaluate", "targets", "upper_limits")
KIND = ("download", "calibrate", "reference_engine", "quantize", "build", "open_engine", "evaluate")


@pytest.mark.parametrize("bench", BENCHES, ids=lambda b: b.key)
def test_every_benchmark_answers_what_the_stages_and_the_checker_ask(bench: Benchmark):
    assert "." not in bench.key, "DVC splits param paths at dots: the params key must not hold one"
    assert bench.module.BENCHMARK is bench and benchmarks.get(bench.key) is bench
    assert issubclass(bench.schema, BenchmarkParams) and bench.schema().model_dump()
    for name in TEXT if bench.kind.NAME == "text-generation" else IMAGE:
        assert callable(getattr(bench, name)), f"{bench.key} lacks {name}"
    for name in KIND:
        assert callable(getattr(bench.kind, name)), f"kind {bench.kind.NAME} lacks {name}"
    assert set(bench.score_keys) <= set(bench.published_scores) and bench.published_samples > 0
    for target, mlperf_id in bench.ids.items():
        assert benchmarks.by_mlperf_id(mlperf_id) is bench and bench.target_of(mlperf_id) == target
        low, high = bench.published_targets(mlperf_id)
        assert set(bench.score_keys) <= set(low), "every score has a published bound"
    versions = [v for v in VERSIONS if bench.all_ids() & VERSIONS[v].ids]
    assert versions, f"{bench.key} is in no MLPerf version"
    for v in versions:  # the audits come from versions.py alone
        for mlperf_id in bench.all_ids() & VERSIONS[v].ids:
            assert bench.compliance_tests(v, mlperf_id) == VERSIONS[v].compliance[mlperf_id]


@pytest.mark.parametrize("bench", BENCHES, ids=lambda b: b.key)
def test_latency_bounds_and_token_latencies_are_mlperf_confs(bench: Benchmark):
    """MLCommons' current mlperf.conf: the bounds each benchmark reads for Server and Interactive."""
    text = MASTER_CONF.read_text()
    table = mlperf_conf.parse(text)
    for scenario in ("Server", "Interactive") if bench.has_interactive("v6.1") else ("Server",):
        name = bench.loadgen_name(scenario)
        bounds = bench.latency_bounds(scenario, text)
        for key, conf_key in (
            ("ttft_latency_ms", "ttft_latency"),
            ("tpot_latency_ms", "tpot_latency"),
            ("target_latency_ms", "target_latency"),
        ):
            want = int(table.get((name, "Server", conf_key), 0))
            assert bounds.get(key, 0) == want, (name, key)
    expected = {
        "llama2-70b": {"Server": (2000, 200), "Interactive": (450, 40)},
        "llama3_1-8b": {"Server": (2000, 100), "Interactive": (500, 30)},
    }
    for scenario, (ttft, tpot) in expected.get(bench.key, {}).items():
        assert bench.latency_bounds(scenario, text) == {"ttft_latency_ms": ttft, "tpot_latency_ms": tpot}


def test_interactive_is_a_scenario_from_v51_and_an_id_of_its_own_in_v50():
    llama2, llama3 = benchmarks.get("llama2-70b"), benchmarks.get("llama3_1-8b")
    assert llama2.loadgen_name("Interactive") == "llama2-70b-interactive"
    assert llama2.loadgen_scenario("Interactive") == "Server"
    v61 = [(p.mlperf_id, p.folder, p.scenario) for p in llama3.placements("v6.1", 0.99, ["Offline", "Interactive"])]
    assert v61 == [("llama3.1-8b", "Offline", "Offline"), ("llama3.1-8b", "Interactive", "Interactive")]
    v50 = {
        (p.mlperf_id, p.folder, p.scenario)
        for p in llama2.placements("v5.0", 0.999, ["Offline", "Server", "Interactive"])
    }
    assert v50 == {
        ("llama2-70b-99.9", "Offline", "Offline"),
        ("llama2-70b-99.9", "Server", "Server"),
        ("llama2-70b-interactive-99.9", "Server", "Interactive"),
        ("llama2-70b-interactive-99.9", "Offline", "Offline"),
    }
    assert llama2.has_interactive("v5.0") and llama2.has_interactive("v6.1") and llama3.has_interactive("v6.1")
    assert not benchmarks.get("gptj").has_interactive("v5.0")


def _round(version: str, entries: dict, benches: dict | None = None) -> dict:
    return {
        "round": {"version": version, "system": {"system_type": "datacenter"}},
        "benchmarks": benches or {"llama2-70b": {}, "llama3_1-8b": {}},
        "entries": entries,
    }


def test_params_place_interactive_per_version_and_name_what_is_missing():
    from mlperf_round.errors import ParamsError

    entry = {"benchmark": "llama2-70b", "accuracy_target": 0.999, "scenarios": ["Offline", "Interactive"]}
    v61 = parse_params(_round("v6.1", {"a": entry}, {"llama2-70b": {}}))
    assert {p.folder for p in v61.placements(v61.entries["a"])} == {"Offline", "Interactive"}
    v50 = parse_params(
        _round("v5.0", {"a": {**entry, "scenarios": ["Offline", "Server", "Interactive"]}}, {"llama2-70b": {}})
    )
    assert {p.mlperf_id for p in v50.placements(v50.entries["a"])} == {"llama2-70b-99.9", "llama2-70b-interactive-99.9"}
    with pytest.raises(ParamsError, match=r"entries\.a\.scenarios: v5\.0 datacenter needs Server for llama2-70b-99\.9"):
        parse_params(_round("v5.0", {"a": entry}, {"llama2-70b": {}}))
    with pytest.raises(ParamsError, match=r"entries\.a\.scenarios: gptj-99 has no Interactive scenario"):
        parse_params(
            _round("v5.0", {"a": {"benchmark": "gptj", "scenarios": ["Offline", "Interactive"]}}, {"gptj": {}})
        )
    with pytest.raises(
        ParamsError, match=r"benchmarks\.llama3_1-8b: llama3_1-8b is not a benchmark of MLPerf Inference v5\.0"
    ):
        parse_params(_round("v5.0", {}, {"llama3_1-8b": {}}))
    with pytest.raises(ParamsError, match=r"accuracy_target: llama3_1-8b's target is 0\.99, not 0\.999"):
        parse_params(_round("v6.1", {"a": {"benchmark": "llama3_1-8b", "accuracy_target": 0.999}}))
    with pytest.raises(
        ParamsError, match=r"entries\.a\.benchmark: 'llama3\.1-8b' is not a benchmark \(known: .*llama3_1-8b"
    ):
        parse_params(_round("v6.1", {"a": {"benchmark": "llama3.1-8b"}}))


def test_shipped_v61_round_is_valid_and_uses_the_current_benchmarks():
    path = ROOT / "rounds" / "v6.1.yaml"
    params = parse_params(read_yaml(path.read_text(), path), str(path))
    ids = {p.mlperf_id for e in params.entries.values() for p in params.placements(e)}
    assert params.round.version == "v6.1" and ids == {"llama3.1-8b", "llama2-70b-99.9"}
    folders = {p.folder for e in params.entries.values() for p in params.placements(e)}
    assert {"Offline", "Interactive", "Server"} <= folders


def test_user_conf_holds_interactive_under_its_own_model_name():
    from mlperf_round.harness.settings import user_conf

    params = parse_params(
        _round(
            "v6.1",
            {
                "a": {
                    "benchmark": "llama3_1-8b",
                    "scenarios": ["Offline", "Interactive"],
                    "loadgen": {"Interactive": {"target_qps": 2.5}},
                }
            },
        )
    )
    conf = user_conf(params.entries["a"], True, 64)
    assert "llama3_1-8b-interactive.Server.target_qps = 2.5" in conf
    assert "llama3_1-8b-interactive.Server.min_query_count = 460" in conf
    assert "llama3_1-8b.Offline.target_qps" in conf and "llama3_1-8b.Server" not in conf


def test_a_new_benchmark_is_one_module():
    """What a benchmark module declares: the registry lists it, and nothing outside its module names it."""
    src = inspect.getsource(benchmarks)
    for bench in BENCHES:
        assert bench.module.__name__.rsplit(".", 1)[1] in src
    for path in [
        *(ROOT / "stages").glob("*.py"),
        *(ROOT / "mlperf_round" / "submission").glob("*.py"),
        *(ROOT / "mlperf_round" / "harness").glob("*.py"),
        ROOT / "mlperf_round" / "params.py",
        ROOT / "mlperf_round" / "compare.py",
        ROOT / "mlperf_round" / "engines.py",
    ]:
        text = path.read_text()
        for word in ('"gptj"', '"llama2-70b"', '"llama3_1-8b"', '"stable-diffusion-xl"', "is_image"):
            assert word not in text, f"{path.relative_to(ROOT)} names {word}"


def test_the_stages_and_the_harness_never_name_a_backend():
    """Engines are built, opened and served through mlperf_round.backends, keyed by build.backend."""
    from mlperf_round import backends

    for path in [
        *(ROOT / "stages").glob("*.py"),
        *(ROOT / "mlperf_round" / "submission").glob("*.py"),
        *(ROOT / "mlperf_round" / "harness").glob("*.py"),
    ]:
        text = path.read_text()
        for word in ("torch_llm", "torch_sdxl", "TorchLLM", "TorchSDXL", "endpoint", *backends.BACKENDS.values()):
            assert word not in text, f"{path.relative_to(ROOT)} names {word}"
    for name in backends.BACKENDS:  # each backend answers what the kinds, the harness and package ask
        module = backends.get(name)
        for attr in ("build_text", "build_image", "open_text", "open_image", "serve", "describe"):
            assert callable(getattr(module, attr)), f"{name}.{attr}"


def test_llama3_1_reads_mlcommons_cnn_eval_as_shipped(tmp_path: Path):
    """cnn_eval.json's rows (instruction as {"llama": template}) and the calibration file's (instruction as the template
    itself): the prompt is the filled template, tok_input is served as given; rows without tok_input are refused."""
    import json

    from mlperf_round.benchmarks import llama3_1
    from mlperf_round.errors import InputError

    template = llama3_1.TEMPLATE
    rows = [
        {"instruction": {"llama": template}, "input": "An article.", "tok_input": [1, 5, 9], "output": "A summary."},
        {"instruction": template, "input": "Another one.", "tok_input": [1, 7], "output": "Short."},
    ]
    (tmp_path / "cnn_eval.json").write_text(json.dumps(rows, indent=4, ensure_ascii=False))
    kept = llama3_1.read_shipped(tmp_path / "cnn_eval.json")
    (tmp_path / "dataset.json").write_text(json.dumps(kept))
    samples = llama3_1.load_samples(tmp_path / "dataset.json")
    assert samples[0].prompt == template.format(input="An article.") and samples[0].input_ids == (1, 5, 9)
    assert samples[1].prompt.endswith("Article:\nAnother one.\n\nSummary:") and samples[1].reference == "Short."
    (tmp_path / "bad.json").write_text(json.dumps([{"input": "x", "output": "y"}]))
    with pytest.raises(InputError, match=r"bad\.json: sample 0 lacks one of input, output, tok_input"):
        llama3_1.read_shipped(tmp_path / "bad.json")
    scores = llama3_1.score(["A summary."], ["A summary."], [3])
    assert scores["rouge1"] == scores["rougeLsum"] == 100.0 and scores["gen_len"] == len("A summary.")
    low, high = benchmarks.get("llama3_1-8b").published_targets("llama3.1-8b")
    assert low["rougeLsum"] == pytest.approx(35.793 * 0.99) and high["gen_len"] == pytest.approx(8167644 * 1.1)
    assert low["gen_len"] == pytest.approx(8167644 * 0.9)
