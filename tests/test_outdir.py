"""An output folder's rules (#27): one writer at a time, earlier results never emptied, resume never mixes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crackloc.cli import main
from crackloc.inference.outdir import output_lock
from crackloc.inference.outputs import read_records
from crackloc.io import save_png
from tests.helpers import start_held, wait_held


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """6 synthetic 40x40 PNG photos in two folders (a/ and b/)."""
    from crackloc.data.synthetic import make_crack_image

    root = tmp_path_factory.mktemp("photos")
    for i in range(6):
        img, _ = make_crack_image(40, 40, crack=i % 2 == 0, seed=i)
        save_png(root / ("a" if i < 3 else "b") / f"img{i}.png",
                 (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return root


def _predict(*args: object) -> int:
    return main(["predict", *map(str, args), "--tile", "64"])


def _paths(out: Path) -> list[str]:
    return sorted(Path(r["path"]).name for r in read_records(out / "predictions.jsonl"))


def test_records_name_the_model_and_the_settings_that_made_them(photos, model_file, tmp_path):
    out = tmp_path / "out"
    assert _predict(photos / "a", "--out", out, "--checkpoint", model_file, "--scale", "1.5") == 0
    rec = read_records(out / "predictions.jsonl")[0]
    import hashlib

    assert rec["model"] == hashlib.sha256(model_file.read_bytes()).hexdigest()[:16]
    assert rec["settings"]["scale"] == 1.5 and rec["settings"]["tile"] == 64
    assert rec["settings"]["precision"] in ("bf16", "32") and rec["settings"]["geometry"] is False


def test_resume_refuses_results_of_other_settings_or_another_model_unless_mixed(photos, model_file, tmp_path,
                                                                                capsys):
    out = tmp_path / "out"
    assert _predict(photos / "a" / "img0.png", "--out", out, "--checkpoint", model_file) == 0
    before = (out / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    assert _predict(photos / "a", "--out", out, "--checkpoint", model_file, "--resume", "--scale", "2") == 2
    err = capsys.readouterr().err
    assert "--resume: 1 of the earlier results" in err and "scale 1.0 → 2.0" in err and "--resume-mixed" in err
    other = tmp_path / "other.pt"
    other.write_bytes(model_file.read_bytes() + b"\0")  # another file (a byte more), same weights
    assert _predict(photos / "a", "--out", out, "--checkpoint", other, "--resume") == 2
    assert "another model file" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_bytes() == before  # a refused resume touches nothing
    assert _predict(photos / "a", "--out", out, "--checkpoint", model_file, "--resume-mixed", "--scale", "2") == 0
    scales = {Path(r["path"]).name: r["settings"]["scale"] for r in read_records(out / "predictions.jsonl")}
    assert scales == {"img0.png": 1.0, "img1.png": 2.0, "img2.png": 2.0}  # kept as they were, the rest added


def test_resume_with_another_input_list_keeps_the_earlier_records_and_their_pngs(photos, model_file, tmp_path):
    out = tmp_path / "out"
    assert _predict(photos / "a", "--out", out, "--checkpoint", model_file) == 0
    assert _predict(photos / "b", "--out", out, "--checkpoint", model_file, "--resume") == 0
    assert _paths(out) == [f"img{i}.png" for i in range(6)]
    for rec in read_records(out / "predictions.jsonl"):
        assert all((out / rec[k]).is_file() for k in ("heatmap_png", "overlay_png", "color_png"))


def test_resume_never_writes_over_the_pngs_of_an_input_not_given_again(photos, model_file, tmp_path):
    """Two inputs that share a file name: the one not given again keeps its PNGs."""
    out, twin = tmp_path / "out", tmp_path / "twin"
    twin.mkdir()
    save_png(twin / "img0.png", np.full((40, 40, 3), 90, np.uint8))
    assert _predict(photos / "a" / "img0.png", "--out", out, "--checkpoint", model_file) == 0
    first = read_records(out / "predictions.jsonl")[0]
    pngs = {k: (out / first[k]).read_bytes() for k in ("heatmap_png", "overlay_png")}
    assert _predict(twin / "img0.png", "--out", out, "--checkpoint", model_file, "--resume") == 0
    recs = {r["path"]: r for r in read_records(out / "predictions.jsonl")}
    assert len(recs) == 2 and recs[str(twin / "img0.png")]["heatmap_png"] != first["heatmap_png"]
    assert all((out / first[k]).read_bytes() == v for k, v in pngs.items())


def test_a_run_where_every_input_fails_keeps_the_earlier_results(photos, model_file, tmp_path):
    out, bad = tmp_path / "out", tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert _predict(photos / "a", "--out", out, "--checkpoint", model_file) == 0
    assert _predict(bad, "--out", out, "--checkpoint", model_file) == 1
    (aside,) = out.glob("earlier-*")
    assert [Path(r["path"]).name for r in read_records(aside / "predictions.jsonl")] == ["img0.png", "img1.png",
                                                                                         "img2.png"]
    assert len(list(aside.glob("*.png"))) == 9 and read_records(out / "predictions.jsonl") == []


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(photos, model_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out):
        assert _predict(photos / "a", "--out", out, "--checkpoint", model_file) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crackloc predict: error: {out} is being written by another crackloc run (process "
                   f"{os.getpid()}): wait for it to finish, or choose another --out"]
    assert not (out / "predictions.jsonl").exists()


def test_two_runs_into_one_folder_lose_nothing_and_a_killed_runs_lock_is_taken_over(photos, model_file, tmp_path,
                                                                                   capsys):
    """Run A holds (after its first image) in a subprocess; run B is refused; A is killed; C takes over."""
    out, marker = tmp_path / "out", tmp_path / "held"
    argv = ["predict", photos / "a", "--out", out, "--checkpoint", model_file, "--tile", "64"]
    proc = start_held(argv, at="crackloc.inference.outputs:OutputFolder.commit", call=2, marker=marker,
                      env={"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_held(proc, marker)
        assert _predict(photos / "b", "--out", out, "--checkpoint", model_file) == 2
        assert f"(process {proc.pid})" in capsys.readouterr().err
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _paths(out) == ["img0.png"]  # A's first image, committed before the hold
    assert _predict(photos / "b", "--out", out, "--checkpoint", model_file, "--resume") == 0
    assert _paths(out) == ["img0.png", "img3.png", "img4.png", "img5.png"]
