"""Crack change between two masks of one surface (`crackloc.change.cracks`), hand-drawn bars with known edits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crackloc.change.compare import COLOURS, changes_csv, draw_changes
from crackloc.change.cracks import GROWN_MIN_PX, compare_masks

H, W = 300, 400


def bars(*spec: tuple[int, int, int, int]) -> np.ndarray:
    """bool [H,W] with horizontal bars (row, x0, x1, width)."""
    mask = np.zeros((H, W), bool)
    for row, x0, x1, width in spec:
        mask[row - width // 2: row - width // 2 + width, x0:x1] = True
    return mask


BEFORE = bars((60, 40, 240, 3), (200, 100, 300, 5))


def statuses(report) -> dict[int, str]:
    return {c.id: c.status for c in report.changes}


def test_the_same_cracks_a_pixel_off_are_unchanged():
    after = np.roll(BEFORE, (1, -1), axis=(0, 1))  # a registration residual of about a pixel
    report = compare_masks(BEFORE, after)
    assert statuses(report) == {1: "unchanged", 2: "unchanged"}
    assert report.to_dict()["length_added_px"] == 0


@pytest.mark.parametrize("added", [40, 120])
def test_an_extended_crack_has_grown_by_the_added_length(added):
    report = compare_masks(BEFORE, bars((60, 40, 240 + added, 3), (200, 100, 300, 5)))
    assert statuses(report) == {1: "grown", 2: "unchanged"}
    grown = report.changes[0]
    assert abs(grown.length_added_px - added) <= max(0.05 * added, 10)
    assert grown.added[:, 1].min() >= 240 - 4 and grown.added[:, 1].max() <= 240 + added  # where it grew


def test_a_widened_crack_has_grown_by_its_width_change():
    report = compare_masks(BEFORE, bars((60, 40, 240, 3), (200, 100, 300, 7)))
    assert statuses(report) == {1: "unchanged", 2: "grown"}
    assert abs(report.changes[1].width_change_px - 2) <= 0.5 and report.changes[1].length_added_px == 0


def test_new_cracks_get_the_next_ids_and_vanished_ones_are_told_apart_by_what_after_shows():
    after = bars((60, 40, 240, 3), (130, 20, 120, 3))  # crack 2 is gone, one new crack
    seen = np.ones((H, W), bool)
    assert statuses(compare_masks(BEFORE, after, seen=seen)) == {1: "unchanged", 2: "no longer visible", 3: "new"}
    seen[150:] = False  # AFTER does not show the bottom half
    assert statuses(compare_masks(BEFORE, after, seen=seen))[2] == "not in after"


def test_two_cracks_joined_are_one_grown_crack_with_the_lower_id():
    before = bars((60, 40, 150, 3), (60, 190, 300, 3))
    report = compare_masks(before, bars((60, 40, 300, 3)))
    assert statuses(report) == {1: "grown"}
    assert abs(report.changes[0].length_added_px - 40) <= 10  # the 40 px gap


def test_a_small_length_difference_is_not_growth():
    report = compare_masks(BEFORE, bars((60, 40, 240 + int(GROWN_MIN_PX) - 4, 3), (200, 100, 300, 5)))
    assert statuses(report) == {1: "unchanged", 2: "unchanged"}


def test_csv_json_and_overlay_say_the_same(tmp_path):
    after = bars((60, 40, 300, 3), (200, 100, 300, 5), (130, 20, 120, 3))
    report = compare_masks(BEFORE, after, mm_per_px=0.5)
    rows = changes_csv(report).splitlines()
    assert rows[0].split(",")[:3] == ["id", "status", "length_before_px"] and "length_added_mm" in rows[0]
    assert [r.split(",")[1] for r in rows[1:]] == ["grown", "unchanged", "new"]
    d = report.to_dict()
    assert d["counts"]["grown"] == d["counts"]["new"] == d["counts"]["unchanged"] == 1
    assert d["cracks"][0]["length_added_mm"] == pytest.approx(d["cracks"][0]["length_added_px"] * 0.5, abs=0.01)
    image = np.full((H, W, 3), 200, np.uint8)
    drawn = draw_changes(image, report)
    assert tuple(drawn[60, 280]) == COLOURS["grown"]  # the added part of crack 1
    assert tuple(drawn[130, 60]) == COLOURS["new"] and tuple(drawn[200, 200]) == COLOURS["unchanged"]


# ---- the command ------------------------------------------------------------------------------


def _photos(tmp_path, before: np.ndarray, after: np.ndarray) -> tuple[str, str]:
    from PIL import Image

    paths = []
    for name, image in (("before.png", before), ("after.jpg", after)):
        Image.fromarray(image).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths[0], paths[1]


def test_compare_writes_the_change_of_a_pair_and_refuses_another_surface(tmp_path, capsys):
    import json

    from crackloc.cli import main
    from crackloc.data.campaigns import make_pair

    pair = make_pair(np.random.default_rng(3), shape=(360, 480), change="new")
    before, after = _photos(tmp_path, pair.before, pair.after)
    out = tmp_path / "out"
    assert main(["compare", before, after, "--out", str(out), "--mm-per-px", "0.2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["after_registered.png", "change_overlay.png", "changes.csv",
                                                      "changes.json"]
    report = json.loads((out / "changes.json").read_text())
    assert report["registration"]["rms_px"] < 2 and report["mm_per_px"] == 0.2
    assert sum(report["counts"].values()) == len(report["cracks"]) == len((out / "changes.csv").read_text().splitlines()) - 1
    assert all(c["length_after_mm"] == pytest.approx(c["length_after_px"] * 0.2, abs=0.01) for c in report["cracks"])
    other = make_pair(np.random.default_rng(4), shape=(360, 480), change="unchanged")
    before, after = _photos(tmp_path, pair.before, other.after)
    assert main(["compare", before, after, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "before.png / after.jpg" in err[0] and not (tmp_path / "refused").exists()


def test_campaign_folders_pair_by_stem_list_the_rest_and_resume(tmp_path, capsys):
    import csv
    import json

    from PIL import Image

    from crackloc.cli import main
    from crackloc.data.campaigns import make_pair

    before, after, out = tmp_path / "2024", tmp_path / "2026", tmp_path / "out"
    (before / "pier").mkdir(parents=True)
    (after / "pier").mkdir(parents=True)
    a, b, c = (make_pair(np.random.default_rng(s), shape=(360, 480), change=k) for s, k in
               ((3, "new"), (5, "unchanged"), (6, "unchanged")))
    other = make_pair(np.random.default_rng(7), shape=(360, 480), change="unchanged")
    for folder, images in ((before, (a.before, b.before, c.before)), (after, (a.after, b.after, other.after))):
        for name, image in zip(("pier/wall_a.png", "wall_b.png", "wall_c.png"), images, strict=True):
            Image.fromarray(image).save(folder / name)
    Image.fromarray(a.before).save(before / "only_before.png")
    argv = ["compare", "--before", str(before), "--after", str(after), "--out", str(out)]
    assert main(argv) == 1  # one unpaired photo and one pair of two surfaces are listed, not fatal
    records = [json.loads(line) for line in (out / "changes.jsonl").read_text().splitlines()]
    assert sorted(r["stem"] for r in records) == ["wall_a", "wall_b"]
    assert all((out / r["change_overlay_png"]).is_file() and (out / r["after_registered_png"]).is_file()
               for r in records)
    failed = {Path(json.loads(line)["path"]).name for line in (out / "failed.jsonl").read_text().splitlines()}
    assert failed == {"only_before.png", "wall_c.png"}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    changed = [int(r["new"]) + int(r["grown"]) for r in summary]
    assert len(summary) == 2 and changed == sorted(changed, reverse=True)
    cracks = list(csv.DictReader((out / "changes.csv").open()))
    assert len(cracks) == sum(len(r["cracks"]) for r in records) and {r["pair"] for r in cracks} <= {"wall_a", "wall_b"}
    stamp = (out / records[0]["change_overlay_png"]).stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 1
    assert "resuming: 2 of 3" in capsys.readouterr().err  # the refused pair is tried again
    assert (out / records[0]["change_overlay_png"]).stat().st_mtime_ns == stamp  # kept, not redone
    assert main(["compare", "a.jpg", "--before", str(before), "--out", str(out)]) == 2  # two forms at once


def test_the_viewer_compare_tab_shows_the_change_table_and_the_swipe(tmp_path):
    import torch

    from crackloc.change.compare import CSV_COLUMNS
    from crackloc.config import InferenceConfig
    from crackloc.data.campaigns import make_pair
    from crackloc.inference.predictor import Predictor
    from crackloc.viewer.compare_tab import CompareTab
    from crackloc.viewer.mapper import PhotoMapper

    class DarkIsCrack(torch.nn.Module):  # the model contract: heatmap = darkness, logit = the darkest pixel
        def forward(self, x):  # [B,3,t,t] in [0,1]
            heat = (1.0 - x.mean(1, keepdim=True) * 1.6).clamp(0, 1)  # [B,1,t,t]
            return (heat.amax(dim=(1, 2, 3)) - 0.5) * 10, heat

    cfg = InferenceConfig(tile=128, overlap=0.25, precision="32", gate=False, batch_size=8, line_guide=0.0)
    mapper = PhotoMapper(cfg=cfg, make_predictor=lambda c: Predictor.from_model(DarkIsCrack(), c, threshold=0.5),
                         model_id="dark-is-crack")
    pair = make_pair(np.random.default_rng(3), shape=(360, 480), change="new")
    before, after = _photos(tmp_path, pair.before, pair.after)
    tab = CompareTab(mapper, tmp_path / "tmp")
    swipe, overlay, table, status, files = tab.compare(before, after, 0.2, "")
    assert status.startswith("Registered with") and swipe[0].shape == swipe[1].shape == overlay.shape == (360, 480, 3)
    assert list(table.columns[:len(CSV_COLUMNS)]) == list(CSV_COLUMNS) and "length_added_mm" in table.columns
    record = json.loads(Path(files[0]).read_text())
    assert len(table) == len(record["cracks"]) > 0
    other = make_pair(np.random.default_rng(4), shape=(360, 480), change="unchanged")
    (tmp_path / "o").mkdir()
    _, after_other = _photos(tmp_path / "o", other.before, other.after)
    swipe, overlay, table, status, files = tab.compare(before, after_other, None, "")
    assert status.startswith("**Not one surface:**") and swipe is None and files is None and len(table) == 0
    assert tab.compare(before, None, None, "")[3].startswith("Upload")
