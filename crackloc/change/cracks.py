"""Crack change between two crack masks of one surface, both in BEFORE's pixel frame.

Each mask is cut into cracks as `predict --geometry` cuts it (`measure_cracks`: 8-connected
components of at least `min_area` px, length along the skeleton, width by the one definition of
`crackloc.imageops.width`). Then:

- Gaps up to `BRIDGE_PX` px wide do not cut a crack: each mask gets the 1 px skeleton of its
  dilation by a disk added, which runs through such gaps (a thin crack mapped in pieces, or
  resampled by the registration, stays one crack). Widths are averaged over the original mask's
  pixels only, so the bridges add length but no width.
- An AFTER crack whose skeleton lies within `tolerance` px of a BEFORE crack's pixels along at
  least `MATCH_SHARE` of its length is that crack; AFTER cracks that share a BEFORE crack, and
  BEFORE cracks that one AFTER crack joins, are one crack (with the lowest BEFORE id); any other
  AFTER crack is **new**.
- A matched crack has **grown** when its length exceeds that of the BEFORE crack(s) it covers, in
  the part of BEFORE that AFTER shows, by at least `max(GROWN_MIN_PX, GROWN_MIN_SHARE × length before)`, or its mean width along the
  part that was there before rose by at least `WIDENED_MIN_PX`; else it is **unchanged**.
- Where it grew: the AFTER skeleton pixels farther than `tolerance` from every BEFORE crack.
- A BEFORE crack with no AFTER crack within `tolerance` is **no longer visible** (inside the
  part of BEFORE that AFTER shows; outside it, **not in after**).
- New AFTER cracks with gaps up to `NEW_GAP_PX` between them are one new crack (mapped in pieces).
- A change must show in both maps (hysteresis, `FAINT_LEVEL`): an AFTER crack or added part where
  BEFORE's map was already at least `FAINT_LEVEL` is not new, and a BEFORE crack that AFTER's map
  still marks at that level is not gone; both are **unchanged**.

Ids: BEFORE's cracks keep their geometry index (raster order), new cracks are numbered on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.morphology import skeletonize

from crackloc.inference.geometry import Crack, measure_cracks

TOLERANCE_PX = 4.0  # the same crack within this distance after registration
MATCH_SHARE = 0.3  # of an AFTER crack's skeleton near BEFORE cracks: the same crack
GROWN_MIN_PX = 10.0  # added length that counts as growth: at least this, and
GROWN_MIN_SHARE = 0.05  # this share of the length before
WIDENED_MIN_PX = 0.8  # mean width increase that counts as growth (binary masks resampled by a registration
#                       differ by up to about 0.7 px on unchanged cracks)
BRIDGE_PX = 4  # gaps up to this wide are closed before cracks are cut apart
NEW_GAP_PX = 12  # new cracks this close to each other are one new crack mapped in pieces
FAINT_LEVEL = 0.25  # map level below the mask level at which a crack still counts as there (hysteresis)
STATUSES = ("new", "grown", "unchanged", "no longer visible", "not in after")


@dataclass
class CrackChange:
    """One crack of the pair: its status and sizes before and after (px; mm with a scale)."""

    id: int
    status: str  # one of STATUSES
    length_before_px: float
    length_after_px: float
    length_added_px: float
    mean_width_before_px: float
    mean_width_after_px: float
    max_width_before_px: float
    max_width_after_px: float
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) in BEFORE's frame, of both states
    mm_per_px: float | None = None
    added: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), repr=False,
                              compare=False)  # [N,2] (y, x): where it grew
    skeleton: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), repr=False,
                                 compare=False)  # [N,2] (y, x): the crack now (before, when gone)
    plane_scale: tuple[float, float] | None = None  # mm per px (along, across) from BEFORE's marker

    @property
    def width_change_px(self) -> float:
        return self.mean_width_after_px - self.mean_width_before_px

    def to_dict(self) -> dict[str, Any]:
        """JSON/CSV row: px values, and mm values when a scale is known."""
        px = {"length_before": self.length_before_px, "length_after": self.length_after_px,
              "length_added": self.length_added_px, "mean_width_before": self.mean_width_before_px,
              "mean_width_after": self.mean_width_after_px, "max_width_before": self.max_width_before_px,
              "max_width_after": self.max_width_after_px, "width_change": self.width_change_px}
        row: dict[str, Any] = {"id": self.id, "status": self.status}
        row.update({f"{k}_px": round(v, 2) for k, v in px.items()})
        if self.plane_scale is not None:
            along, across = self.plane_scale
            row.update({f"{k}_mm": round(v * (along if k.startswith("length") else across), 3) for k, v in px.items()})
        elif self.mm_per_px is not None:
            row.update({f"{k}_mm": round(v * self.mm_per_px, 3) for k, v in px.items()})
        row["bbox"] = list(self.bbox)
        return row


@dataclass
class ChangeReport:
    """Every crack of a pair, BEFORE's ids first; counts by status."""

    changes: list[CrackChange]
    mm_per_px: float | None = None
    marker: dict | None = None  # BEFORE's marker (`crackloc.inference.plane`): found or not

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"mm_per_px": self.mm_per_px, **({"marker": self.marker} if self.marker is not None else {}),
                "counts": {s: self.count(s) for s in STATUSES},
                "length_added_px": round(sum(c.length_added_px for c in self.changes), 2),
                "cracks": [c.to_dict() for c in self.changes]}


def _box(*skeletons: np.ndarray) -> tuple[int, int, int, int]:
    pts = np.concatenate([s for s in skeletons if len(s)]) if any(len(s) for s in skeletons) else np.zeros((1, 2))
    return int(pts[:, 1].min()), int(pts[:, 0].min()), int(pts[:, 1].max()) + 1, int(pts[:, 0].max()) + 1


def _near(after: list[Crack], near: np.ndarray, owner: np.ndarray, tolerance: float
          ) -> list[tuple[list[int], np.ndarray]]:
    """Each AFTER crack → (the BEFORE labels it lies on, its skeleton's 'near a BEFORE crack' flags)."""
    out = []
    for crack in after:
        ys, xs = crack.skeleton[:, 0], crack.skeleton[:, 1]
        close = near[ys, xs] <= tolerance  # [N]
        labels = sorted(set(owner[ys[close], xs[close]].tolist())) if close.mean() >= MATCH_SHARE else []
        out.append((labels, close))
    return out


def _groups(links: list[list[int]], n_labels: int) -> np.ndarray:
    """Group id of each AFTER crack: AFTER cracks sharing a BEFORE label are one group (connected
    components of the AFTER–BEFORE links; a crack without links is a group of its own)."""
    n = len(links)
    rows = [i for i, labels in enumerate(links) for _ in labels]
    cols = [n + label for labels in links for label in labels]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n + n_labels + 1,) * 2)
    return connected_components(graph, directed=False)[1][:n]


def bridge(mask: np.ndarray) -> np.ndarray:
    """`mask` plus 1 px lines through its gaps up to `BRIDGE_PX` wide: the skeleton of its dilation by
    a disk of radius `BRIDGE_PX` / 2 (bool [H,W] → bool [H,W])."""
    r = BRIDGE_PX // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return mask | skeletonize(ndi.binary_dilation(mask, structure=yy**2 + xx**2 <= r * r))


def _widths_on(crack: Crack, mapped: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The crack's widths (px) at its skeleton pixels (`keep`: bool [N], a part of them) that lie on the
    unbridged mask `mapped` (all of them where none does): → float [M], at least one value."""
    sk, w = crack.skeleton, crack.widths
    if keep is not None:
        sk, w = sk[keep], w[keep]
    on = mapped[sk[:, 0], sk[:, 1]]  # [N]
    out = w[on] if on.any() else w
    return out if out.size else np.array([crack.max_width_px])


def _width_pair(crack: Crack, mapped: np.ndarray) -> tuple[float, float]:
    w = _widths_on(crack, mapped)
    return float(w.mean()), float(w.max())


def compare_masks(before: np.ndarray, after: np.ndarray, *, seen: np.ndarray | None = None,
                  faint_before: np.ndarray | None = None, faint_after: np.ndarray | None = None,
                  mm_per_px: float | None = None, tolerance: float = TOLERANCE_PX,
                  min_area: int = 20) -> ChangeReport:
    """Crack changes from BEFORE's mask to AFTER's (bool [H,W], AFTER registered onto BEFORE's frame).

    Args:
        before, after: Crack masks (map ≥ the mask level) in BEFORE's frame.
        seen: bool [H,W], the part of BEFORE that AFTER shows (default: all of it).
        faint_before, faint_after: bool [H,W], where each map is at least `FAINT_LEVEL` (default: the
            masks). A change must show in both maps: an AFTER crack, or added part, that BEFORE's map
            already marked faintly is not new, and a BEFORE crack that AFTER's map still marks faintly
            has not vanished (both are reported unchanged).
        mm_per_px: BEFORE's scale, to report millimetres too.
        tolerance: px within which an AFTER crack is the BEFORE crack it lies on.
        min_area: Smaller components are noise (as `measure_cracks`).
    """
    mapped_before, mapped_after = np.asarray(before, bool), np.asarray(after, bool)
    before, after = bridge(mapped_before), bridge(mapped_after)
    seen = np.ones_like(before) if seen is None else np.asarray(seen, bool)
    faint_b = before if faint_before is None else before | np.asarray(faint_before, bool)
    faint_a = after if faint_after is None else after | np.asarray(faint_after, bool)
    far_b, far_a = ndi.distance_transform_edt(~faint_b) > tolerance, ndi.distance_transform_edt(~faint_a) > tolerance
    old = measure_cracks(before, min_area=min_area).cracks
    new = measure_cracks(after, min_area=min_area).cracks
    labels, n_labels = ndi.label(before, structure=np.ones((3, 3), bool))  # [H,W] same components as `old`
    label_of = {int(labels[c.skeleton[0, 0], c.skeleton[0, 1]]): c for c in old if len(c.skeleton)}
    near, (iy, ix) = ndi.distance_transform_edt(~before, return_indices=True)  # [H,W] to the nearest crack px
    links = _near(new, near, labels[iy, ix], tolerance)
    links = [([m for m in found if m in label_of], close) for found, close in links]
    group = _groups([found for found, _ in links], n_labels)
    changes, covered, next_id, fresh = {}, set(), len(old) + 1, []
    groups: dict[int, list[int]] = {}  # group → its AFTER cracks, in order of first appearance
    for i, g in enumerate(group.tolist()):
        groups.setdefault(g, []).append(i)
    for members in groups.values():
        was = [label_of[m] for m in sorted({m for i in members for m in links[i][0]}, key=lambda m: label_of[m].index)]
        if not was:  # lies on no BEFORE crack: new, unless BEFORE's map marked it faintly
            for i in members:
                if 1 - _share(new[i], far_b) >= MATCH_SHARE:
                    changes[next_id] = _new(next_id, new[i], _width_pair(new[i], mapped_after), mm_per_px, faint=True)
                    next_id += 1
                else:
                    fresh.append(new[i])
            continue
        covered.update(c.index for c in was)
        sks = [(new[i].skeleton, links[i][1]) for i in members]
        added = np.concatenate([sk[~close & far_b[sk[:, 0], sk[:, 1]]] for sk, close in sks])
        there = np.concatenate([_widths_on(new[i], mapped_after, links[i][1]) for i in members if links[i][1].any()]
                               or [np.zeros(0)])
        shown = sum(c.length_px * _share(c, seen) for c in was)  # BEFORE's length where AFTER could show it
        changes[was[0].index] = _kept([new[i] for i in members], was, shown, added, there, (mapped_before, mapped_after), tolerance,
                                      mm_per_px)
    for piece in _pieces_of_new_cracks(fresh, before.shape):
        changes[next_id] = _new(next_id, piece, _width_pair(piece, mapped_after), mm_per_px)
        next_id += 1
    for crack in (c for c in old if c.index not in covered):
        status = ("unchanged" if 1 - _share(crack, far_a) >= MATCH_SHARE else "no longer visible"
                  if _share(crack, seen) >= 0.5 else "not in after")
        changes[crack.index] = _gone(crack, status, _width_pair(crack, mapped_before), mm_per_px)
    return ChangeReport([changes[k] for k in sorted(changes)], mm_per_px=mm_per_px)


def _pieces_of_new_cracks(cracks: list[Crack], shape: tuple[int, int]) -> list[Crack]:
    """New AFTER cracks with gaps up to `NEW_GAP_PX` between them joined into one crack each (a new crack
    is often mapped in pieces along its line): lengths add up, skeletons and widths are concatenated."""
    if len(cracks) < 2:
        return cracks
    canvas = np.zeros(shape, np.uint8)
    for crack in cracks:
        canvas[crack.skeleton[:, 0], crack.skeleton[:, 1]] = 1
    r = NEW_GAP_PX // 2
    disk = (np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r).astype(np.uint8)
    labels = ndi.label(cv2.dilate(canvas, disk), structure=np.ones((3, 3), bool))[0]  # [H,W]
    groups: dict[int, list[Crack]] = {}
    for crack in cracks:
        groups.setdefault(int(labels[crack.skeleton[0, 0], crack.skeleton[0, 1]]), []).append(crack)
    return [dataclasses.replace(g[0], length_px=sum(c.length_px for c in g), max_width_px=max(c.max_width_px for c in g),
                                skeleton=np.concatenate([c.skeleton for c in g]),
                                widths=np.concatenate([c.widths for c in g])) if len(g) > 1 else g[0]
            for g in groups.values()]


def _new(id_: int, crack: Crack, widths: tuple[float, float], mm_per_px: float | None, *,
         faint: bool = False) -> CrackChange:
    """An AFTER crack on no BEFORE crack: new, or (`faint`: BEFORE's map marked it below the mask level)
    unchanged, its sizes as in AFTER."""
    if faint:
        return _as_it_was(id_, crack, widths, mm_per_px)
    return CrackChange(id_, "new", 0.0, crack.length_px, crack.length_px, 0.0, widths[0], 0.0, widths[1],
                       _box(crack.skeleton), mm_per_px, added=crack.skeleton, skeleton=crack.skeleton)


def _gone(crack: Crack, status: str, widths: tuple[float, float], mm_per_px: float | None) -> CrackChange:
    """A BEFORE crack no AFTER crack lies on: gone (`status`), or unchanged where AFTER's map still marks
    it below the mask level (its sizes as in BEFORE)."""
    if status == "unchanged":
        return _as_it_was(crack.index, crack, widths, mm_per_px)
    return CrackChange(crack.index, status, crack.length_px, 0.0, 0.0, widths[0], 0.0, widths[1], 0.0,
                       _box(crack.skeleton), mm_per_px, skeleton=crack.skeleton)


def _as_it_was(id_: int, crack: Crack, widths: tuple[float, float], mm_per_px: float | None) -> CrackChange:
    """A crack one map marks and the other only faintly: unchanged, the same sizes before and after."""
    return CrackChange(id_, "unchanged", crack.length_px, crack.length_px, 0.0, widths[0], widths[0], widths[1],
                       widths[1], _box(crack.skeleton), mm_per_px, skeleton=crack.skeleton)


def _share(crack: Crack, seen: np.ndarray) -> float:
    """Share of `crack`'s skeleton inside `seen` (1 for an empty skeleton)."""
    return float(seen[crack.skeleton[:, 0], crack.skeleton[:, 1]].mean()) if len(crack.skeleton) else 1.0


def _added_length(added: np.ndarray, now: list[Crack], tolerance: float) -> float:
    """Length (px) of the added skeleton pixels `added` ([N,2] (y, x)): each 8-connected run counts its
    pixels at the crack's own length per skeleton pixel, plus the `tolerance` px next to the old
    crack that the run's start hides (they are near it, so they are not among `added`)."""
    if not len(added):
        return 0.0
    step = sum(c.length_px for c in now) / max(sum(len(c.skeleton) for c in now), 1)  # px per skeleton px
    y0, x0 = added.min(0)
    grid = np.zeros(tuple(added.max(0) - added.min(0) + 1), bool)
    grid[added[:, 0] - y0, added[:, 1] - x0] = True
    runs = ndi.label(grid, structure=np.ones((3, 3), bool))[1]
    return float(len(added) * step + runs * tolerance)


def _kept(now: list[Crack], was: list[Crack], shown: float, added: np.ndarray, widths_there: np.ndarray,
          mapped: tuple[np.ndarray, np.ndarray], tolerance: float, mm_per_px: float | None) -> CrackChange:
    """BEFORE cracks `was` (`shown` px of them inside what AFTER shows) seen again as AFTER cracks `now`:
    grown (longer than `shown`, or wider where they were) or unchanged."""
    length_before, length_after = sum(c.length_px for c in was), sum(c.length_px for c in now)
    along_before = np.concatenate([_widths_on(c, mapped[0]) for c in was])  # [N]
    along_after = np.concatenate([_widths_on(c, mapped[1]) for c in now])  # [M]
    width_before = float(along_before.mean())
    width_now = float(widths_there.mean()) if widths_there.size else float(along_after.mean())
    added_px = _added_length(added, now, tolerance)
    longer = added_px >= max(GROWN_MIN_PX, GROWN_MIN_SHARE * shown) and length_after > shown
    wider = width_now - width_before >= WIDENED_MIN_PX
    skeleton = np.concatenate([c.skeleton for c in now])
    return CrackChange(was[0].index, "grown" if longer or wider else "unchanged", length_before, length_after,
                       added_px if longer else 0.0, width_before, width_now, float(along_before.max()),
                       float(along_after.max()), _box(skeleton, *(c.skeleton for c in was)), mm_per_px,
                       added=added if longer else np.zeros((0, 2), np.int64), skeleton=skeleton)
