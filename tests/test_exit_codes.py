"""Exit codes as documented for every command: 2 refused, 130 interrupted (one line each).

0 and 1 are covered command by command (test_cli, test_robustness); the real-SIGINT tests of
predict and train are in test_predict_reliability and test_train_reliability.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from crackloc.cli import build_parser, main

ARGV = {  # the smallest argv each command accepts
    "split": ["--data", "D", "--out", "m.csv"], "train": ["--data", "D", "--out", "R"],
    "evaluate": ["--run", "R"], "predict": ["x.jpg", "--out", "O"], "compare": ["a.jpg", "b.jpg", "--out", "O"],
    "demo": [],
    "evaluate-localization": ["--data", "D", "--out", "O"], "export": ["--checkpoint", "nope.pt", "--out", "m.onnx"],
    "experiment": ["--data", "D", "--out", "E"], "report": ["E"], "serve": ["--folder", "/no/such/folder"],
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_is_listed_here():
    assert set(_commands()) == set(ARGV)


@pytest.mark.parametrize("command", sorted(ARGV))
def test_interrupt_is_130_with_one_line(command, monkeypatch, capsys):
    func = _commands()[command].get_default("func")

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules[func.__module__], func.__name__, interrupted)
    assert main([command, *ARGV[command]]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"crackloc {command}: interrupted"), err


# demo needs no input; predict lists a missing input as a skipped file (exit 1, test_predict_reliability)
@pytest.mark.parametrize("command", sorted(set(ARGV) - {"demo", "predict"}))
def test_missing_inputs_are_refused_with_2(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # every relative path in ARGV is missing here
    assert main([command, *ARGV[command]]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"crackloc {command}: error:"), err
