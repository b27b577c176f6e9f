"""Image + pixel-mask pairs from a folder with `images/` and `masks/` (matched by file stem).

Masks may be 0/255, 0/1 (8- or 16-bit grey, palette indices, or grey stored as RGB) or 1-bit
(mode '1'); any other value is an error naming the file. Pairs are loaded lazily, one per
`__getitem__`, so data sets of large photos never sit in memory at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from crackloc.errors import CracklocError
from crackloc.io import (
    DEFAULT_MAX_PIXELS,
    file_error,
    list_images,
    load_rgb,
    open_image,
    rgb_to_tensor,
)


def _by_stem(folder: Path) -> dict[str, Path]:
    """Map file stem → path for the images in `folder`; two files with one stem is an error."""
    found: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in found:
            raise CracklocError(f"{path}: same name as {found[path.stem].name} in {folder}")
        found[path.stem] = path
    return found


def _mask_array(img: Image.Image, path: Path) -> np.ndarray:
    """Any PIL mask mode → its raw values as an HxW array (colour masks must be grey)."""
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img)[..., :3]
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()):
            raise CracklocError(f"{path}: colour mask; expected a grey or binary mask")
        return arr[..., 0]
    if img.mode == "LA":
        return np.asarray(img)[..., 0]
    return np.asarray(img)  # L, P (palette indices), I;16, I, F


def load_mask(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load a binary mask as bool [H,W] (EXIF orientation applied, crack = nonzero).

    Raises `CracklocError` naming the file if it is missing, unreadable, too large, or holds
    values other than {0, 1, 255}.
    """
    path = Path(path)
    if not path.is_file():
        raise CracklocError(f"{path}: no such mask file")
    try:
        with open_image(path, max_pixels=max_pixels, what="mask") as img:
            img.load()
            arr = _mask_array(ImageOps.exif_transpose(img), path)
    except Exception as exc:  # PIL raises many types for bad files; all become one line
        raise file_error(exc, path, "mask") from None
    valid = (arr == 0) | (arr == 1) | (arr == 255)  # [H,W]
    if not valid.all():
        bad = np.unique(arr[~valid])
        shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise CracklocError(f"{path}: mask has values other than 0/1/255 ({shown}); "
                            "masks must be binary")
    return torch.from_numpy(arr != 0)  # [H,W] bool


class MaskDataset(Dataset):
    """Pairs `(stem, image uint8 [3,H,W], mask bool [H,W])` from `root/images` + `root/masks`.

    Files are matched by stem (any of jpg/jpeg/png/bmp/tif/tiff, case-insensitive). An image
    without a mask raises at construction; a mask whose size differs from its image raises on
    access. Both errors are `CracklocError`s naming the file. Masks without an image are ignored.

    Args:
        root: Folder holding `images/` and `masks/`.
        max_pixels: Larger images/masks are refused before decoding.
    """

    def __init__(self, root: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.root = Path(root)
        self.max_pixels = max_pixels
        images = _by_stem(self.root / "images")
        masks = _by_stem(self.root / "masks")
        if not images:
            raise CracklocError(f"{self.root / 'images'}: no images found")
        for stem, path in images.items():
            if stem not in masks:
                raise CracklocError(f"{path}: no mask named {stem}.* in {self.root / 'masks'}")
        self.stems: list[str] = sorted(images)
        self._images = images
        self._masks = {stem: masks[stem] for stem in self.stems}

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, stem: str) -> Path:
        """Path of the image file of `stem`."""
        return self._images[stem]

    def mask_path(self, stem: str) -> Path:
        """Path of the mask file of `stem`."""
        return self._masks[stem]

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        stem = self.stems[index]
        image = rgb_to_tensor(load_rgb(self._images[stem], max_pixels=self.max_pixels))  # [3,H,W]
        mask = load_mask(self._masks[stem], max_pixels=self.max_pixels)  # [H,W]
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            h, w = image.shape[-2:]
            raise CracklocError(f"{self._masks[stem]}: mask is {mask.shape[1]}x{mask.shape[0]} "
                                f"but image {self._images[stem].name} is {w}x{h}")
        return stem, image, mask
