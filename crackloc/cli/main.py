"""`crackloc` command line: split, train, evaluate, predict, demo, and more.

Every subcommand turns a user error into one line on stderr and a non-zero exit code:
0 ok, 1 finished but skipped bad inputs, 2 refused, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import crackloc.cli.compare  # noqa: F401  (registers compare)
import crackloc.cli.experiment  # noqa: F401  (registers experiment, report)
import crackloc.cli.predict  # noqa: F401  (registers predict, demo, evaluate-localization, export)
import crackloc.cli.serve  # noqa: F401  (registers serve)
import crackloc.cli.train  # noqa: F401  (registers split, train, evaluate)
from crackloc.cli.registry import COMMANDS, OneLineParser, check_numeric_options
from crackloc.errors import CracklocError

ORDER = ("split", "train", "evaluate", "predict", "compare", "demo", "evaluate-localization", "export", "experiment",
         "report", "serve")  # as listed by `crackloc --help`

ON_INTERRUPT = {  # what the one line after Ctrl-C tells the user to do
    "train": "continue the run with the same command plus --resume",
    "experiment": "rerun the same command to continue (finished runs are kept)",
    "predict": "rerun the same command with --resume to finish",
    "compare": "finished pairs are kept; for campaign folders rerun the same command with --resume to finish",
    "": "nothing half-written was left (outputs are written atomically); rerun the command",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    parser = OneLineParser(
        prog="crackloc",
        description="Weakly supervised concrete crack localization: a crack probability and a pixel "
                    "heatmap from a model trained with image-level labels only.",
        epilog="Run `crackloc COMMAND --help` for the options of a command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(COMMANDS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        fn = COMMANDS[name]
        sub_parser = sub.add_parser(name, help=fn.help_text, description=fn.help_text)
        fn(sub_parser)
        check_numeric_options(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `crackloc` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
            return int(args.func(args) or 0)
    except CracklocError as exc:
        print(f"crackloc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment, not a bug: disk full, no permission, read-only --out
        print(f"crackloc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crackloc {args.command}: interrupted; {ON_INTERRUPT.get(args.command, ON_INTERRUPT[''])}",
              file=sys.stderr)
        return 130
