"""Edge I/O: atomic file writes and validated image loading (numpy/PIL live only here)."""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from crackloc.errors import CracklocError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP; larger images are refused before decoding
MIN_SIDE = 8


def atomic_write(path: str | Path, writer: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Write a file through a temp file in the same folder, then rename it into place.

    Args:
        path: Destination.
        writer: Called with an open file object; writes the content.
        binary: Open the temp file in binary mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    """Atomically `torch.save` plain tensors/containers."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Atomically save a uint8 HxW or HxWx3 array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def save_figure(path: str | Path, fig: Any, *, dpi: int = 120) -> Path:
    """Atomically save a matplotlib figure as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to uint8 HxWx3."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> np.ndarray:
    """Load an image as uint8 HxWx3 RGB, EXIF orientation applied.

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted. Raises `CracklocError`
    (one line naming the file) for a missing, unreadable, corrupt, too small or too large file;
    the size check happens before pixels are decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise CracklocError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise CracklocError(
                        f"{path}: image is {w}x{h} = {w * h / 1e6:.0f} MP, above the limit of "
                        f"{max_pixels / 1e6:.0f} MP (raise it with --max-pixels)"
                    )
                if min(w, h) < min_side:
                    raise CracklocError(f"{path}: image is {w}x{h}, smaller than {min_side} px on a side")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb_array(img)
    except CracklocError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CracklocError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CracklocError(f"{path}: corrupt or truncated image ({exc})") from None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted; raises if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CracklocError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def rgb_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → uint8 tensor [3,H,W]."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).permute(2, 0, 1).contiguous()
