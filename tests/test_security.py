"""Untrusted files: pickled code, Lightning/truncated checkpoints, bad configs, crafted file names.

Every refusal is one `crackloc CMD: error: ...` line on stderr with exit code 2, and no code
from a file ever runs.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crackloc.cli import main
from crackloc.inference.outputs import safe_stem


class _Exploit:
    """Unpickling this calls os.system (it must never be unpickled)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _one_error_line(argv: list, capsys) -> str:
    """Run the CLI; it must exit 2 with exactly one error line and no traceback."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in out + err, err
    assert lines[0].startswith(f"crackloc {argv[0]}: error: ")
    return lines[0]


def _commands(ckpt: Path, tmp: Path) -> list[list]:
    """Every command that reads a model file, pointed at `ckpt`."""
    return [
        ["predict", tmp / "x.jpg", "--checkpoint", ckpt, "--out", tmp / "pred"],
        ["evaluate-localization", "--data", tmp, "--checkpoint", ckpt, "--out", tmp / "loc"],
        ["export", "--checkpoint", ckpt, "--out", tmp / "m.onnx"],
        ["evaluate", "--checkpoint", ckpt, "--manifest", tmp / "m.csv"],
    ]


def test_pickled_code_in_a_checkpoint_never_runs(model_file, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = torch.load(model_file, weights_only=True)
    payload["meta"] = {"note": _Exploit(f"touch {shlex.quote(str(marker))}")}
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    assert b"system" in evil.read_bytes()  # the exploit is really in the file (data.pkl is stored)
    for argv in _commands(evil, tmp_path):
        line = _one_error_line(argv, capsys)
        assert "refused" in line and "evil.pt" in line, line
    assert not marker.exists()


def test_lightning_checkpoint_is_refused_with_a_hint(model_file, tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    sd = torch.load(model_file, weights_only=True)["state_dict"]
    torch.save({"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.6",
                "state_dict": {f"model.{k}": v for k, v in sd.items()}, "loops": {}, "callbacks": {},
                "optimizer_states": [], "lr_schedulers": []}, ckpt)
    line = _one_error_line(_commands(ckpt, tmp_path)[0], capsys)
    assert "Lightning training checkpoint" in line and "model.pt" in line


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "wrong_format", "bad_state_dict",
                                    "bad_config"])
def test_damaged_model_files_are_refused(damage, model_file, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    data = model_file.read_bytes()
    payload = torch.load(model_file, weights_only=True)
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "text":
        bad.write_text("not a model\n")
    elif damage == "wrong_format":
        torch.save({**payload, "format": "something-else"}, bad)
    elif damage == "bad_state_dict":
        torch.save({**payload, "state_dict": {"w": [1, 2, 3]}}, bad)
    else:
        torch.save({**payload, "config": {**payload["config"], "fusion": "magic"}}, bad)
    line = _one_error_line(_commands(bad, tmp_path)[0], capsys)
    assert "bad.pt" in line


def test_wrong_weights_are_refused(model_file, tmp_path, capsys):
    payload = torch.load(model_file, weights_only=True)
    sd = dict(payload["state_dict"])
    sd.pop(next(iter(sd)))
    torch.save({**payload, "state_dict": sd}, tmp_path / "short.pt")
    line = _one_error_line(_commands(tmp_path / "short.pt", tmp_path)[0], capsys)
    assert "weights do not fit" in line


@pytest.mark.parametrize("text, key", [
    ("train:\n  lr: 0.001\n  learning_rate: 3\n", "train.learning_rate"),
    ("model:\n  fusion: magic\n", "model.fusion"),
    ("train:\n  epochs: many\n", "train.epochs"),
    ("data:\n  image_size: 5\n", "data.image_size"),
    ("train: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "root must be a mapping"),
])
def test_bad_config_is_one_line_naming_the_key(text, key, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    line = _one_error_line(["train", "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert key in line
    assert not (tmp_path / "run").exists()


def test_crafted_file_names_cannot_escape_out(model_file, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    (tmp_path / "outside.png").write_bytes(b"")
    names = ["..jpg", "...png", ".hidden.jpg", "-rf.jpg", "a b.jpg", "A B.jpg", "ünï cödé.jpg",
             "日本語の長い名前" * 8 + ".png", "..%2f..%2fevil.png", "$(touch x).jpg"]
    src.mkdir()
    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    for name in names:
        img.save(src / name, "PNG")
    (src / "link.png").symlink_to(tmp_path / "outside.png")  # an empty file: reported, not followed out
    rc = main(["predict", str(src), "--checkpoint", str(model_file), "--out", str(out), "--tile", "32"])
    capsys.readouterr()
    assert rc == 1  # the symlink's target is an empty file
    records = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(names)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(src))
    assert all(p.parent == out or p == tmp_path / "outside.png" for p in written), written
    stems = {r["heatmap_png"].removesuffix("_heatmap.png").casefold() for r in records}
    assert len(stems) == len(names)  # unique even ignoring case ("a b" vs "A B")
    assert not (tmp_path / "x").exists() and not Path("x").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=300))
def test_safe_stem_is_a_plain_unique_name(stem):
    used: set[str] = set()
    a, b = safe_stem(Path(stem + ".jpg"), used), safe_stem(Path(stem + ".jpg"), used)
    for name in (a, b):
        assert name and "/" not in name and "\\" not in name and name not in (".", "..")
        assert not name.startswith((".", "-"))
        assert len(f"{name}_overlay.png".encode()) <= 255
    assert a != b
