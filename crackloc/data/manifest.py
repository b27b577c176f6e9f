"""The split manifest of a run: read it (or make it from a data folder), check it, decode its splits."""

from __future__ import annotations

import json
from pathlib import Path

from crackloc.config import RunConfig
from crackloc.data.dataset import DecodedSplit, decode_rows, stratified_subset
from crackloc.data.folders import scan_labelled
from crackloc.data.split import Row, check_manifest, make_manifest, read_manifest, write_manifest
from crackloc.errors import CracklocError
from crackloc.io import write_json


def ensure_manifest(cfg: RunConfig, out: Path, *, progress: bool, check: bool = True
                    ) -> tuple[Path, list[Row]]:
    """Read the configured manifest, or make `out/split.csv` from the data folder.

    With `check` (the default) the manifest is checked for leaks across splits (all pairs of
    perceptual hashes): done once per run by `train_run`; evaluation of that run skips it.
    Sets `cfg.data.manifest` when a manifest is made.
    """
    if not cfg.data.manifest:
        root, items = scan_labelled(cfg.data.data)
        rows, stats = make_manifest(root, items, seed=cfg.train.seed, progress=progress)
        cfg.data.manifest = str(write_manifest(out / "split.csv", rows, root=root).resolve())
        write_json(out / "split_stats.json", stats)
    root, rows = read_manifest(cfg.data.manifest)
    if cfg.data.data and Path(cfg.data.data).is_dir():
        root = Path(cfg.data.data).resolve()
    if check:
        check_manifest(rows)
    return root, rows


def split_failures(out: Path) -> list[tuple[str, str]]:
    """Images the split left out as unreadable: (path, reason) from RUN/split_stats.json, if any."""
    path = out / "split_stats.json"
    if not path.is_file():
        return []
    return [(f["path"], f["reason"]) for f in json.loads(path.read_text(encoding="utf-8")).get("failed", [])]


def load_splits(cfg: RunConfig, root: Path, rows: list[Row], names: tuple[str, ...], *,
                progress: bool) -> dict[str, DecodedSplit]:
    """Decode the (preset-limited) splits named in `names`."""
    limits = {"train": cfg.data.max_train, "val": cfg.data.max_val, "test": cfg.data.max_test}
    out = {}
    for name in names:
        part = stratified_subset([r for r in rows if r.split == name], limits[name], seed=cfg.train.seed)
        if not part:
            raise CracklocError(f"the manifest has no {name} images")
        out[name] = decode_rows(root, part, size=cfg.data.image_size, desc=f"decoding {name}", progress=progress)
    return out
