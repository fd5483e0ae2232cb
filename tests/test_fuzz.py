"""Bad input, generated: any mutation of a valid params.yaml, any command line, either is accepted or
is refused with exit 2 and one line naming what is wrong; never a traceback, never after work starts."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mlperf_round.errors import ParamsError
from mlperf_round.params import parse_params

from .conftest import ROOT, run

SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
SOURCE = "params.yaml"


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every address in the tree: mapping keys and list items."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(SHIPPED)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["fp8", "int8_sq", "2:4", "Offline", "Server", "closed", "open", "gptj", "torch", "v5.0", "v6.1", "-1", "1e-3"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def mutated(draw) -> tuple[dict, str]:
    data = copy.deepcopy(SHIPPED)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            last = path[-1]
            parent[last]  # noqa: B018 (still there after an earlier mutation?)
        except (KeyError, IndexError, TypeError):
            continue
        how = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        if how == "replace":
            parent[last] = draw(values)
        elif how == "delete":
            del parent[last]
        elif how == "add" and isinstance(parent[last], dict):
            parent[last][draw(st.text(min_size=1, max_size=10))] = draw(values)
        elif how == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(last)
    return data


# "params.yaml: <key path>: <what is wrong>", or a whole-file problem
ONE_LINE = re.compile(r"params\.yaml: (the top level must be a mapping.*|\S.*: \S.*)")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_any_mutation_of_params_validates_or_names_a_key_in_one_line(data):
    try:
        parse_params(data, SOURCE)
    except ParamsError as err:
        message = str(err)
        assert "\n" not in message and ONE_LINE.fullmatch(message), message
        assert err.exit_code == 2


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(scalars, max_size=3)))
def test_a_params_file_that_is_not_a_mapping_is_one_line(data):
    with pytest.raises(ParamsError, match=r"^params\.yaml: the top level must be a mapping"):
        parse_params(data, SOURCE)


words = st.one_of(
    st.sampled_from(
        [
            "compare",
            "check",
            "--format",
            "json",
            "csv",
            "xml",
            "--fail-on-regression",
            "-5",
            "10",
            "--tracking-uri",
            "--version",
            "v5.0",
            "v9.9",
            "--smoke",
            "--help",
            "-h",
            "smoke",
            "",
            "--",
            "-",
        ]
    ),
    st.text(max_size=10),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(words, max_size=6))
def test_any_command_line_of_the_cli_exits_cleanly(argv, tmp_path_factory, monkeypatch):
    """`mlperf-round`: 0, 1 (a regression or findings), 2 (bad arguments), 3 (bad input); one line, no traceback."""
    from mlperf_round.cli import main

    cwd = tmp_path_factory.mktemp("cli")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd}/none.db")
    try:
        code = main(argv)
    except SystemExit as exit_:  # --help, and argparse's own exits
        code = exit_.code or 0
    assert code in (0, 1, 2, 3), (argv, code)


STAGE_ARGV = st.lists(
    st.one_of(
        st.sampled_from(["--params", "nope.yaml", "--", "-x", "gptj-99", "llama2", "--help"]), st.text(max_size=8)
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(STAGE_ARGV, st.sampled_from([("download", "benchmark"), ("quantize", "entry"), ("package", "round")]))
@example(["nope.yaml", "\n"], ("download", "benchmark"))  # found by Hypothesis: argparse echoes the argument
def test_any_stage_command_line_is_parsed_or_refused_in_one_line(argv, stage):
    from mlperf_round.runner import _parse

    try:
        _parse(*stage, argv)
    except ParamsError as err:
        assert "\n" not in str(err) and str(err).startswith(f"python -m stages.{stage[0]}: ")
    except SystemExit as exit_:  # --help
        assert exit_.code == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["stages.download", "nope"],
        ["stages.quantize", "gptj-99", "--params", "missing.yaml"],
        ["stages.package", "extra"],
        ["mlperf_round", "compare", "one"],
        ["mlperf_round", "frobnicate"],
        ["mlperf_round.submission.check"],
    ],
)
def test_entry_points_refuse_bad_arguments_with_exit_2_and_one_line_before_any_work(argv, project: Path):
    proc = run([sys.executable, "-m", *argv], project, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (proc.returncode, proc.stderr)
    assert not (project / "artifacts").exists() and not (project / "mlruns").exists()
