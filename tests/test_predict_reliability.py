"""`crackloc predict`, `demo` and `export` keep the user's files and finished results.

Regression tests of a reliability review: the ONNX backend ran another model file of the same
name, `demo` emptied an existing run folder, an `--out` inside an input folder was read back,
Ctrl-C or a full disk lost finished records, `export` overwrote files, and out-of-memory
messages lost their size.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackloc.cli import main
from crackloc.inference import batch, outputs
from crackloc.inference.outputs import RecordWriter, read_records
from crackloc.io import atomic_write, save_png
from tests.helpers import start_held, wait_held

N_IMAGES = 30
INTERRUPTED = re.compile(r"^crackloc predict: interrupted after (\d+) of 30 images; "
                         r"rerun the same command with --resume to finish$")


def _image(seed: int, size: int = 40) -> np.ndarray:
    from crackloc.data.synthetic import make_crack_image

    img, _ = make_crack_image(size, size, crack=seed % 2 == 0, seed=seed)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """30 synthetic 40x40 PNG photos."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    for i in range(N_IMAGES):
        save_png(root / f"img{i:02d}.png", _image(i))
    return root


def _predict(*args: object) -> int:
    return main(["predict", *map(str, args), "--tile", "64"])


def _assert_complete(out: Path, expected: set[str] | None = None) -> list[dict]:
    """Every record has its 3 complete PNGs, no record is repeated, and no other file is left."""
    records = read_records(out / "predictions.jsonl")
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), "duplicate records"
    if expected is not None:
        assert set(paths) == expected
    pngs = set()
    for rec in records:
        for key in ("heatmap_png", "overlay_png", "color_png"):
            with Image.open(out / rec[key]) as img:
                img.load()  # a half-written PNG would raise here
                assert img.size == (rec["width"], rec["height"])
            pngs.add(rec[key])
    left = {p.name for p in out.iterdir() if not (p.is_dir() and p.name.startswith("earlier-"))}  # set aside
    left -= {"predictions.jsonl", "failed.jsonl", ".crackloc.lock"}
    assert left == pngs, f"stray files: {sorted(left - pngs)}"
    return records


def _all_photos(photos: Path) -> set[str]:
    return {str(p) for p in photos.glob("*.png")}


# 1. the ONNX backend runs the model file it is given


def test_onnx_backend_runs_each_model_file_of_the_same_name(model_file, photos, tmp_path):
    from crackloc.config import preset
    from crackloc.models import build_model
    from crackloc.models.checkpoint import save_model

    first = tmp_path / "a" / "model.pt"
    first.parent.mkdir()
    first.write_bytes(model_file.read_bytes())
    torch.manual_seed(123)
    cfg = preset("tiny", **{"model.pretrained": "none"}).model
    second = save_model(tmp_path / "b" / "model.pt", build_model(cfg), cfg)
    for f in (first, second):
        os.utime(f, (1_700_000_000, 1_700_000_000))
    prob = {}
    for name, ckpt in (("a", first), ("b", second)):
        for backend in ("torch", "onnx"):
            out = tmp_path / f"{name}-{backend}"
            assert _predict(photos / "img00.png", "--checkpoint", ckpt, "--backend", backend, "--precision",
                            "32", "--cache-dir", tmp_path / "cache", "--out", out) == 0
            prob[name, backend] = read_records(out / "predictions.jsonl")[0]["crack_probability"]
    for name in ("a", "b"):
        assert prob[name, "onnx"] == pytest.approx(prob[name, "torch"], abs=1e-3)
    assert abs(prob["a", "torch"] - prob["b", "torch"]) > 1e-3  # two different models


# 2. demo never deletes


def test_demo_moves_an_earlier_run_aside_and_keeps_the_users_files(tmp_path, monkeypatch, capsys):
    import crackloc.evaluation.evaluate as evaluate
    import crackloc.inference.predictor as predictor
    import crackloc.training.pipeline as training

    monkeypatch.setattr(training, "train_run", lambda cfg, run, **kw: Path(run).mkdir(parents=True))
    monkeypatch.setattr(evaluate, "evaluate_run", lambda run, **kw: {"at_0.5": {"auroc": 0.5, "accuracy": 0.5}})
    monkeypatch.setattr(predictor, "Predictor", lambda *a, **kw: None)
    monkeypatch.setattr(batch, "predict_files", lambda *a, **kw: None)
    monkeypatch.setattr(predictor, "BUNDLED_MODEL", tmp_path / "no-bundled-model.pt")
    demo = tmp_path / "D"
    (demo / "run").mkdir(parents=True)
    (demo / "run" / "config.yaml").write_text("x: 1\n")
    (demo / "run" / "my notes.txt").write_text("mine")
    assert main(["demo", "--out", str(demo)]) == 0
    assert main(["demo", "--out", str(demo)]) == 0  # a second time, within the same second
    old = sorted(p for p in demo.iterdir() if p.name.startswith("run.old-"))
    assert len(old) == 2 and (demo / "run").is_dir()
    assert re.fullmatch(r"run\.old-\d{8}-\d{6}", old[0].name)
    assert (old[0] / "my notes.txt").read_text() == "mine"
    moved = [ln for ln in capsys.readouterr().out.splitlines() if "aside" in ln]
    assert len(moved) == 2 and all(str(demo / "run") in ln for ln in moved)
    assert {ln.rsplit(" ", 1)[1] for ln in moved} == {str(p) for p in old}


# 3. outputs are not read back as inputs


def test_out_inside_an_input_folder_is_not_read_back(photos, model_file, tmp_path, monkeypatch):
    src = tmp_path / "shots"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (src / name).write_bytes((photos / "img00.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert _predict("shots", "--out", "shots/maps", "--checkpoint", model_file) == 0
    _assert_complete(src / "maps", {"shots/a.png", "shots/b.png", "shots/c.png"})


def test_output_names_do_not_depend_on_the_argument_order(photos, model_file, tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img.png").write_bytes((photos / "img00.png").read_bytes())
    names = []
    for order in (("x", "y"), ("y", "x")):
        out = tmp_path / f"out-{''.join(order)}"
        assert _predict(*(tmp_path / f for f in order), "--out", out, "--checkpoint", model_file) == 0
        names.append({r["path"]: r["heatmap_png"] for r in read_records(out / "predictions.jsonl")})
    assert names[0] == names[1]
    assert names[0][str(tmp_path / "x" / "img.png")] == "img_heatmap.png"


# 4. interrupted and disk-full runs keep every finished image, and --resume finishes them

def test_sigint_keeps_finished_images_and_resume_finishes(photos, model_file, tmp_path):
    """`crackloc predict` in a subprocess held at its 4th image (3 are done), then Ctrl-C."""
    out, marker = tmp_path / "out", tmp_path / "held"
    argv = ["predict", str(photos), "--out", str(out), "--checkpoint", str(model_file), "--tile", "64"]
    proc = start_held(argv, at="crackloc.inference.predictor:Predictor.predict", call=4, marker=marker,
                      env={"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_held(proc, marker)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    said = [m for m in map(INTERRUPTED.match, err.splitlines()) if m]
    assert len(said) == 1 and "Traceback" not in err, err
    records = _assert_complete(out)
    assert len(records) == int(said[0][1]) == 3
    assert main([*argv, "--resume"]) == 0
    _assert_complete(out, _all_photos(photos))


def _disk_full_on_call(n: int, monkeypatch) -> list[Path]:
    """Make the n-th PNG write run out of space halfway through its bytes: → the paths tried."""
    calls: list[Path] = []

    def failing_write(f) -> None:
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    def save(path: Path, array: np.ndarray) -> Path:
        calls.append(path)
        if len(calls) == n:
            return atomic_write(path, failing_write)  # the real temp-file path, failing mid-write
        return save_png(path, array)

    monkeypatch.setattr(outputs, "save_png", save)
    return calls


def test_disk_full_stops_keeps_finished_images_and_resume_finishes(photos, model_file, tmp_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "out"
    calls = _disk_full_on_call(14, monkeypatch)  # 5th image, its 2nd PNG: the 1st must go too
    rc = _predict(photos, "--out", out, "--checkpoint", model_file)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "predicting" not in ln]
    assert rc == 2 and len(err) == 1, err
    assert "no space left on device" in err[0] and "img04.png" in err[0] and "--resume" in err[0]
    assert "stopped after 4 of 30 images" in err[0]
    assert calls[-1].name == "img04_overlay.png"
    records = _assert_complete(out)  # also: no temp file, no half PNG, no PNG of the failed image
    assert [Path(r["path"]).name for r in records] == [f"img{i:02d}.png" for i in range(4)]
    monkeypatch.setattr(outputs, "save_png", save_png)
    assert _predict(photos, "--out", out, "--checkpoint", model_file, "--resume") == 0
    _assert_complete(out, _all_photos(photos))


def test_resume_redoes_only_images_without_a_complete_set(photos, model_file, tmp_path, monkeypatch, capsys):
    from crackloc.inference.predictor import Predictor

    out = tmp_path / "out"
    some = [photos / f"img{i:02d}.png" for i in range(4)]
    assert _predict(*some, "--out", out, "--checkpoint", model_file) == 0
    (out / "img01_color.png").unlink()
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"path": "torn')  # a crash mid-line
    seen: list[int] = []
    real = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, image, **kw: seen.append(1) or real(self, image, **kw))
    assert _predict(*some, "--out", out, "--checkpoint", model_file, "--resume") == 0
    assert len(seen) == 1 and "resuming: 3 of 4 image(s) already done" in capsys.readouterr().err
    _assert_complete(out, {str(p) for p in some})


def test_a_fresh_run_moves_earlier_results_aside_or_replaces_them_with_overwrite(photos, model_file, tmp_path,
                                                                                capsys):
    out = tmp_path / "out"
    assert _predict(photos / "img00.png", photos / "img01.png", "--out", out, "--checkpoint", model_file) == 0
    capsys.readouterr()
    assert _predict(photos / "img02.png", "--out", out, "--checkpoint", model_file) == 0
    assert "moved the 2 earlier result(s)" in capsys.readouterr().err
    assert [r["path"] for r in read_records(out / "predictions.jsonl")] == [str(photos / "img02.png")]
    (aside,) = out.glob("earlier-*")
    assert [r["path"] for r in read_records(aside / "predictions.jsonl")] == [str(photos / f"img0{i}.png")
                                                                               for i in (0, 1)]
    assert {p.name for p in aside.glob("*.png")} == {f"img0{i}_{k}.png" for i in (0, 1)
                                                      for k in ("heatmap", "overlay", "color")}
    assert not list(out.glob("img00_*.png"))  # moved, not copied
    assert _predict(photos / "img03.png", "--out", out, "--checkpoint", model_file, "--overwrite") == 0
    assert "replacing the 1 earlier result(s)" in capsys.readouterr().err
    assert len(list(out.glob("earlier-*"))) == 1
    assert [r["path"] for r in read_records(out / "predictions.jsonl")] == [str(photos / "img03.png")]


def test_record_writer_appends_durable_lines_and_reader_skips_a_torn_one(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.append({"a": 1})
        w.append({"a": 2})
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        with pytest.raises(OSError):
            w.append({"a": 3})
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'  # the failed line was cut off again
    with path.open("a") as f:
        f.write('{"a": 4')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert read_records(tmp_path / "missing.jsonl") == []



def test_ctrl_c_during_the_record_append_lands_after_the_record_is_whole(tmp_path, monkeypatch):
    class InterruptedWriter(RecordWriter):
        def append(self, record: dict) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the line is being written
            super().append(record)

    pngs = {"a_heatmap.png": _image(0)[..., 0], "a_overlay.png": _image(0), "a_color.png": _image(1)}
    rec = {"path": "a.png", "width": 40, "height": 40, **{f"{k.split('_')[1][:-4]}_png": k for k in pngs}}
    done: list[dict] = []
    monkeypatch.setattr(outputs, "RecordWriter", InterruptedWriter)
    folder = outputs.OutputFolder(tmp_path, outputs.Outputs(), on_record=done.append)
    with folder.writing(), pytest.raises(KeyboardInterrupt):
        outputs.write_pngs(tmp_path, pngs)
        folder.commit_written(rec)
    assert _assert_complete(tmp_path, {"a.png"}) == done == [rec]  # on disk and counted

# 6. out of memory: a readable size and what to do


def test_out_of_memory_names_the_size_and_the_options(photos, model_file, tmp_path, monkeypatch, capsys):
    from crackloc.inference.predictor import Predictor

    def oom(self, image, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 123456789012 bytes.")

    monkeypatch.setattr(Predictor, "predict", oom)
    assert _predict(photos / "img00.png", "--out", tmp_path / "out", "--checkpoint", model_file) == 1
    line = next(ln for ln in capsys.readouterr().err.splitlines() if "failed: " in ln)
    assert "out of memory" in line and "123.5 GB" in line
    assert all(opt in line for opt in ("--batch-size", "--scale", "--max-pixels"))


# 5. export refuses to overwrite without --force


def test_export_refuses_an_existing_file_unless_forced(model_file, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    argv = ["export", "--checkpoint", str(model_file), "--out", str(out), "--image-size", "64"]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert out.read_bytes() == b"keep me"
    assert main([*argv, "--force"]) == 0
    assert out.stat().st_size > 1000


# 7. exit codes (130 is checked by the SIGINT test)


def test_exit_codes_0_when_all_done_1_with_skipped_inputs(photos, model_file, tmp_path):
    assert _predict(photos / "img00.png", "--out", tmp_path / "ok", "--checkpoint", model_file) == 0
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert _predict(photos / "img00.png", bad, "--out", tmp_path / "some", "--checkpoint", model_file) == 1
    assert [json.loads(ln)["path"] for ln in (tmp_path / "some" / "failed.jsonl").open()] == [str(bad)]
