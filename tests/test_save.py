"""`predict --save all|mask|record`: only what the user asks for is written, and resume honours it.

The Ray engine's `--save` is tested in tests/test_ray_engine.py (it shares that module's Ray).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crackloc.cli import main
from crackloc.inference.outputs import read_records
from crackloc.io import save_png

PNG_KEYS = ("heatmap_png", "overlay_png", "color_png")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from crackloc.data.synthetic import make_crack_image

    root = tmp_path_factory.mktemp("save") / "photos"
    for i in range(3):
        img, _ = make_crack_image(80, 96, crack=i != 1, seed=i)
        save_png(root / f"p{i}.png", (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return root


def _predict(photos: Path, out: Path, model_file: Path, *extra: str) -> list[dict]:
    assert main(["predict", str(photos), "--out", str(out), "--checkpoint", str(model_file), "--tile", "64",
                 "--geometry", *extra]) == 0
    return sorted(read_records(out / "predictions.jsonl"), key=lambda r: r["path"])


def test_each_choice_writes_only_its_files_and_the_same_decisions(photos, model_file, tmp_path):
    runs = {save: _predict(photos, tmp_path / save, model_file, "--save", save) for save in ("all", "mask", "record")}
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == sorted(
        f"p{i}_{k}.png" for i in range(3) for k in ("heatmap", "overlay", "color"))
    assert sorted(p.name for p in (tmp_path / "mask").glob("*.png")) == [f"p{i}_heatmap.png" for i in range(3)]
    assert list((tmp_path / "record").glob("*.png")) == []
    assert all(set(PNG_KEYS) <= r.keys() for r in runs["all"])
    assert all(r.keys() & set(PNG_KEYS) == {"heatmap_png"} for r in runs["mask"])
    assert all(not r.keys() & set(PNG_KEYS) for r in runs["record"])
    for a, m, r in zip(runs["all"], runs["mask"], runs["record"], strict=True):
        assert a["crack_probability"] == m["crack_probability"] == r["crack_probability"]
        assert a["geometry"] == m["geometry"] == r["geometry"]  # the mask (map >= 0.5) is the model's own
        assert a["heatmap"]["area_fraction_above"] == r["heatmap"]["area_fraction_above"]
        assert a["line_guide"] == m["line_guide"] == 0.9 and r["line_guide"] == 0.0  # record skips the guide
    assert (tmp_path / "all" / "p0_heatmap.png").read_bytes() == (tmp_path / "mask" / "p0_heatmap.png").read_bytes()


def test_resume_keeps_records_that_have_what_is_asked_and_redoes_the_others(photos, model_file, tmp_path):
    out = tmp_path / "o"
    _predict(photos, out, model_file, "--save", "record")
    again = _predict(photos, out, model_file, "--save", "record", "--resume")
    assert len(again) == 3 and list(out.glob("*.png")) == []
    full = _predict(photos, out, model_file, "--save", "all", "--resume")  # records lack PNGs: redone
    assert all(set(PNG_KEYS) <= r.keys() for r in full) and len(list(out.glob("*.png"))) == 9
    kept = _predict(photos, out, model_file, "--save", "mask", "--resume")  # all PNGs there: kept
    assert kept == full


def test_resume_never_keeps_a_record_whose_pngs_are_gone(photos, model_file, tmp_path):
    out = tmp_path / "o"
    first = _predict(photos, out, model_file)
    (out / first[0]["overlay_png"]).unlink()  # a PNG this record names, though --save record asks for none
    again = _predict(photos, out, model_file, "--save", "record", "--resume")
    assert [r["path"] for r in again] == [r["path"] for r in first]
    assert "overlay_png" not in again[0] and all("overlay_png" in r for r in again[1:])  # redone / kept


def test_an_unknown_choice_is_refused_in_one_line(photos, model_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(photos), "--out", str(tmp_path / "x"), "--save", "pngs"])
    assert exc.value.code == 2 and "--save" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
