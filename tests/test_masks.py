"""MaskDataset / load_mask: pairing by stem, mask encodings, and errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crackloc.data.masks import MaskDataset, load_mask
from crackloc.errors import CracklocError

PATTERN = np.array([[0, 1, 1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1, 0, 0]] * 5, dtype=bool)  # 10×8


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    return tmp_path


def _image(path: Path, h: int = 10, w: int = 8) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_pairs_by_stem_with_mixed_extensions_and_encodings(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    for stem, ext in (("a", "jpg"), ("b", "png"), ("c", "tif"), ("d", "bmp")):
        _image(root / "images" / f"{stem}.{ext}")
    Image.fromarray(PATTERN.astype(np.uint8) * 255).save(root / "masks" / "a.png")  # 0/255
    Image.fromarray(PATTERN.astype(np.uint8)).save(root / "masks" / "b.bmp")  # 0/1
    Image.fromarray(PATTERN).convert("1").save(root / "masks" / "c.png")  # 1-bit
    grey = np.repeat(PATTERN.astype(np.uint8)[..., None] * 255, 3, axis=2)
    Image.fromarray(grey).save(root / "masks" / "d.tiff")  # grey stored as RGB
    Image.fromarray(PATTERN.astype(np.uint8)).save(root / "masks" / "orphan.png")  # ignored
    ds = MaskDataset(root)
    assert ds.stems == ["a", "b", "c", "d"] and len(ds) == 4
    for i, stem in enumerate(ds.stems):
        name, image, mask = ds[i]
        assert name == stem
        assert image.dtype == torch.uint8 and image.shape == (3, 10, 8)
        assert mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(PATTERN))


def test_size_mismatch_names_the_mask(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    _image(root / "images" / "x.png", h=12, w=9)
    Image.fromarray(PATTERN.astype(np.uint8) * 255).save(root / "masks" / "x.png")
    ds = MaskDataset(root)  # lazy: construction only lists files
    with pytest.raises(CracklocError, match=r"x\.png: mask is 8x10 but image x\.png is 9x12"):
        ds[0]


def test_image_without_mask_names_the_image(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    _image(root / "images" / "lonely.jpg")
    with pytest.raises(CracklocError, match=r"lonely\.jpg: no mask"):
        MaskDataset(root)


def test_non_binary_mask_names_the_file(tmp_path: Path) -> None:
    bad = PATTERN.astype(np.uint8) * 255
    bad[0, 0] = 128
    path = tmp_path / "soft.png"
    Image.fromarray(bad).save(path)
    with pytest.raises(CracklocError, match=r"soft\.png: mask has values other than 0/1/255 \(128\)"):
        load_mask(path)


def test_colour_and_corrupt_masks_are_errors(tmp_path: Path) -> None:
    colour = np.zeros((10, 8, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "red.png")
    with pytest.raises(CracklocError, match=r"red\.png: colour mask"):
        load_mask(tmp_path / "red.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CracklocError, match=r"junk\.png"):
        load_mask(tmp_path / "junk.png")


def test_missing_folder_and_duplicate_stems(tmp_path: Path) -> None:
    with pytest.raises(CracklocError, match="no such folder"):
        MaskDataset(tmp_path / "nowhere")
    root = _folder(tmp_path)
    _image(root / "images" / "a.jpg")
    _image(root / "images" / "a.png")
    with pytest.raises(CracklocError, match="same name"):
        MaskDataset(root)
