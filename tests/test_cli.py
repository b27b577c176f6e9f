"""CLI smoke tests on temp folders: every command runs, bad paths give one line and exit ≠ 0."""

import json
from pathlib import Path

import pytest
import torch

from crackloc.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("split", "train", "evaluate", "predict", "demo", "evaluate-localization", "export"):
        assert name in out


def test_train_writes_a_complete_run(tiny_run: Path):
    for name in ("config.yaml", "split.csv", "teacher.pt", "model.pt", "pseudo_masks.pt", "metrics.json",
                 "metrics.md", "logs/student/version_0/metrics.csv", "logs/teacher/version_0/metrics.csv",
                 "checkpoints/student/last.ckpt"):
        assert (tiny_run / name).exists(), name
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert {"auroc", "accuracy", "precision", "recall", "f1"} <= set(m["at_0.5"])
    assert "iou_vs_teacher_pseudo_mean" in m["pseudo_iou"]
    masks = torch.load(tiny_run / "pseudo_masks.pt", weights_only=True)["masks"]
    assert tuple(masks.shape[-2:]) == (112, 112)  # patch size: augmented with the images, pooled per step


def test_evaluate_and_predict(tiny_run: Path, crack_folder: Path, tmp_path: Path):
    assert main(["evaluate", "--run", str(tiny_run), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "metrics.md").is_file()
    out = tmp_path / "pred"
    assert main(["predict", str(crack_folder / "Positive"), "--checkpoint", str(tiny_run / "model.pt"),
                 "--out", str(out)]) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 30
    rec = json.loads(lines[0])
    assert 0 <= rec["crack_probability"] <= 1 and (out / rec["overlay_png"]).is_file()


def test_split_command(crack_folder: Path, tmp_path: Path, capsys):
    assert main(["split", "--data", str(crack_folder), "--out", str(tmp_path / "m.csv")]) == 0
    assert "0 groups across splits" in capsys.readouterr().out


def test_resume_refuses_to_overwrite(tiny_run: Path, crack_folder: Path, capsys):
    rc = main(["train", "--data", str(crack_folder), "--out", str(tiny_run), "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--resume" in err[0]


@pytest.mark.parametrize("argv", [
    ["train", "--data", "/no/such/folder", "--out", "{tmp}/r"],
    ["split", "--data", "/no/such/folder", "--out", "{tmp}/m.csv"],
    ["evaluate", "--run", "/no/such/run"],
    ["predict", "x.jpg", "--checkpoint", "/no/such/model.pt", "--out", "{tmp}/p"],
    ["evaluate-localization", "--data", "/no/such", "--checkpoint", "/no/such/model.pt", "--out", "{tmp}/e"],
])
def test_bad_paths_give_one_line_and_nonzero_exit(argv, tmp_path: Path, capsys):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc != 0
    assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0]


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description, name


def test_predict_with_the_onnx_backend_matches_torch(tiny_run: Path, crack_folder: Path, tmp_path: Path):
    img = crack_folder / "Positive" / sorted(p.name for p in (crack_folder / "Positive").iterdir())[0]
    for backend in ("torch", "onnx"):
        assert main(["predict", str(img), "--checkpoint", str(tiny_run / "model.pt"), "--backend", backend,
                     "--precision", "32", "--out", str(tmp_path / backend)]) == 0
    a, b = (json.loads((tmp_path / k / "predictions.jsonl").read_text()) for k in ("torch", "onnx"))
    assert abs(a["crack_probability"] - b["crack_probability"]) < 1e-3


def test_export_command_writes_a_checked_onnx_file(tiny_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tiny_run / "model.pt"), "--out", str(out),
                 "--image-size", "112"]) == 0
    assert out.stat().st_size > 1_000_000 and "checked against torch" in capsys.readouterr().out


def test_evaluate_localization_names_the_images_that_failed_when_no_dev_image_is_left(tmp_path, capsys):
    """#27: it said "see the failed images" without naming them."""
    import numpy as np

    from crackloc.io import save_png

    for i in range(4):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / f"im{i}.png").write_bytes(b"not a png")
        mask = np.zeros((32, 32), np.uint8)
        mask[10:20, 15] = 255
        save_png(tmp_path / "masks" / f"im{i}.png", mask)
    rc = main(["evaluate-localization", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
               "--model", "darkness"])
    err = capsys.readouterr().err
    assert rc != 0 and "image(s) failed: im" in err and "not a readable image" in err, err


def test_serve_without_the_viewer_extra_says_how_to_install_it(monkeypatch, capsys):
    """gradio and ray are extras (#25): without gradio, `serve` gives the install line, not a traceback."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == "crackloc serve: error: crackloc serve needs gradio: pip install 'crackloc[viewer]'"
