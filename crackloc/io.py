"""Edge I/O: atomic file writes and validated image loading (numpy/PIL live only here)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from crackloc.errors import CracklocError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP; larger images are refused before decoding
MIN_SIDE = 8
PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")  # decoded whatever the file name says
_PIL_LOCK = threading.RLock()  # guards the swap of PIL's global pixel limit


def _umask_mode() -> int:
    """0o666 minus the process umask: the mode `open(path, "w")` would give a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _umask_mode()


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
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; results should be as readable as any new file
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


@contextmanager
def open_image(path: Path, *, max_pixels: int, min_side: int = 1, what: str = "image") -> Iterator[Image.Image]:
    """Open `path` lazily (header only) and refuse it by size before any pixel is decoded.

    PIL's own decompression-bomb limit is swapped for `max_pixels` while the file is open (so
    the error names the real size and `--max-pixels` above PIL's 89 MP default works), and
    only JPEG, PNG, BMP and TIFF are opened, whatever the file name says.
    """
    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path, formats=PIL_FORMATS) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise CracklocError(f"{path}: {what} is {w}x{h} = {w * h / 1e6:.0f} MP, above "
                                        f"the limit of {max_pixels / 1e6:.0f} MP")
                if min(w, h) < min_side:
                    raise CracklocError(f"{path}: {what} is {w}x{h}, smaller than {min_side} px on a side")
                yield img
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def file_error(exc: Exception, path: Path, what: str = "image") -> CracklocError:
    """The one-line error for `exc`, raised by PIL while reading `path`."""
    detail = " ".join(str(exc).split())[:160]
    if isinstance(exc, CracklocError):
        return exc
    if isinstance(exc, PermissionError):
        return CracklocError(f"{path}: cannot read the file (permission denied)")
    if isinstance(exc, UnidentifiedImageError | Image.DecompressionBombError):
        if path.is_file() and path.stat().st_size == 0:
            return CracklocError(f"{path}: empty file (0 bytes)")
        return CracklocError(f"{path}: not a readable {what} (expected JPEG, PNG, BMP or TIFF)")
    if isinstance(exc, OSError | SyntaxError | ValueError | EOFError):
        return CracklocError(f"{path}: corrupt or truncated {what} ({detail})")
    return CracklocError(f"{path}: cannot decode the {what} ({type(exc).__name__}: {detail})")


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
        with open_image(path, max_pixels=max_pixels, min_side=min_side) as img:
            img.load()
            return _to_rgb_array(ImageOps.exif_transpose(img))
    except Exception as exc:  # PIL raises many types for bad files; all become one line
        raise file_error(exc, path) from None


def failure_reason(exc: Exception, path: str | Path) -> str:
    """The message of `exc` without the leading "<path>: " (for path + reason reports)."""
    return str(exc).removeprefix(f"{path}: ")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted; raises if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CracklocError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def rgb_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → uint8 tensor [3,H,W]."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).permute(2, 0, 1).contiguous()


def file_digest(path: str | Path, *, what: str = "file") -> str:
    """sha256 of a file's content (hex), read in 1 MiB blocks; an unreadable file raises CracklocError
    ("<path>: cannot read the <what> (<reason>)")."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise CracklocError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    return h.hexdigest()
