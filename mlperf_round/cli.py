"""`mlperf-round`: the project's commands. `compare` puts rounds side by side; `check` checks a submission tree;
`pin` writes a checkpoint's commit and sha256 into params.yaml; `repro --round` runs another round file beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import OneLineParser, ParamsError, RoundError, TransientError


def _compare(args: argparse.Namespace) -> int:
    from . import compare, tracking

    if args.fail_on_regression is not None and args.fail_on_regression < 0:
        raise ParamsError(f"--fail-on-regression: {args.fail_on_regression} is negative; give a percentage >= 0")
    from mlflow.exceptions import MlflowException

    uri = args.tracking_uri or tracking.tracking_uri()
    try:
        rounds = compare.load_rounds(args.rounds, uri)
    except (MlflowException, OSError) as err:
        why = (str(err).splitlines() or [type(err).__name__])[0][:200]
        if isinstance(err, OSError) or "retries" in why.lower() or "connection" in why.lower():  # a server down: retry
            raise TransientError(f"{uri}: cannot reach MLflow ({why})") from None
        raise ParamsError(f"--tracking-uri {uri}: not a tracking store MLflow can read ({why})") from None
    rows = compare.compare(rounds)
    if not rows:
        raise ParamsError(f"{', '.join(args.rounds)}: these rounds share no metric (different entries or scenarios)")
    sys.stdout.write(compare.render(rounds, rows, args.format))
    if args.fail_on_regression is None:
        return 0
    found = compare.regressions(rounds, rows, args.fail_on_regression)
    for line in found:
        print(f"regression: {line}", file=sys.stderr)
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="mlperf-round", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    cmp = sub.add_parser("compare", help="rounds side by side, from MLflow (the first is the baseline)")
    cmp.add_argument("rounds", nargs="+", metavar="ROUND", help="a round's name or its parent run's id; two or more")
    cmp.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"
    )
    cmp.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    cmp.add_argument(
        "--fail-on-regression",
        type=float,
        metavar="PCT",
        help="exit 1 when a throughput drops, or a latency or accuracy worsens, by more than PCT percent",
    )
    from . import pin

    pin.add_parser(sub)
    rep = sub.add_parser("repro", help="run a round file beside params.yaml's (its own workspace and LoadGen)")
    rep.add_argument("--round", required=True, type=Path, help="a params file, e.g. rounds/v6.1.yaml")
    chk = sub.add_parser("check", help="check a submission tree as MLCommons' checker would", add_help=False)
    chk.add_argument("args", nargs=argparse.REMAINDER)
    try:
        args = parser.parse_args(argv)
        if args.command == "check":
            from .submission.check import main as check_main

            return check_main(args.args)
        if args.command == "pin":
            return pin.run(args)
        if args.command == "repro":
            from . import rounds

            return rounds.repro(args.round)
        if len(args.rounds) < 2:
            raise ParamsError("mlperf-round compare: give two or more rounds")
        return _compare(args)
    except RoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
