"""The split manifest of a run: read it (or make it from a data folder), check it, decode its splits."""

from __future__ import annotations

import json
from pathlib import Path

from crackloc.config import RunConfig
from crackloc.data.dataset import DecodedSplit, decode_rows, stratified_subset
from crackloc.data.folders import scan_labelled
from crackloc.data.split import (
    NEED_BOTH,
    SPLITS,
    Row,
    check_manifest,
    lacking_part,
    make_manifest,
    part_counts,
    read_manifest,
    write_manifest,
)
from crackloc.errors import CracklocError
from crackloc.io import write_json


def resolve_manifest(cfg: RunConfig, *, progress: bool, check: bool = True
                     ) -> tuple[Path, list[Row], dict | None]:
    """(data root, rows, split stats) of the configured manifest, or of a split made in memory.

    Writes nothing. The stats are None when a manifest was read; with `check` the rows are
    checked for leaks across splits (all pairs of perceptual hashes).
    """
    stats = None
    if cfg.data.manifest:
        root, rows = read_manifest(cfg.data.manifest)
        if cfg.data.data and Path(cfg.data.data).is_dir():
            root = Path(cfg.data.data).resolve()
    else:
        root, items = scan_labelled(cfg.data.data)
        rows, stats = make_manifest(root, items, seed=cfg.train.seed, progress=progress)
    if check:
        check_manifest(rows)
    return root, rows, stats


def write_split(cfg: RunConfig, out: Path, root: Path, rows: list[Row], stats: dict) -> Path:
    """Write a split made by `resolve_manifest` as out/split.csv (+ split_stats.json); sets cfg.data.manifest."""
    path = write_manifest(out / "split.csv", rows, root=root)
    write_json(out / "split_stats.json", stats)
    cfg.data.manifest = str(path.resolve())
    return path


def ensure_manifest(cfg: RunConfig, out: Path, *, progress: bool, check: bool = True
                    ) -> tuple[Path, list[Row]]:
    """Read the configured manifest, or make `out/split.csv` from the data folder.

    With `check` (the default) the manifest is checked for leaks across splits: done once per
    run by `train_run`; evaluation of that run skips it. Sets `cfg.data.manifest` when a
    manifest is made.
    """
    root, rows, stats = resolve_manifest(cfg, progress=progress, check=check)
    if stats is not None:
        write_split(cfg, out, root, rows, stats)
    return root, rows


def manifest_name(cfg: RunConfig) -> str:
    """How messages name the split: the manifest file, or the data folder it is made from."""
    return cfg.data.manifest or f"{cfg.data.data} (split made from it)"


def _limit(cfg: RunConfig, name: str) -> int | None:
    return {"train": cfg.data.max_train, "val": cfg.data.max_val, "test": cfg.data.max_test}[name]


def check_parts(cfg: RunConfig, rows: list[Row]) -> None:
    """Refuse, before any training, a split whose train, val or test part (as capped) lacks a class."""
    problem = lacking_part(part_counts(rows))
    if problem:
        raise CracklocError(f"{manifest_name(cfg)}: {problem}: cannot train or score; {NEED_BOTH}")
    capped = [r for name in SPLITS
              for r in stratified_subset([r for r in rows if r.split == name], _limit(cfg, name), seed=cfg.train.seed)]
    problem = lacking_part(part_counts(capped))
    if problem:
        raise CracklocError(f"{manifest_name(cfg)}: {problem} after capping each part at data.max_train/"
                            f"max_val/max_test = {cfg.data.max_train}/{cfg.data.max_val}/{cfg.data.max_test} "
                            "images: raise the cap (--max-train)")


def split_failures(out: Path) -> list[tuple[str, str]]:
    """Images the split left out as unreadable: (path, reason) from RUN/split_stats.json, if any."""
    path = out / "split_stats.json"
    if not path.is_file():
        return []
    return [(f["path"], f["reason"]) for f in json.loads(path.read_text(encoding="utf-8")).get("failed", [])]


def load_splits(cfg: RunConfig, root: Path, rows: list[Row], names: tuple[str, ...], *,
                progress: bool) -> dict[str, DecodedSplit]:
    """Decode the (preset-limited) splits named in `names`; each must hold readable images of both classes."""
    out = {}
    for name in names:
        part = stratified_subset([r for r in rows if r.split == name], _limit(cfg, name), seed=cfg.train.seed)
        if not part:
            raise CracklocError(f"the manifest has no {name} images")
        split = decode_rows(root, part, size=cfg.data.image_size, desc=f"decoding {name}", progress=progress)
        pos = int((split.labels > 0.5).sum())
        neg = len(split.labels) - pos
        if pos == 0 or neg == 0:
            raise CracklocError(f"{manifest_name(cfg)}: the {name} part has {pos} crack and {neg} crack-free "
                                f"readable images ({len(split.failed)} failed): cannot train or score; {NEED_BOTH}")
        out[name] = split
    return out
