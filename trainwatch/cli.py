"""Command line: `trainwatch report LOGDIR [--json]` and `trainwatch demo`.

Example:

    $ trainwatch report runs/digits
    $ trainwatch report runs/digits --json | jq '.findings[].code'
    $ python -m trainwatch demo --log-dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _report(args) -> int:
    from trainwatch.report import NoTrainwatchLogs, read_report

    try:
        report = read_report(args.log_dir)
    except NoTrainwatchLogs as error:
        print(f"trainwatch: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report.to_json_dict(), indent=2) if args.json else str(report)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`trainwatch report ... | head`): not an error
        # of ours. Point stdout at devnull so the flush at exit stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if args.fail_on:
        levels = {"error": ("error",), "warning": ("error", "warning")}[args.fail_on]
        if any(f.severity in levels for f in report.findings):
            return 1
    return 0


def _demo(args) -> int:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(os.path.dirname(here), "examples", "digits.py")
    if not os.path.exists(example):
        print(
            "trainwatch: the demo needs the examples/ folder of a source checkout.",
            file=sys.stderr,
        )
        return 2
    import runpy

    sys.argv = [example, "--log-dir", args.log_dir, "--epochs", str(args.epochs)]
    runpy.run_path(example, run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainwatch",
        description="Read what trainwatch logged about a training run.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="summary and findings of a log dir")
    report.add_argument("log_dir", help="the log_dir given to trainwatch.TrainWatch")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        default=None,
        help="exit 1 if a finding of this severity or worse was raised",
    )
    report.set_defaults(func=_report)
    demo = sub.add_parser("demo", help="train the digits example with trainwatch")
    demo.add_argument("--log-dir", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=10)
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the `trainwatch` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
