"""Every numeric option of every command refuses nan / inf / negative / huge values in one line.

The walk is generated from the parser itself, so an option added later is covered too; the
ranges come from `crackloc.config.RANGES`, the table beside the config fields.
"""

from __future__ import annotations

import argparse

import pytest

from crackloc.cli import build_parser, main
from crackloc.cli.registry import OneLineParser, check_numeric_options
from crackloc.config import RANGES

BAD_VALUES = ("nan", "inf", "-inf", "-1", "1e30", "99999999999")


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _numeric_options() -> list[tuple[str, str, list[str]]]:
    """(command, option, minimal argv that satisfies the command's required arguments)."""
    found = []
    for name, parser in _commands().items():
        base = [name]
        for action in parser._actions:
            if not action.option_strings and action.dest != "help":
                base.append("/no/such/input")  # positional
            elif action.required:
                base += [action.option_strings[0], "/no/such/path"]
        for action in parser._actions:
            if getattr(action.type, "checked", False) and action.option_strings:
                found.append((name, action.option_strings[0], base))
    return found


OPTIONS = _numeric_options()


def test_the_walk_finds_the_numeric_options():
    names = {(c, o) for c, o, _ in OPTIONS}
    for expected in [("predict", "--scale"), ("predict", "--mm-per-px"), ("evaluate-localization", "--tolerance"),
                     ("evaluate-localization", "--max-images"), ("train", "--lr"), ("split", "--max-distance"),
                     ("export", "--opset"), ("experiment", "--loc-scale")]:
        assert expected in names, expected
    assert len(OPTIONS) >= 30


@pytest.mark.parametrize("command,option,base", OPTIONS, ids=[f"{c} {o}" for c, o, _ in OPTIONS])
def test_bad_numbers_are_refused_in_one_line(command, option, base, capsys):
    for value in BAD_VALUES:
        with pytest.raises(SystemExit) as exc:
            main([*base, f"{option}={value}"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert exc.value.code == 2, (option, value, err)
        assert len(lines) == 1 and "Traceback" not in err, (option, value, err)
        assert lines[0].startswith(f"crackloc {command}: error: argument {option}"), lines[0]


def test_range_message_names_the_unit(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.jpg", "--out", "o", "--tile", "8"])
    assert "--tile=8 is outside [32, 4096] px" in capsys.readouterr().err


def test_a_numeric_option_without_a_range_is_a_programming_error():
    parser = OneLineParser(prog="crackloc t")
    parser.add_argument("--no-such-range", type=float)
    with pytest.raises(ValueError, match="no range"):
        check_numeric_options(parser)
    ok = OneLineParser(prog="crackloc t")
    ok.add_argument("--tolerance", type=int)
    check_numeric_options(ok)
    assert ok.parse_args(["--tolerance", "3"]).tolerance == 3 and "tolerance" in RANGES
