"""Grouped, stratified train/val/test split that keeps duplicates together.

Exact duplicates (same SHA-256) and near duplicates (perceptual-hash Hamming distance ≤ d)
are merged into groups (connected components, scipy.sparse.csgraph); whole groups are assigned to splits, per class,
to hit 70/15/15. The result is a CSV manifest every later command reuses, and
`check_manifest` proves no group, byte-identical file or near duplicate crosses splits.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from crackloc.data.folders import LabelledImage
from crackloc.errors import CracklocError
from crackloc.io import atomic_write, failure_reason, file_digest, load_rgb

SPLITS = ("train", "val", "test")
FIELDS = ("path", "label", "split", "group", "sha256", "phash")
# Distinct images (duplicate groups) of a class that a 70/15/15 split needs to give each part one.
MIN_PER_CLASS = 5
NEED_BOTH = (f"every part needs both classes: at least {MIN_PER_CLASS} crack and {MIN_PER_CLASS} crack-free "
             "images that are not duplicates of each other")


@dataclass
class Row:
    """One manifest row; `path` is relative to the data root."""

    path: str
    label: int
    split: str
    group: int
    sha256: str
    phash: str


def hash_file(path: Path) -> tuple[str, str]:
    """(sha256 hex of the bytes, 64-bit perceptual hash hex of the decoded image).

    The image is validated and decoded by `load_rgb` (size limits, EXIF, modes); a bad file
    raises `CracklocError` naming it.
    """
    rgb = load_rgb(path)  # HxWx3 uint8
    ph = str(imagehash.phash(Image.fromarray(rgb).convert("L")))
    return file_digest(path), ph


def hash_items(items: list[LabelledImage], *, progress: bool = True
               ) -> tuple[list[LabelledImage], list[tuple[str, str]], list[tuple[str, str]]]:
    """Hash every readable item: → (good items, their (sha, phash), failed (path, reason))."""
    good, hashes, failed = [], [], []
    for it in tqdm(items, desc="hashing", disable=not progress, unit="img"):
        try:
            hashes.append(hash_file(it.path))
        except CracklocError as exc:
            failed.append((str(it.path), failure_reason(exc, it.path)))
            continue
        good.append(it)
    return good, hashes, failed


def _hamming_pairs(hashes: list[str], max_distance: int, chunk: int = 2048) -> list[tuple[int, int]]:
    """Index pairs (i<j) whose 64-bit hashes differ in ≤ max_distance bits."""
    h = np.array([int(x, 16) for x in hashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(h), chunk):
        block = h[start:start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])  # [chunk, N]
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj
        pairs.extend(zip(ii[keep].tolist(), jj[keep].tolist(), strict=True))
    return pairs


def _components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Connected-component label of each of `n` nodes joined by `pairs` (scipy's csgraph), numbered by
    each component's first node, so the group ids follow the input order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1].tolist()
    ids = {label: k for k, label in enumerate(dict.fromkeys(labels))}
    return [ids[label] for label in labels]


def group_duplicates(shas: list[str], phashes: list[str], *, max_distance: int) -> tuple[list[int], dict]:
    """Group ids (0..G-1) merging exact and near duplicates, and merge statistics."""
    first: dict[str, int] = {}
    exact_pairs = []
    for i, s in enumerate(shas):
        if s in first:
            exact_pairs.append((first[s], i))
        else:
            first[s] = i
    before = len(set(_components(len(shas), exact_pairs)))
    near = _hamming_pairs(phashes, max_distance) if max_distance >= 0 else []
    groups = _components(len(shas), exact_pairs + near)
    sizes = Counter(groups)
    stats = {
        "images": len(shas), "groups": len(sizes), "exact_duplicate_files_merged": len(exact_pairs),
        "near_duplicate_pairs": len(near), "groups_merged_by_near_duplicates": before - len(sizes),
        "multi_image_groups": sum(1 for c in sizes.values() if c > 1),
        "images_in_multi_image_groups": sum(c for c in sizes.values() if c > 1),
        "largest_group": max(sizes.values()), "phash_max_distance": max_distance,
    }
    return groups, stats


def assign_splits(labels: list[int], groups: list[int], *, fractions=(0.7, 0.15, 0.15),
                  seed: int = 0) -> list[str]:
    """Whole groups to splits, per class (group majority label), largest groups first.

    Each group goes to the split furthest below its target share of that class.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[int]] = defaultdict(list)
    for g, idx in members.items():
        by_class[round(sum(labels[i] for i in idx) / len(idx))].append(g)
    gen = torch.Generator().manual_seed(seed)
    out = [""] * len(labels)
    for cls in sorted(by_class):
        gs = by_class[cls]
        order = torch.randperm(len(gs), generator=gen).tolist()
        gs = sorted((gs[k] for k in order), key=lambda g: -len(members[g]))  # stable: ties stay random
        total = sum(len(members[g]) for g in gs)
        filled = [0, 0, 0]
        for g in gs:
            deficit = [fractions[s] * total - filled[s] for s in range(3)]
            s = max(range(3), key=lambda k: deficit[k])
            filled[s] += len(members[g])
            for i in members[g]:
                out[i] = SPLITS[s]
    return out


def make_manifest(root: Path, items: list[LabelledImage], *, seed: int = 0, max_distance: int = 4,
                  fractions=(0.7, 0.15, 0.15), progress: bool = True) -> tuple[list[Row], dict]:
    """Hash, group and split `items`; returns manifest rows and grouping statistics.

    Unreadable images are left out of the rows and listed in `stats["failed"]` (path, reason).
    """
    items, hashes, failed = hash_items(items, progress=progress)
    refuse_cross_label_copies(items, [h[0] for h in hashes])
    for cls, name in ((1, "crack"), (0, "no-crack")):
        if not any(it.label == cls for it in items):
            example = f"; e.g. {failed[0][0]}: {failed[0][1]}" if failed else ""
            raise CracklocError(f"{root}: no readable image in the {name} folder "
                                f"({len(failed)} file(s) failed{example})")
    shas, phs = [h[0] for h in hashes], [h[1] for h in hashes]
    groups, stats = group_duplicates(shas, phs, max_distance=max_distance)
    labels = [it.label for it in items]
    splits = assign_splits(labels, groups, fractions=fractions, seed=seed)
    rows = [Row(str(it.path.relative_to(root)), it.label, sp, g, s, p)
            for it, sp, g, s, p in zip(items, splits, groups, shas, phs, strict=True)]
    stats["split_counts"] = {sp: {"positive": pos, "negative": neg} for sp, (pos, neg) in part_counts(rows).items()}
    stats["failed"] = [{"path": path, "reason": why} for path, why in failed]
    return rows, stats


def refuse_cross_label_copies(items: list[LabelledImage], shas: list[str]) -> None:
    """Refuse byte-identical files filed under both labels, naming the first pair and the count."""
    first: dict[tuple[str, int], Path] = {}
    for it, sha in zip(items, shas, strict=True):
        first.setdefault((sha, it.label), it.path)
    both = [sha for (sha, label) in first if label == 1 and (sha, 0) in first]
    if both:
        pos, neg = first[(both[0], 1)], first[(both[0], 0)]
        raise CracklocError(f"{pos} (crack) and {neg} (no-crack) are byte-identical: {len(both)} image(s) are "
                            "filed under both labels; remove the wrong copy of each")


def part_counts(rows: list[Row]) -> dict[str, tuple[int, int]]:
    """(crack, crack-free) image counts of each split part."""
    return {sp: (sum(1 for r in rows if r.split == sp and r.label == 1),
                 sum(1 for r in rows if r.split == sp and r.label == 0)) for sp in SPLITS}


def lacking_part(counts: dict[str, tuple[int, int]]) -> str | None:
    """The first part that is empty or lacks a class, e.g. 'the val part has no crack image (...)'; None if none."""
    summary = ", ".join(f"{sp} {pos}/{neg}" for sp, (pos, neg) in counts.items())
    for sp, (pos, neg) in counts.items():
        if pos == 0 or neg == 0:
            what = "is empty" if pos + neg == 0 else f"has no {'crack' if pos == 0 else 'crack-free'} image"
            return f"the {sp} part {what} ({summary} crack/crack-free images)"
    return None


def check_split_parts(rows: list[Row], stats: dict, *, where: str | Path) -> None:
    """Refuse a new split with an empty part or a part lacking a class, saying why it happened."""
    problem = lacking_part(part_counts(rows))
    if problem is None:
        return
    per_class = [sum(1 for r in rows if r.label == cls) for cls in (0, 1)]
    if min(per_class) < MIN_PER_CLASS:
        raise CracklocError(f"{where} not written: {problem}; {NEED_BOTH}")
    raise CracklocError(f"{where} not written: {problem}: near-duplicate grouping at --max-distance "
                        f"{stats['phash_max_distance']} merged the {stats['images']} images into {stats['groups']} "
                        "group(s); lower --max-distance (default 4)")


def write_manifest(path: str | Path, rows: list[Row], *, root: Path) -> Path:
    """Write the manifest CSV (first line: `# root=<data root>`)."""
    def writer(f) -> None:
        f.write(f"# root={root}\n")
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow([r.path, r.label, r.split, r.group, r.sha256, r.phash])
    return atomic_write(path, writer, binary=False)


def read_manifest(path: str | Path) -> tuple[Path, list[Row]]:
    """Read a manifest written by `write_manifest`: (data root, rows)."""
    path = Path(path)
    if not path.is_file():
        raise CracklocError(f"{path}: no such manifest (make one with `crackloc split`)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# root="):
        raise CracklocError(f"{path}: not a crackloc split manifest")
    root = Path(lines[0][len("# root="):])
    reader = csv.DictReader(lines[1:])
    if tuple(reader.fieldnames or ()) != FIELDS:
        raise CracklocError(f"{path}: manifest columns must be {','.join(FIELDS)}")
    try:
        rows = [Row(r["path"], int(r["label"]), r["split"], int(r["group"]), r["sha256"], r["phash"])
                for r in reader]
    except (ValueError, TypeError) as exc:
        raise CracklocError(f"{path}: malformed manifest row ({exc})") from None
    bad = {r.split for r in rows} - set(SPLITS)
    if bad:
        raise CracklocError(f"{path}: unknown split names {sorted(bad)}")
    return root, rows


def check_manifest(rows: list[Row], *, max_distance: int = 4) -> dict:
    """Fail loudly if any group, identical file or near duplicate spans two splits.

    Returns counts proving the check ran; raises CracklocError naming the first leak.
    """
    for key, what in ((lambda r: r.group, "group"), (lambda r: r.sha256, "identical file")):
        seen: dict = {}
        for r in rows:
            k = key(r)
            if seen.setdefault(k, r).split != r.split:
                raise CracklocError(f"manifest leaks: {what} {seen[k].path} ({seen[k].split}) and "
                                    f"{r.path} ({r.split})")
            if what == "identical file" and seen[k].label != r.label:
                raise CracklocError(f"manifest labels identical files both ways: {seen[k].path} (label "
                                    f"{seen[k].label}) and {r.path} (label {r.label}); make it again with "
                                    "`crackloc split`")
    pairs = _hamming_pairs([r.phash for r in rows], max_distance)
    for i, j in pairs:
        if rows[i].split != rows[j].split:
            raise CracklocError(f"manifest leaks: near duplicates {rows[i].path} ({rows[i].split}) and "
                                f"{rows[j].path} ({rows[j].split})")
    return {"rows": len(rows), "groups": len({r.group for r in rows}), "near_duplicate_pairs_checked": len(pairs),
            "groups_across_splits": 0}
