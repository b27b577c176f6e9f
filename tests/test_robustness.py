"""Bad inputs: every command skips and names each bad file, finishes the good ones, exits 1.

The corpus is made here, in a folder whose name has a space and non-ASCII letters: truncated,
corrupt and zero-byte JPEG/PNG, a text file named .jpg, a 1×1 image and a 20000×20000 PNG
(a crafted header: refused before any pixel is decoded) are BAD; grayscale, CMYK, RGBA,
palette, 16-bit, 10×10 and EXIF-rotated images are GOOD (converted). Masks of the wrong
size or with values other than 0/1/255 are bad pairs for `evaluate-localization`.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackloc.cli import main
from crackloc.data.synthetic import make_crack_image, write_crack_folder

RNG = np.random.default_rng(0)
# file name → substring of the reason every command must print for it
BAD = {
    "trunc.jpg": "truncated", "trunc.png": "truncated", "corrupt.jpg": "corrupt",
    "corrupt.png": "corrupt", "zero.jpg": "empty file", "zero.png": "empty file",
    "text.jpg": "not a readable image", "one.png": "smaller than 8 px",
    "huge.png": "above the limit", "ünï cödé.jpg": "truncated",
}
GOOD = ("gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "g16.png", "ten.png", "exif.jpg",
        "..jpg", "ünï good.png")


def _encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w×h grey pixels but carries one row: cheap to write, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(w + 1)))
            + chunk(b"IEND", b""))


def _bad_bytes() -> dict[str, bytes]:
    arr = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpg, png = _encoded(arr, "JPEG"), _encoded(arr, "PNG")
    corrupt_jpg = bytearray(jpg)
    dht = jpg.find(b"\xff\xc4")  # Huffman table: code counts that add up to far too many codes
    corrupt_jpg[dht + 5 : dht + 21] = b"\xff" * 16
    corrupt_png = bytearray(png)
    corrupt_png[100:140] = b"\xff" * 40
    return {
        "trunc.jpg": jpg[: len(jpg) // 2], "trunc.png": png[: len(png) // 2],
        "corrupt.jpg": bytes(corrupt_jpg),
        "corrupt.png": bytes(corrupt_png), "zero.jpg": b"", "zero.png": b"",
        "text.jpg": b"this is not an image\n", "one.png": _encoded(arr[:1, :1], "PNG"),
        "huge.png": _png_header_only(20000, 20000), "ünï cödé.jpg": jpg[: len(jpg) // 3],
    }


def _good_bytes() -> dict[str, bytes]:
    arr = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 40 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display → 24 wide, 40 high
    img = Image.fromarray(arr)
    grey16 = RNG.integers(0, 65536, (24, 40)).astype(np.uint16)
    return {
        "gray.jpg": _encoded(np.asarray(img.convert("L")), "JPEG"),
        "cmyk.jpg": _save(img.convert("CMYK"), "JPEG"), "rgba.png": _save(img.convert("RGBA"), "PNG"),
        "palette.png": _save(img.convert("P"), "PNG"), "g16.png": _encoded(grey16, "PNG"),
        "ten.png": _encoded(arr[:10, :10], "PNG"), "exif.jpg": _save(img, "JPEG", exif=exif),
        "..jpg": _encoded(arr, "JPEG"), "ünï good.png": _encoded(arr, "PNG"),
    }


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """`bröken dir/` with mixed/ (all files), labelled/{Positive,Negative}, loc/{images,masks}, empty/."""
    root = tmp_path_factory.mktemp("robust") / "bröken dir"
    _write(root / "mixed", {**_bad_bytes(), **_good_bytes()})
    (root / "empty").mkdir()
    write_crack_folder(root / "labelled", 24, size=64, seed=3)
    _write(root / "labelled" / "Positive", {**_bad_bytes(), **_good_bytes()})
    _write(root / "labelled" / "Negative", {k: v for k, v in _bad_bytes().items() if k.startswith("t")})
    _write_localization(root / "loc")
    return root


def _write_localization(loc: Path) -> None:
    """8 good synthetic image/mask pairs and bad pairs (bad image, wrong-size or non-binary mask)."""
    images, masks = {}, {}
    for i in range(8):
        img, mask = make_crack_image(48, 48, crack=True, seed=i)
        images[f"ok{i}.png"] = _encoded((img * 255).byte().permute(1, 2, 0).numpy(), "PNG")
        masks[f"ok{i}.png"] = _encoded(mask[0].byte().numpy() * 255, "PNG")
    good_mask = masks["ok0.png"]
    images["wrongsize.png"], masks["wrongsize.png"] = images["ok1.png"], _encoded(np.zeros((20, 30), np.uint8), "PNG")
    images["grey128.png"] = images["ok2.png"]
    masks["grey128.png"] = _encoded(np.full((48, 48), 128, np.uint8), "PNG")
    for name, data in _bad_bytes().items():
        images[_loc_name(name)], masks[Path(_loc_name(name)).stem + ".png"] = data, good_mask
    _write(loc / "images", images)
    _write(loc / "masks", masks)


def _loc_name(name: str) -> str:
    """trunc.jpg → trunc-jpg.jpg: image stems must be unique next to their masks."""
    p = Path(name)
    return f"{p.stem}-{p.suffix[1:]}{p.suffix}"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`crackloc ARGV` in-process: (exit code, stdout, stderr); no traceback may appear."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # their handlers keep the stderr of the
        for handler in logging.getLogger(name).handlers:  # test that imported lightning first
            if isinstance(handler, logging.StreamHandler):
                handler.stream = sys.stderr  # setStream would flush the closed one
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _assert_named(err: str, folder: Path, names, why: dict[str, str] = BAD) -> None:
    """Each bad file appears on a `failed: PATH: REASON` line with the expected reason."""
    lines = [ln for ln in err.splitlines() if "failed: " in ln]
    for name in names:
        hits = [ln for ln in lines if f"{folder / name}: " in ln]
        assert hits, f"{name} not reported in:\n{err}"
        assert why[name] in hits[0], hits[0]


def _png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


def test_predict_skips_bad_files_and_finishes_good_ones(corpus, model_file, tmp_path, capsys):
    out = tmp_path / "prédictions out"
    rc, _, err = _run(["predict", corpus / "mixed", corpus / "empty", corpus / "mixed" / "gone.jpg",
                       "--checkpoint", model_file, "--out", out, "--tile", 64], capsys)
    assert rc == 1
    _assert_named(err, corpus / "mixed", BAD)
    assert f"failed: {corpus / 'empty'}: folder holds no images" in err
    assert f"failed: {corpus / 'mixed' / 'gone.jpg'}: no such file" in err
    assert f"{len(BAD) + 2} input(s) failed" in err
    failed = [json.loads(ln) for ln in (out / "failed.jsonl").read_text().splitlines()]
    assert {Path(f["path"]).name for f in failed} == {*BAD, "empty", "gone.jpg"}
    records = {Path(r["path"]).name: r for r in map(json.loads, (out / "predictions.jsonl").open())}
    assert set(records) == set(GOOD)
    for name, rec in records.items():
        for key in ("heatmap_png", "overlay_png", "color_png"):
            file = out / rec[key]
            assert file.resolve().parent == out.resolve(), file  # no escape from --out
            assert _png_ok(file) == (rec["width"], rec["height"]), name
    assert (records["exif.jpg"]["width"], records["exif.jpg"]["height"]) == (24, 40)  # EXIF applied
    assert (records["ten.png"]["width"], records["ten.png"]["height"]) == (10, 10)
    assert records["..jpg"]["heatmap_png"] == "image_heatmap.png"


def test_split_leaves_bad_files_out_and_says_so(corpus, tmp_path, capsys):
    manifest = tmp_path / "split ü.csv"
    rc, out, err = _run(["split", "--data", corpus / "labelled", "--out", manifest], capsys)
    assert rc == 1 and "wrote" in out
    _assert_named(err, corpus / "labelled" / "Positive", BAD)
    _assert_named(err, corpus / "labelled" / "Negative", ["trunc.jpg", "trunc.png", "text.jpg"])
    rows = manifest.read_text(encoding="utf-8").splitlines()[2:]
    names = {Path(r.split(",")[0].strip('"')).name for r in rows}
    assert len(rows) == 24 + len(GOOD) and set(GOOD) <= names and not set(BAD) & names
    stats = json.loads(manifest.with_suffix(".stats.json").read_text())
    assert len(stats["failed"]) == len(BAD) + 3 and stats["images"] == 24 + len(GOOD)


def test_train_skips_bad_files_reports_them_and_finishes(corpus, tmp_path, capsys):
    run = tmp_path / "rün"
    rc, out, err = _run(["train", "--data", corpus / "labelled", "--out", run, "--preset", "tiny",
                         "--epochs", "1", "--teacher-epochs", "1", "--pretrained", "none"], capsys)
    assert rc == 1, err
    _assert_named(err, corpus / "labelled" / "Positive", BAD)
    assert f"{len(BAD) + 3} image(s) failed" in err
    assert "test: AUROC" in out
    summary = json.loads((run / "train_summary.json").read_text())
    assert len(summary["failed_images"]) == len(BAD) + 3
    assert 0 <= json.loads((run / "metrics.json").read_text())["at_0.5"]["auroc"] <= 1
    assert (run / "model.pt").is_file()


def test_evaluate_localization_scores_good_pairs_and_names_bad_ones(corpus, model_file, tmp_path, capsys):
    out = tmp_path / "löc out"
    rc, stdout, err = _run(["evaluate-localization", "--data", corpus / "loc", "--checkpoint", model_file,
                            "--out", out, "--tile", 64, "--dev-fraction", "0.5"], capsys)
    assert rc == 1, err
    why = {**{_loc_name(k): v for k, v in BAD.items()}, "wrongsize.png": "mask is 30x20 but image", "grey128.png": "values other than 0/1/255"}
    _assert_named(err, corpus / "loc" / "images", why, why)
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["failed"]) == len(why) and m["n_images"] == 8
    assert 0 <= m["pxap"] <= 1 and "PxAP" in stdout
    for name in ("pr_curve.png", "overlays.png"):
        _png_ok(out / name)


@pytest.mark.parametrize("argv, message", [
    (["split", "--data", "{root}/empty", "--out", "{tmp}/m.csv"], "expected sub-folders"),
    (["train", "--data", "{root}/empty", "--out", "{tmp}/r", "--preset", "tiny"], "expected sub-folders"),
    (["split", "--positive-dir", "{root}/mixed", "--negative-dir", "{root}/empty", "--out", "{tmp}/m.csv"],
     "need images in both"),
])
def test_empty_folders_give_one_line(argv, message, corpus, tmp_path, capsys):
    rc, _, err = _run([a.format(root=corpus, tmp=tmp_path) for a in argv], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and message in lines[0], err


def test_all_bad_class_is_one_line(corpus, tmp_path, capsys):
    neg = tmp_path / "only bad"
    _write(neg, _bad_bytes())
    rc, _, err = _run(["split", "--positive-dir", corpus / "mixed", "--negative-dir", neg,
                       "--out", tmp_path / "m.csv"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and "hashing" not in ln]
    assert rc == 2 and len(lines) == 1 and "no readable image in the no-crack folder" in lines[0], err


def test_unwritable_out_is_one_line(corpus, model_file, tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    rc, _, err = _run(["predict", corpus / "mixed" / "gray.jpg", "--checkpoint", model_file,
                       "--out", blocker / "out"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Not a directory" in lines[0], err


def test_atomic_writes_leave_no_temp_files_and_normal_permissions(tmp_path):
    from crackloc.io import FILE_MODE, atomic_write, write_json

    path = write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "m.json", lambda f: f.write(b"partial") and 1 / 0)
    assert json.loads(path.read_text()) == {"a": 1}  # the old content survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert path.stat().st_mode & 0o777 == FILE_MODE
