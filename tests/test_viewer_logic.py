"""The viewer's logic (crackloc.viewer.logic, .mapper, .folders; no gradio): threshold → mask → table, units, exports, folders.

Maps come from a tiny fake model (a fixed function of the pixels), so nothing here trains or
loads a real model, and every test runs in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackloc.config import InferenceConfig
from crackloc.errors import CracklocError
from crackloc.inference.batch import predict_files
from crackloc.inference.outputs import read_records
from crackloc.inference.predictor import Predictor
from crackloc.viewer import logic
from crackloc.viewer import mapper as mapper_module
from crackloc.viewer.folders import FolderJob, existing_results, folder_photos, resolve_inside
from crackloc.viewer.logic import (
    CSV_COLUMNS,
    crack_csv,
    export_files,
    measure,
    parse_mm_per_px,
    read_crack_csv,
    render_view,
    table_rows,
    to_mm,
    with_scale,
)
from crackloc.viewer.mapper import PhotoMapper, estimate_tiles

TILE = 64


class DarkIsCrack(torch.nn.Module):
    """Follows the model contract: heatmap = darkness of the pixel, logit = its tile's darkest value."""

    def forward(self, x: torch.Tensor):  # x [B,3,t,t] in [0,1]
        heat = (1.0 - x.mean(1, keepdim=True)).clamp(0, 1)  # [B,1,t,t]
        return (heat.amax(dim=(1, 2, 3)) - 0.5) * 10, heat


def fake_mapper(**kwargs) -> PhotoMapper:
    cfg = InferenceConfig(tile=TILE, overlap=0.25, precision="32", gate=False, batch_size=8)
    return PhotoMapper(cfg=cfg, make_predictor=lambda c: Predictor.from_model(DarkIsCrack(), c, threshold=0.5),
                       model_id="dark-is-crack", **kwargs)


def two_crack_heatmap() -> torch.Tensor:
    """[200,300]: a horizontal crack 200 × 5 px at 0.9 and a vertical one 100 × 9 px at 0.7."""
    heat = torch.zeros(200, 300)
    heat[40:45, 50:250] = 0.9  # length 200, width 5
    heat[80:180, 120:129] = 0.7  # length 100, width 9
    return heat


def photo_file(path: Path, *, size=(160, 120), mode="RGB") -> Path:
    """A light photo with one dark diagonal crack."""
    img = Image.new("RGB", size, (200, 200, 200))
    for i in range(min(size) - 20):
        for d in range(3):
            img.putpixel((10 + i + d, 10 + i), (30, 30, 30))
    img.convert(mode).save(path)
    return path


# ---- threshold → mask → table ----------------------------------------------------------------


def test_two_drawn_cracks_give_two_rows_with_their_length_and_width():
    report = measure(two_crack_heatmap(), 0.5)
    rows = table_rows(report)
    assert len(rows) == 2 and report.count == 2
    by_length = sorted(rows, key=lambda r: -r[1])
    (_, long_len, long_mean, long_max, *_mm, long_angle), (_, short_len, short_mean, short_max, *_, short_angle) = by_length
    assert long_len == pytest.approx(200, abs=1.5) and long_mean == pytest.approx(5, abs=0.5)
    assert long_max == pytest.approx(5, abs=0.5) and abs(long_angle) < 1
    assert short_len == pytest.approx(100, abs=1.5) and short_mean == pytest.approx(9, abs=0.5)
    assert abs(short_angle) == pytest.approx(90, abs=1)
    assert all(r[4] is None and r[5] is None and r[6] is None for r in rows)  # no scale: no mm


def test_rethresholding_changes_the_cracks_without_the_model():
    heat = two_crack_heatmap()
    assert measure(heat, 0.5).count == 2
    assert measure(heat, 0.8).count == 1  # the 0.7 crack drops out
    assert measure(heat, 0.95).count == 0
    with pytest.raises(CracklocError, match="threshold"):
        measure(heat, 0.0)


def test_mask_rule_is_predicts():
    heat = torch.rand(50, 60)
    assert np.array_equal(logic.crack_mask(heat, 0.5), (heat >= 0.5).numpy())
    assert set(np.unique(logic.mask_png(heat, 0.5))) <= {0, 255}


# ---- units -----------------------------------------------------------------------------------


def test_mm_is_px_times_mm_per_px():
    assert to_mm(12.5, 0.2) == pytest.approx(2.5) and to_mm(3.0, None) is None
    px = measure(two_crack_heatmap(), 0.5)
    mm = with_scale(px, 0.2)
    direct = measure(two_crack_heatmap(), 0.5, mm_per_px=0.2)
    assert mm.to_dict() == direct.to_dict()
    for row_px, row_mm in zip(table_rows(px), table_rows(mm), strict=True):
        assert row_mm[:4] == row_px[:4]
        assert row_mm[4] == pytest.approx(row_px[1] * 0.2, abs=1e-3)
        assert row_mm[5] == pytest.approx(row_px[2] * 0.2, abs=1e-3)
        assert row_mm[6] == pytest.approx(row_px[3] * 0.2, abs=1e-3)


@pytest.mark.parametrize("value,expected", [(None, None), ("", None), (0, None), ("0.25", 0.25), (1.5, 1.5)])
def test_scale_box(value, expected):
    assert parse_mm_per_px(value) == expected


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "abc", 1e9])
def test_bad_scale_is_one_readable_error(value):
    with pytest.raises(CracklocError, match="scale"):
        parse_mm_per_px(value)


# ---- CSV and predict's record ----------------------------------------------------------------


def test_csv_rows_equal_the_geometry():
    report = measure(two_crack_heatmap(), 0.5, mm_per_px=0.2)
    text = crack_csv(report)
    assert text.splitlines()[0].split(",") == CSV_COLUMNS
    assert read_crack_csv(text) == report.to_dict()["cracks"]
    no_scale = measure(two_crack_heatmap(), 0.5)
    assert read_crack_csv(crack_csv(no_scale)) == no_scale.to_dict()["cracks"]


def test_the_folder_job_writes_the_very_files_predict_writes(tmp_path):
    """One output writer: the viewer's folder job and `predict` give equal records and byte-identical PNGs."""
    root = tmp_path / "photos"
    root.mkdir()
    photo_file(root / "wall.png")
    photo_file(root / "slab.jpg", size=(140, 130))
    mapper = fake_mapper()
    job = FolderJob(mapper, root, tmp_path / "viewer", root=root, mm_per_px=0.3).start()
    assert job.wait(timeout=60) and job.error is None
    photos = sorted(p.resolve() for p in root.iterdir())
    predict_files(mapper.predictor(mapper.base_cfg), photos, tmp_path / "predict", geometry=True, mm_per_px=0.3,
                  progress=False)
    ours, theirs = (read_records(tmp_path / d / "predictions.jsonl") for d in ("viewer", "predict"))
    assert sorted(ours, key=lambda r: r["path"]) == sorted(theirs, key=lambda r: r["path"])
    assert len(ours) == 2 and all(list(r) == list(theirs[0]) for r in ours)  # same keys in the same order
    for rec in theirs:
        for key in ("heatmap_png", "overlay_png", "color_png"):
            assert (tmp_path / "viewer" / rec[key]).read_bytes() == (tmp_path / "predict" / rec[key]).read_bytes()


def test_export_files_hold_predicts_line_the_mask_and_the_csv(tmp_path):
    photo = fake_mapper().map_photo(photo_file(tmp_path / "wall.jpg"))
    report = with_scale(measure(photo.heatmap, 0.4), 0.5)
    paths = export_files(photo, report, tmp_path / "export", threshold=0.4)
    names = [p.name for p in paths]
    assert names == ["wall_overlay.png", "wall_mask.png", "wall_cracks.csv", "predictions.jsonl",
                     "wall_heatmap.png", "wall_color.png"]
    lines = (tmp_path / "export" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert list(rec) == ["path", "sha256", "crack_probability", "crack", "decision_threshold", "width", "height", "n_tiles",
                         "scale", "heatmap", "precision", "line_guide", "model", "settings", "geometry", "heatmap_png",
                         "overlay_png", "color_png"]
    assert rec["heatmap"]["map_threshold"] == 0.4 and rec["path"] == "wall.jpg"
    assert rec["geometry"]["count"] == report.count >= 1
    assert read_crack_csv((tmp_path / "export" / "wall_cracks.csv").read_text()) == rec["geometry"]["cracks"]
    mask = np.asarray(Image.open(tmp_path / "export" / "wall_mask.png"))
    assert np.array_equal(mask > 0, (photo.heatmap >= 0.4).numpy())
    for key in ("heatmap_png", "overlay_png", "color_png"):
        assert (tmp_path / "export" / rec[key]).is_file()


# ---- the mapper: cache, bad input ------------------------------------------------------------


def test_progress_counts_the_windows_of_every_view_and_scale(monkeypatch):
    """The expected time counts what `Predictor.predict` runs: each view, each scale of the spread."""
    from crackloc.inference import predictor as predictor_module
    from crackloc.inference import tiling

    windows: list[int] = []
    real = predictor_module.predict_tiled
    monkeypatch.setattr(predictor_module, "predict_tiled",
                        lambda *a, **k: windows.append(len(real(*a, **k).tile_probs)) or real(*a, **k))
    cfg = InferenceConfig(tile=TILE, overlap=0.25, precision="32", gate=False, views=4, scale=1.2, scale_spread=1.5)
    Predictor.from_model(DarkIsCrack(), cfg).predict(torch.randint(0, 256, (3, 150, 230), dtype=torch.uint8))
    assert estimate_tiles(150, 230, cfg) == sum(windows) > 4 * len(tiling.tile_grid(180, 276, tile=TILE, overlap=0.25))


def test_second_request_comes_from_the_cache_keyed_by_content_and_settings(tmp_path):
    mapper = fake_mapper()
    a = photo_file(tmp_path / "a.png")
    first = mapper.map_photo(a)
    copy = tmp_path / "same_content.png"
    copy.write_bytes(a.read_bytes())
    again = mapper.map_photo(copy)
    assert again.cached and not first.cached and again.key == first.key and again.name == "same_content.png"
    assert again.heatmap is first.heatmap
    other = mapper.map_photo(a, mapper.settings(scale=0.5))
    assert not other.cached and other.key != first.key
    assert mapper.report(first, 0.5) is mapper.report(again, 0.5)  # measured once per photo and threshold


def test_view_renders_the_preview_with_a_highlight(tmp_path):
    photo = fake_mapper().map_photo(photo_file(tmp_path / "a.png"))
    report = measure(photo.heatmap, 0.5)
    plain = render_view(photo, report, threshold=0.5)
    chosen = render_view(photo, report, threshold=0.5, selected=report.cracks[0].index)
    assert plain.overlay.shape == (photo.height, photo.width, 3) and plain.overlay.dtype == np.uint8
    magenta = np.all(chosen.overlay == logic.HIGHLIGHT_COLOR, axis=-1)
    assert magenta.sum() > 20 and not np.all(plain.overlay == logic.HIGHLIGHT_COLOR, axis=-1).any()
    assert f"{report.count} crack" in plain.summary and "Crack probability" in plain.summary


def test_big_photo_preview_is_shrunk():
    image = torch.zeros(3, 1000, 2000, dtype=torch.uint8)
    preview = logic.make_preview(image, torch.zeros(1000, 2000))
    assert preview.rgb.shape == (800, 1600, 3) and preview.scale == pytest.approx(0.8)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height (the pixels are never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def test_bad_uploads_give_one_line_naming_the_photo(tmp_path):
    mapper = fake_mapper(max_pixels=50_000_000)
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(CracklocError, match=r"^upload\.jpg: not a readable image"):
        mapper.map_photo(tmp_path / "junk.jpg", name="upload.jpg")
    good = photo_file(tmp_path / "good.jpg")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    with pytest.raises(CracklocError, match=r"^cut\.jpg: corrupt or truncated"):
        mapper.map_photo(tmp_path / "cut.jpg")
    with pytest.raises(CracklocError, match=r"huge\.png: image is 20000x20000 = 400 MP, above the limit of 50 MP"):
        mapper.map_photo(_png_header_only(tmp_path / "huge.png", 20000, 20000))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CracklocError, match="empty file"):
        mapper.map_photo(tmp_path / "empty.png")


def test_grayscale_photo_is_mapped_and_flagged(tmp_path):
    photo = fake_mapper().map_photo(photo_file(tmp_path / "grey.png", mode="L"))
    assert photo.grayscale and photo.heatmap.shape == (120, 160)
    assert not fake_mapper().map_photo(photo_file(tmp_path / "rgb.png")).grayscale


# ---- folders ---------------------------------------------------------------------------------


def test_paths_outside_the_served_folder_are_refused(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_inside("sub", root) == (root / "sub").resolve()
    assert resolve_inside(str(root / "sub"), root) == (root / "sub").resolve()
    assert resolve_inside("", root) == root.resolve()
    for bad in ["..", "../secret", "sub/../../secret", str(tmp_path / "secret"), "/etc", "escape"]:
        with pytest.raises(CracklocError, match="outside the served folder"):
            resolve_inside(bad, root)


def test_folder_listing_skips_links_out_of_the_folder_and_the_output_folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    photo_file(root / "a.jpg")
    photo_file(tmp_path / "outside.jpg")
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "maps").mkdir()
    photo_file(root / "maps" / "x_overlay.png")
    (root / "notes.txt").write_text("x")
    assert folder_photos(root, root=root, exclude=root / "maps") == [(root / "a.jpg").resolve()]


def test_predicts_outputs_are_found_for_relative_and_absolute_paths(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    a, b, c = (photo_file(root / n) for n in ("a.jpg", "b.jpg", "c.jpg"))
    maps = tmp_path / "maps"
    maps.mkdir()
    for stem in ("a", "b", "c"):
        for kind in ("heatmap", "overlay", "color"):
            (maps / f"{stem}_{kind}.png").write_bytes(b"png")

    digest = hashlib.sha256(a.read_bytes()).hexdigest()  # a, b and c hold the same photo

    def rec(path, stem, **extra):
        return {"path": path, "sha256": digest, "crack_probability": 0.9, "crack": True,
                "heatmap_png": f"{stem}_heatmap.png",
                "overlay_png": f"{stem}_overlay.png", "color_png": f"{stem}_color.png", **extra}

    lines = [rec("elsewhere/photos/a.jpg", "a"),  # `crackloc predict photos/ --out maps/` run from elsewhere
             rec(str(b), "b"),  # absolute
             rec("c.jpg", "c", overlay_png="../escape.png"),  # a PNG outside the output folder: ignored
             rec("nowhere/zzz.jpg", "a")]
    (maps / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"torn')
    found = existing_results(maps, folder_photos(root, root=root), root)
    assert sorted(p.name for p in found) == ["a.jpg", "b.jpg"]
    assert found[a.resolve()]["path"] == "elsewhere/photos/a.jpg" and c.resolve() not in found


def test_folder_job_reuses_records_maps_the_rest_and_appends(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    done = photo_file(root / "done.jpg")
    photo_file(root / "new.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    out = root / "crackloc_maps"
    out.mkdir()
    for kind in ("heatmap", "overlay", "color"):
        Image.new("RGB", (8, 8)).save(out / f"done_{kind}.png")
    earlier = {"path": str(done), "sha256": hashlib.sha256(done.read_bytes()).hexdigest(),
               "crack_probability": 0.25, "crack": False, "heatmap_png": "done_heatmap.png",
               "overlay_png": "done_overlay.png", "color_png": "done_color.png"}
    (out / "predictions.jsonl").write_text(json.dumps(earlier) + "\n")
    job = FolderJob(fake_mapper(), root, out, root=root, mm_per_px=0.1).start()
    assert job.wait(timeout=60) and job.error is None
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines[0] == earlier and len(lines) == 2  # the earlier line kept; only the new photo appended
    new = lines[1]
    assert new["path"] == str((root / "new.png").resolve()) and new["geometry"]["mm_per_px"] == 0.1
    assert all((out / new[k]).is_file() for k in ("heatmap_png", "overlay_png", "color_png"))
    ranked = job.ranked()
    assert [it.name for it in ranked] == ["new.png", "done.jpg", "broken.jpg"]  # probability, then failures
    assert ranked[1].reused and "not a readable image" in ranked[2].error
    assert "3 of 3 photos done (1 reused" in job.progress_text() and "1 failed" in job.progress_text()
    again = FolderJob(fake_mapper(), root, out, root=root).start()  # a second look reuses everything but the bad file
    assert again.wait(timeout=60) and sum(it.reused for it in again.items) == 2
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2


def test_folder_job_refuses_an_empty_folder(tmp_path):
    with pytest.raises(CracklocError, match="no photos"):
        FolderJob(fake_mapper(), tmp_path, tmp_path / "maps", root=tmp_path)


# ---- the command ----------------------------------------------------------------------------


def test_serve_binds_loopback_unless_asked(capsys):
    from crackloc.cli import build_parser
    from crackloc.cli.serve import is_loopback

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.max_upload_mb == 200
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "70000"])
    assert "--port=70000 is outside [1, 65535]" in capsys.readouterr().err


def test_serve_refuses_a_missing_folder(capsys):
    from crackloc.cli import main

    assert main(["serve", "--folder", os.path.join("no", "such", "folder")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_thresholds_around_the_shown_one_are_measured_ahead(tmp_path, monkeypatch):
    mapper = fake_mapper()
    photo = mapper.map_photo(photo_file(tmp_path / "a.png"))
    planned = mapper.prefetch(photo, 0.5)
    assert planned[:4] == [0.49, 0.51, 0.48, 0.52] and planned[10:14] == [0.4, 0.6, 0.35, 0.65]
    assert len(planned) == 90 and 0.5 not in planned and {0.05, 0.95, 0.37} <= set(planned)
    assert mapper.prefetch_idle(60)
    calls = []
    monkeypatch.setattr(mapper_module, "measure", lambda *a, **k: calls.append(a) or measure(*a, **k))
    for t in (0.49, 0.37, 0.05, 0.95):
        assert mapper.report(photo, t).to_dict() == measure(photo.heatmap, t).to_dict()
    assert calls == []  # every slider position was measured ahead
    mapper.report(photo, 0.777)  # typed in the number box: off the slider's grid
    assert len(calls) == 1


# ---- reliability round 3 (#27) -----------------------------------------------------------------

def test_a_map_larger_than_max_pixels_after_scaling_is_refused_at_once(tmp_path):
    """An API call with scale 64 on a 224² upload would build a 205 MP map: refused before decoding."""
    import time

    path = photo_file(tmp_path / "p.png", size=(224, 224))
    mapper = fake_mapper(max_pixels=10_000_000)
    t0 = time.perf_counter()
    with pytest.raises(CracklocError, match=r"p.png: at scale 64 this 224x224 photo would be mapped at 206 MP, "
                                            r"above this server's limit of 10 MP"):
        mapper.map_photo(path, mapper.settings(scale=64))
    assert time.perf_counter() - t0 < 1.0
    assert mapper.map_photo(path, mapper.settings(scale=2)).heatmap.shape == (224, 224)  # 0.2 MP: fine


def test_an_output_folder_inside_the_photo_folder_is_never_read_as_photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    photo_file(root / "a.jpg")
    job = FolderJob(fake_mapper(), root, root / "sub", root=root).start()
    assert job.wait(timeout=60) and job.error is None and len(list((root / "sub").glob("*.png"))) == 3
    again = FolderJob(fake_mapper(), root, root / "crackloc_maps", root=root)  # the default output folder
    assert [it.name for it in again.items] == ["a.jpg"]


def test_a_folder_over_the_cap_says_how_many_photos_it_left_out_and_how_to_raise_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CRACKLOC_VIEWER_MAX_PHOTOS", "2")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        photo_file(tmp_path / name)
    job = FolderJob(fake_mapper(), tmp_path, tmp_path / "maps", root=tmp_path)
    assert job.total == 2 and job.left_out == 1
    assert "1 more photo(s) left out" in job.progress_text()
    assert "CRACKLOC_VIEWER_MAX_PHOTOS=N" in job.progress_text()


def test_a_photo_replaced_under_the_same_name_is_mapped_again_not_reused(tmp_path):
    """#27: results are reused only when the photo's content digest matches, not its name."""
    root = tmp_path / "photos"
    root.mkdir()
    photo = photo_file(root / "a.png")
    job = FolderJob(fake_mapper(), root, root / "maps", root=root).start()
    assert job.wait(timeout=60) and job.items[0].record["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert FolderJob(fake_mapper(), root, root / "maps", root=root).items[0].reused  # unchanged: reused
    Image.new("RGB", (160, 120), (128, 128, 128)).save(photo)  # a grey image under the same name
    again = FolderJob(fake_mapper(), root, root / "maps", root=root).start()
    assert not again.items[0].reused and again.wait(timeout=60)
    assert again.items[0].record["crack_probability"] == 0.0  # the grey photo's own result


class SlowDarkIsCrack(DarkIsCrack):
    """DarkIsCrack that takes 20 ms per batch of windows (a big photo is many batches)."""

    def forward(self, x: torch.Tensor):
        import time

        time.sleep(0.02)
        return super().forward(x)


def test_a_small_photo_is_answered_while_a_big_one_is_mapped(tmp_path):
    """#27: maps take turns batch by batch, so a second client's small upload need not wait for a big map."""
    import threading
    import time

    cfg = InferenceConfig(tile=TILE, overlap=0.25, precision="32", gate=False, batch_size=1)
    mapper = PhotoMapper(cfg=cfg, model_id="slow",
                         make_predictor=lambda c: Predictor.from_model(SlowDarkIsCrack(), c, threshold=0.5))
    big, small = photo_file(tmp_path / "big.png", size=(600, 450)), photo_file(tmp_path / "small.png", size=(64, 64))
    done: dict[str, float] = {}
    started = threading.Event()
    t0 = time.perf_counter()

    def run(path: Path, **kw) -> None:
        mapper.map_photo(path, **kw)
        done[path.stem] = time.perf_counter() - t0

    first = threading.Thread(target=run, args=(big,), kwargs={"on_start": lambda *a: started.set()})
    first.start()
    assert started.wait(timeout=30)  # the big map (130 windows, one batch each) is under way
    run(small)
    first.join()
    assert done["small"] < done["big"] / 4, done  # its 1 window took one turn among the big one's 130


def test_the_stop_button_ends_that_sessions_map_and_no_other(tmp_path):
    """#27: a long map can be stopped; it ends at the model's next batch of windows, the other session's runs on."""
    import threading
    import time
    from types import SimpleNamespace

    from crackloc.viewer.app import Viewer

    cfg = InferenceConfig(tile=TILE, overlap=0.25, precision="32", gate=False, batch_size=1)
    mapper = PhotoMapper(cfg=cfg, model_id="slow",
                         make_predictor=lambda c: Predictor.from_model(SlowDarkIsCrack(), c, threshold=0.5))
    viewer = Viewer(mapper)
    big, other = photo_file(tmp_path / "big.png", size=(600, 450)), photo_file(tmp_path / "other.png", size=(300, 200))
    out: dict[str, tuple] = {}
    t0 = time.perf_counter()

    def upload(path: Path, session: str) -> None:
        out[session] = (viewer.map_upload(str(path), 1.0, TILE, 0.5, 0.5, None, progress=lambda *a, **k: None,
                                          request=SimpleNamespace(session_hash=session)), time.perf_counter() - t0)

    runs = [threading.Thread(target=upload, args=(big, "a")), threading.Thread(target=upload, args=(other, "b"))]
    for run in runs:
        run.start()
    while "a" not in viewer._stops:
        time.sleep(0.01)
    assert viewer.stop_map(SimpleNamespace(session_hash="a")) == "Stopping the map…"
    for run in runs:
        run.join()
    viewer.close()
    state_a, *_, status_a, _, _ = out["a"][0]
    assert state_a == {} and "mapping stopped before it was done" in status_a, status_a
    assert out["a"][1] < 2.0  # the 130-window map (2.6 s of model time alone) ended early
    assert out["b"][0][0]["name"] == "other.png"  # the other session's map was done
    assert viewer.stop_map(SimpleNamespace(session_hash="c")) == "Nothing is being mapped."
