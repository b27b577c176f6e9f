"""`split`, `train` and `evaluate` refuse bad set-ups before writing anything, and Ctrl-C exits 130.

Exit codes: 0 ok, 1 finished but skipped bad inputs (tests/test_robustness.py), 2 refused,
130 interrupted. Training here is the tiny preset on 64 px synthetic images, 1 epoch each.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from crackloc.cli import build_parser, main
from crackloc.config import preset, save_config
from crackloc.data.dataset import DecodedSplit
from crackloc.data.synthetic import write_crack_folder
from crackloc.errors import CracklocError
from tests.helpers import start_held, wait_held

FAST = ["--preset", "tiny", "--pretrained", "none", "--epochs", "1", "--teacher-epochs", "1", "--max-train", "16"]
INTERRUPTED = "crackloc train: interrupted"  # the line goes on to say how to continue (--resume)


def _run(argv: list, capsys) -> tuple[int, list[str]]:
    """`crackloc ARGV` in-process: (exit code, the CLI's own stderr lines)."""
    rc = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("crackloc ")]
    return rc, err


@pytest.fixture()
def one_crack(crack_folder: Path, tmp_path: Path) -> Path:
    """1 crack image and 20 crack-free ones (a copy of the synthetic folder's first images)."""
    root = tmp_path / "one crack"
    for sub, keep in (("Positive", 1), ("Negative", 20)):
        (root / sub).mkdir(parents=True)
        for src in sorted((crack_folder / sub).iterdir())[:keep]:
            shutil.copyfile(src, root / sub / src.name)
    return root


def _assert_refused(rc: int, err: list[str], *needles: str) -> None:
    assert rc == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


def test_ctrl_c_during_train_exits_130_and_resume_finishes(crack_folder, tmp_path, capsys):
    """`crackloc train` held at the end of the teacher's 2nd validation (the 1st epoch is in its log), then Ctrl-C."""
    run, log, marker = tmp_path / "run", tmp_path / "stderr.txt", tmp_path / "held"
    argv = ["train", "--data", crack_folder, "--out", run, *FAST[:-4], "--teacher-epochs", "2", "--batch-size", "4",
            "--max-train", "16", "--no-eval"]
    with log.open("w") as err:
        proc = start_held(argv, at="crackloc.training.module:LitLocalizer.on_validation_epoch_end", call=2, marker=marker,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_held(proc, marker)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log.read_text()
    assert (run / "logs/teacher/version_0/metrics.csv").exists(), stderr[-2000:]
    assert rc == 130, stderr[-2000:]
    assert [ln for ln in stderr.splitlines() if ln.startswith(INTERRUPTED) and "--resume" in ln], stderr[-2000:]
    assert (run / "config.yaml").is_file() and not (run / "model.pt").exists()
    saved = (run / "config.yaml").read_text()
    assert "batch_size: 4\n" in saved
    (run / "config.yaml").write_text(saved.replace("batch_size: 4\n", "batch_size: 8\n"))  # edited meanwhile
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("crackloc train: error:")]
    assert len(err) == 1 and "no longer matches this checkpoint (train.batch_size: 4 there, 8 now)" in err[0], err
    (run / "config.yaml").write_text(saved)
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0
    capsys.readouterr()
    assert (run / "model.pt").is_file()


def test_refused_train_writes_nothing_and_the_corrected_command_runs(one_crack, crack_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _run(["train", "--data", one_crack, "--out", out, *FAST], capsys)
    _assert_refused(rc, err, "the val part has no crack image", "train 1/", "val 0/", "test 0/",
                    "at least 5 crack and 5 crack-free images")
    assert not out.exists()
    rc, err = _run(["train", "--data", crack_folder, "--out", out, *FAST, "--no-eval"], capsys)
    assert rc == 0, err
    assert (out / "model.pt").is_file() and (out / "config.yaml").is_file()


def test_refusal_after_the_folder_was_made_removes_only_what_this_call_wrote(crack_folder, tmp_path, capsys,
                                                                              monkeypatch):
    import crackloc.training.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise CracklocError("teacher refused")

    monkeypatch.setattr(pipeline, "teacher_stage", refuse)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    fresh = tmp_path / "new" / "deeper" / "run"
    for out in (kept, fresh):
        rc, err = _run(["train", "--data", crack_folder, "--out", out, *FAST], capsys)
        _assert_refused(rc, err, "teacher refused")
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists()


def test_missing_pretrained_weights_refuse_before_the_run_folder_exists(crack_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _run(["train", "--data", crack_folder, "--out", out, *FAST, "--pretrained", tmp_path / "no.pth"],
                   capsys)
    _assert_refused(rc, err, "no.pth")
    assert not out.exists()


def test_resume_refuses_flags_that_differ_from_the_saved_config(tmp_path, capsys):
    run = tmp_path / "run"
    save_config(preset("tiny", **{"train.lr": 5e-4}), run / "config.yaml")
    rc, err = _run(["train", "--out", run, "--resume", "--lr", "0.001"], capsys)
    _assert_refused(rc, err, "train.lr: saved 0.0005, given 0.001", "drop those flags", "new --out")
    rc, err = _run(["train", "--out", run, "--resume", "--preset", "quick"], capsys)
    _assert_refused(rc, err, "preset: saved tiny, given quick", "train.epochs: saved 4, given 3")
    assert [p.name for p in run.iterdir()] == ["config.yaml"]


def test_config_and_preset_together_and_an_empty_config_are_refused(crack_folder, tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    tiny = save_config(preset("tiny"), tmp_path / "tiny.yaml")
    base = ["train", "--data", crack_folder, "--out", tmp_path / "run"]
    _assert_refused(*_run([*base, "--config", tiny, "--preset", "paper"], capsys), "not both")
    _assert_refused(*_run([*base, "--config", empty], capsys), "empty.yaml: empty config file")
    assert not (tmp_path / "run").exists()


def test_no_preset_and_no_config_means_quick(crack_folder, tmp_path):
    from crackloc.cli.train import requested_config

    parser = build_parser()
    args = parser.parse_args(["train", "--data", str(crack_folder), "--out", str(tmp_path / "r")])
    assert requested_config(args)[0].preset == "quick"
    tiny = save_config(preset("tiny", **{"train.epochs": 7}), tmp_path / "tiny.yaml")
    args = parser.parse_args(["train", "--config", str(tiny), "--out", str(tmp_path / "r")])
    cfg = requested_config(args)[0]
    assert cfg.preset == "tiny" and cfg.train.epochs == 7


def test_evaluate_refuses_a_test_part_without_a_class(one_crack, model_file, tmp_path, capsys):
    from crackloc.data.folders import scan_labelled
    from crackloc.data.split import make_manifest, write_manifest

    root, items = scan_labelled(one_crack)
    rows, _ = make_manifest(root, items, progress=False)
    manifest = write_manifest(tmp_path / "m.csv", rows, root=root)
    rc, err = _run(["evaluate", "--checkpoint", model_file, "--manifest", manifest, "--out", tmp_path / "ev"],
                   capsys)
    _assert_refused(rc, err, "the test part has 0 crack and 3 crack-free", "at least 5 crack")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_paper_iou_is_skipped_without_positive_images(model_file):
    from crackloc.evaluation.evaluate import paper_iou

    test = DecodedSplit(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.zeros(3), ["a", "b", "c"])
    assert paper_iou(model_file, test, torch.zeros(3, 1, 32, 32), percentile=95.0) is None


def test_five_distinct_images_per_class_fill_every_split_part():
    from crackloc.data.split import MIN_PER_CLASS, assign_splits, lacking_part, part_counts

    def parts(n: int) -> dict:
        labels = [1] * n + [0] * n
        splits = assign_splits(labels, list(range(2 * n)), seed=0)
        return part_counts([type("R", (), {"split": s, "label": lab}) for s, lab in zip(splits, labels, strict=True)])

    assert lacking_part(parts(MIN_PER_CLASS)) is None
    assert lacking_part(parts(MIN_PER_CLASS - 1)) is not None


def test_split_refuses_identical_files_under_both_labels(tmp_path, capsys):
    root = tmp_path / "data"
    write_crack_folder(root, 20, size=64, seed=5)
    pos = sorted((root / "Positive").iterdir())
    for src in pos[:2]:
        shutil.copyfile(src, root / "Negative" / f"copy_{src.name}")
    rc, err = _run(["split", "--data", root, "--out", tmp_path / "m.csv"], capsys)
    _assert_refused(rc, err, f"{pos[0]} (crack)", f"{root / 'Negative' / ('copy_' + pos[0].name)} (no-crack)",
                    "2 image(s) are filed under both labels")
    assert not (tmp_path / "m.csv").exists()


def test_split_refuses_the_same_or_nested_class_folders(crack_folder, tmp_path, capsys):
    pos = crack_folder / "Positive"
    nested = tmp_path / "outer" / "inner"
    nested.mkdir(parents=True)
    out = ["--out", tmp_path / "m.csv"]
    _assert_refused(*_run(["split", "--positive-dir", pos, "--negative-dir", pos, *out], capsys), "same folder")
    _assert_refused(*_run(["split", "--positive-dir", nested.parent, "--negative-dir", nested, *out], capsys),
                    f"{nested} lies inside {nested.parent}")


def test_split_refuses_parts_emptied_by_near_duplicate_grouping(tmp_path, capsys):
    from crackloc.data.synthetic import make_crack_image
    from crackloc.io import save_png

    root = tmp_path / "near copies"  # 12 slightly different copies of one image per class
    for k in range(12):
        for sub, crack in (("Positive", True), ("Negative", False)):
            img, _ = make_crack_image(64, 64, crack=crack, seed=0, darkness=0.3 + 0.02 * k)
            img = img * (1 - 0.01 * k)
            save_png(root / sub / f"{k:02d}.png", (img * 255).round().byte().permute(1, 2, 0).numpy())
    out = tmp_path / "m.csv"
    rc, err = _run(["split", "--data", root, "--out", out, "--max-distance", "16"], capsys)
    _assert_refused(rc, err, f"{out} not written", "the val part is empty",
                    "--max-distance 16 merged the 24 images into 2 group(s)", "lower --max-distance")
    assert not out.exists()


def test_split_refuses_an_existing_out_unless_forced(crack_folder, tmp_path, capsys):
    out = tmp_path / "m.csv"
    out.write_text("keep me\n")
    rc, err = _run(["split", "--data", crack_folder, "--out", out], capsys)
    _assert_refused(rc, err, f"{out} already exists", "--force")
    assert out.read_text() == "keep me\n"
    assert main(["split", "--data", str(crack_folder), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("# root=")


def test_a_manifest_labelling_identical_files_both_ways_is_refused(crack_folder):
    from crackloc.data.folders import scan_labelled
    from crackloc.data.split import check_manifest, make_manifest

    root, items = scan_labelled(crack_folder)
    rows, _ = make_manifest(root, items, progress=False)
    a = next(r for r in rows if r.label == 1 and r.split == "train")
    b = next(r for r in rows if r.label == 0 and r.split == "train")
    b.sha256, b.group = a.sha256, a.group
    with pytest.raises(CracklocError, match="labels identical files both ways"):
        check_manifest(rows)
