"""Labelled image folders: `Positive/` + `Negative/` (the Özgenel layout) or any two folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crackloc.errors import CracklocError
from crackloc.io import list_images


@dataclass(frozen=True)
class LabelledImage:
    """One image file and its image-level label (1 = crack)."""

    path: Path
    label: int


def _find_class_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def scan_labelled(data: str | Path | None = None, *, positive_dir: str | Path | None = None,
                  negative_dir: str | Path | None = None) -> tuple[Path, list[LabelledImage]]:
    """List images with labels; returns (root used for relative paths, items).

    Either `data` holds `Positive/` and `Negative/` (case-insensitive; also `crack/`,
    `no_crack/`), or `positive_dir` and `negative_dir` are given explicitly.
    """
    if positive_dir or negative_dir:
        if not (positive_dir and negative_dir):
            raise CracklocError("give both --positive-dir and --negative-dir")
        pos, neg = Path(positive_dir).resolve(), Path(negative_dir).resolve()
        root = Path(data).resolve() if data else Path(_common_parent(pos, neg))
    else:
        if data is None:
            raise CracklocError("no data folder given")
        root = Path(data).resolve()
        if not root.is_dir():
            raise CracklocError(f"{root}: no such folder")
        pos = _find_class_dir(root, ("positive", "crack", "cracked", "pos"))
        neg = _find_class_dir(root, ("negative", "no_crack", "uncracked", "neg"))
        if pos is None or neg is None:
            raise CracklocError(f"{root}: expected sub-folders Positive/ and Negative/ "
                                "(or use --positive-dir/--negative-dir)")
    _refuse_overlap(pos.resolve(), neg.resolve())
    items = [LabelledImage(p, 1) for p in list_images(pos)] + [LabelledImage(p, 0) for p in list_images(neg)]
    if not any(i.label == 1 for i in items) or not any(i.label == 0 for i in items):
        raise CracklocError(f"{root}: need images in both the crack and the no-crack folder")
    return root.resolve(), items


def _refuse_overlap(pos: Path, neg: Path) -> None:
    """Refuse a crack folder that is the crack-free folder, or lies inside it (or the other way round)."""
    if pos == neg:
        raise CracklocError(f"{pos}: the crack and the no-crack folder are the same folder; "
                            "give two separate folders")
    for inner, outer in ((pos, neg), (neg, pos)):
        if inner.is_relative_to(outer):
            raise CracklocError(f"{inner} lies inside {outer}: the crack and the no-crack folder must be "
                                "separate, neither inside the other")


def _common_parent(a: Path, b: Path) -> Path:
    a, b = a.resolve(), b.resolve()
    for parent in [a, *a.parents]:
        if b.is_relative_to(parent):
            return parent
    return Path("/")
