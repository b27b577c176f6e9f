"""Crack geometry from a binary crack mask: length, width, orientation, box per crack.

This is the edge of the pipeline, so it works on numpy arrays with scikit-image/scipy.

Conventions (all in pixels; millimetres too when `mm_per_px` is given):
- A crack is one 8-connected component of the mask with at least `min_area` pixels.
- **Length** follows the skeleton (`skimage.morphology.skeletonize`). The skeleton is cut at
  its junctions into simple pixel chains; each chain is ordered, simplified with
  Douglas–Peucker (`skimage.measure.approximate_polygon`, tolerance 1 px) and measured as a
  polyline, which removes the staircase bias of counting 1/√2 pixel steps (up to +8 % at
  22.5°). Junction pixels are joined by their minimum spanning tree. Thinning stops about
  half a width short of each free tip, so each tip adds its distance to the crack
  boundary (EDT − ½). A straight bar measures its full extent (a 200×5 bar → ≈ 200).
- **Width** is `crackloc.imageops.width.local_width_map` (the one definition, documented
  there: twice the distance to the crack's edge, a 5 px bar gives 5) read on the skeleton;
  mean and max are over the skeleton pixels.
- **Orientation** is the major axis of the crack's pixels (`regionprops.orientation`), in
  degrees from the image's horizontal axis, counter-clockwise as seen on screen, in
  (−90, 90]: 0 = horizontal, 90 = vertical, +45 = rising to the right.
- **Bounding box** `(x0, y0, x1, y1)`: x1, y1 exclusive (slice convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from skimage.measure import approximate_polygon, label, regionprops
from skimage.morphology import skeletonize

from crackloc.errors import CracklocError
from crackloc.imageops.width import local_width_map

POLY_TOLERANCE = 1.0  # Douglas–Peucker tolerance (px) for skeleton chains
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.uint8)


@dataclass
class Crack:
    """One crack (a connected component of the mask). Lengths/widths in px; `*_mm` need a scale."""

    index: int  # 1-based, in raster order of the component's first pixel
    area_px: int
    length_px: float
    mean_width_px: float
    max_width_px: float
    orientation_deg: float  # from horizontal, counter-clockwise on screen, (−90, 90]
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive
    mm_per_px: float | None = None
    skeleton: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), repr=False,
                                 compare=False)  # [N,2] (y, x) skeleton pixels, for drawing
    plane_scale: tuple[float, float] | None = None  # mm per px (along, across) from a marker (`crackloc.inference.plane`)
    widths: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False,
                               compare=False)  # [N] the width (px) at each skeleton pixel

    def _mm(self, px: float, *, across: int = 0, along: int = 1) -> float | None:
        if self.plane_scale is not None:
            return px * self.plane_scale[0] ** along * self.plane_scale[1] ** across
        return None if self.mm_per_px is None else px * self.mm_per_px ** (along + across)

    @property
    def scaled(self) -> bool:
        return self.mm_per_px is not None or self.plane_scale is not None

    @property
    def length_mm(self) -> float | None:
        return self._mm(self.length_px)

    @property
    def mean_width_mm(self) -> float | None:
        return self._mm(self.mean_width_px, along=0, across=1)

    @property
    def max_width_mm(self) -> float | None:
        return self._mm(self.max_width_px, along=0, across=1)

    @property
    def area_mm2(self) -> float | None:
        return self._mm(self.area_px, across=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (no skeleton pixels); mm keys only with a scale."""
        d: dict[str, Any] = {
            "index": self.index, "area_px": self.area_px, "length_px": round(self.length_px, 3),
            "mean_width_px": round(self.mean_width_px, 3), "max_width_px": round(self.max_width_px, 3),
            "orientation_deg": round(self.orientation_deg, 2), "bbox": list(self.bbox),
        }
        if self.scaled:
            d.update(length_mm=round(self.length_mm, 4), mean_width_mm=round(self.mean_width_mm, 4),
                     max_width_mm=round(self.max_width_mm, 4), area_mm2=round(self.area_mm2, 4))
        return d


@dataclass
class CrackReport:
    """All cracks of one image and their totals."""

    cracks: list[Crack]
    height: int
    width: int
    mm_per_px: float | None = None
    min_area: int = 20
    marker: dict | None = None  # the marker that gave the cracks' plane scales (`crackloc.inference.plane`)

    @property
    def count(self) -> int:
        return len(self.cracks)

    @property
    def total_length_px(self) -> float:
        return float(sum(c.length_px for c in self.cracks))

    @property
    def max_width_px(self) -> float:
        return max((c.max_width_px for c in self.cracks), default=0.0)

    @property
    def crack_area_px(self) -> int:
        return int(sum(c.area_px for c in self.cracks))

    @property
    def area_fraction(self) -> float:
        """Crack pixels (kept cracks only) / image pixels."""
        return self.crack_area_px / max(self.height * self.width, 1)

    @property
    def on_plane(self) -> bool:
        """Whether each crack has its own scale from a marker that was found."""
        return bool(self.marker and self.marker.get("found"))

    @property
    def scaled(self) -> bool:
        return self.mm_per_px is not None or self.on_plane

    @property
    def total_length_mm(self) -> float | None:
        if self.on_plane:  # each crack has its own scale on the plane
            return float(sum(c.length_mm or 0.0 for c in self.cracks))
        return None if self.mm_per_px is None else self.total_length_px * self.mm_per_px

    @property
    def max_width_mm(self) -> float | None:
        if self.on_plane:
            return max((c.max_width_mm or 0.0 for c in self.cracks), default=0.0)
        return None if self.mm_per_px is None else self.max_width_px * self.mm_per_px

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary: image size, scale, totals, and one dict per crack."""
        d: dict[str, Any] = {
            "height": self.height, "width": self.width, "mm_per_px": self.mm_per_px,
            "min_area": self.min_area, "count": self.count,
            "total_length_px": round(self.total_length_px, 3), "max_width_px": round(self.max_width_px, 3),
            "crack_area_px": self.crack_area_px, "area_fraction": round(self.area_fraction, 6),
        }
        if self.marker is not None:
            d["marker"] = self.marker
        if self.scaled:
            d.update(total_length_mm=round(self.total_length_mm, 4), max_width_mm=round(self.max_width_mm, 4))
        d["cracks"] = [c.to_dict() for c in self.cracks]
        return d


def _as_mask(mask: Any) -> np.ndarray:
    """bool/int/float {0,1} array or tensor, [H,W] (or [1,H,W]) → bool [H,W]."""
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise CracklocError(f"measure_cracks: expected a mask [H,W], got shape {tuple(np.shape(mask))}")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and not np.isin(arr, (0.0, 1.0)).all():
        raise CracklocError("measure_cracks: float mask must hold only 0 and 1 (threshold the heatmap first)")
    return arr != 0


def _neighbour_count(binary: np.ndarray) -> np.ndarray:
    """Number of 8-neighbours set, for set pixels (0 elsewhere): bool [H,W] → int [H,W]."""
    return ndi.convolve(binary.astype(np.uint8), _RING, mode="constant") * binary


def _order_chain(coords: np.ndarray, degree: dict[tuple[int, int], int]) -> list[tuple[int, int]]:
    """Order the pixels of a simple chain (path or loop) from one end to the other."""
    todo = {(int(y), int(x)) for y, x in coords}
    ends = [p for p in todo if degree[p] <= 1]
    start = min(ends) if ends else min(todo)
    path, cur = [start], start
    todo.discard(start)
    while todo:
        nxt = next(((cur[0] + dy, cur[1] + dx) for dy, dx in _NEIGHBOURS
                    if (cur[0] + dy, cur[1] + dx) in todo), None)
        if nxt is None:
            break
        path.append(nxt)
        todo.discard(nxt)
        cur = nxt
    if not ends and len(path) > 2:
        path.append(start)  # close the loop
    return path


def _junction_neighbour(p: tuple[int, int], junction: np.ndarray, avoid: tuple[int, int] | None
                        ) -> tuple[int, int] | None:
    """A junction pixel next to p (axial first), other than `avoid`."""
    h, w = junction.shape
    for dy, dx in sorted(_NEIGHBOURS, key=lambda o: abs(o[0]) + abs(o[1])):
        q = (p[0] + dy, p[1] + dx)
        if 0 <= q[0] < h and 0 <= q[1] < w and junction[q] and q != avoid:
            return q
    return None


def _polyline_length(points: list[tuple[int, int]]) -> float:
    """Length of a pixel chain after Douglas–Peucker simplification."""
    if len(points) < 2:
        return 0.0
    poly = approximate_polygon(np.asarray(points, dtype=float), tolerance=POLY_TOLERANCE)
    return float(np.hypot(*np.diff(poly, axis=0).T).sum())


def _chain_lengths(skel: np.ndarray, junction: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Summed polyline length of the skeleton chains of each component: → [n+1] (index = label)."""
    out = np.zeros(n + 1)
    chains = skel & ~junction
    chain_lab, n_chains = label(chains, connectivity=2, return_num=True)
    if n_chains == 0:
        return out
    ys, xs = np.nonzero(chain_lab)
    deg_arr = _neighbour_count(chains)
    degree = {(int(y), int(x)): int(deg_arr[y, x]) for y, x in zip(ys, xs, strict=True)}
    order = np.argsort(chain_lab[ys, xs], kind="stable")
    groups = np.split(np.stack([ys, xs], 1)[order], np.cumsum(np.bincount(chain_lab[ys, xs])[1:])[:-1])
    for coords in groups:
        path = _order_chain(coords, degree)
        head = _junction_neighbour(path[0], junction, None)
        tail = _junction_neighbour(path[-1], junction, head if len(path) == 1 else None)
        path = ([head] if head else []) + path + ([tail] if tail else [])
        out[labels[path[1] if head else path[0]]] += _polyline_length(path)
    return out


def _junction_lengths(junction: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Minimum-spanning-tree length of adjacent junction pixels, per component: → [n+1]."""
    out = np.zeros(n + 1)
    ys, xs = np.nonzero(junction)
    if len(ys) < 2:
        return out
    index = np.full(junction.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(len(ys))
    rows, cols, weights = [], [], []
    h, w = junction.shape
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ny, nx = ys + dy, xs + dx
        ok = (ny < h) & (nx >= 0) & (nx < w)
        ok[ok] = index[ny[ok], nx[ok]] >= 0
        rows.append(index[ys[ok], xs[ok]])
        cols.append(index[ny[ok], nx[ok]])
        weights.append(np.full(int(ok.sum()), math.hypot(dy, dx)))
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(len(ys), len(ys)))
    tree = minimum_spanning_tree(graph).tocoo()
    np.add.at(out, labels[ys[tree.row], xs[tree.row]], tree.data)
    return out


def _skeleton_lengths(skel: np.ndarray, dist: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Length of each component's skeleton, tips extended to the boundary: → [n+1]."""
    degree = _neighbour_count(skel)
    junction = skel & (degree >= 3)
    lengths = _chain_lengths(skel, junction, labels, n) + _junction_lengths(junction, labels, n)
    tips = skel & (degree <= 1)  # a lone pixel (degree 0) is a tip at both ends
    tip_ext = np.maximum(dist - 0.5, 0.0) * np.where(degree == 0, 2, 1)
    lengths += np.bincount(labels[tips], weights=tip_ext[tips], minlength=n + 1)
    return lengths


def _ring_box(box: tuple[slice, slice], shape: tuple[int, int]) -> tuple[slice, slice]:
    """A crack's bounding box grown by 1 px (clipped to the image).

    Skeleton, distances and widths of a crack depend only on its pixels and the background
    ring around them, so each crack is measured on this crop: the cost grows with the crack
    area, not the photo size, and the result equals the whole-image computation.
    """
    (y, x), (h, w) = box, shape
    return slice(max(y.start - 1, 0), min(y.stop + 1, h)), slice(max(x.start - 1, 0), min(x.stop + 1, w))


def _components(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, list[tuple[int, tuple[slice, slice], int]]]:
    """8-connected components of the mask and the ones with ≥ min_area pixels.

    Returns:
        labels int [H,W] (0 = background, all components) and, in raster order of each
        component's first pixel, (label, bounding box, area) of the kept ones. Small
        components are skipped, not relabelled: nothing else touches the whole image.
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))  # raster order of first pixel
    area = np.bincount(labels[mask], minlength=n + 1)  # [n+1], counts only the crack pixels
    return labels, [(i, box, int(area[i])) for i, box in enumerate(ndi.find_objects(labels), start=1)
                    if area[i] >= min_area]


def _orientation_deg(orientation_rad: float) -> float:
    """skimage orientation (row axis → major axis) → degrees from horizontal, in (−90, 90]."""
    deg = math.degrees(orientation_rad) + 90.0  # [0, 180]
    return deg - 180.0 if deg > 90.0 else deg


def measure_cracks(mask: Any, *, mm_per_px: float | None = None, min_area: int = 20) -> CrackReport:
    """Measure every crack of a binary mask.

    Args:
        mask: bool [H,W] (numpy or torch; int masks are read as `mask != 0`, float masks
            must hold only 0/1 — threshold a heatmap first).
        mm_per_px: Image scale; when given, millimetre values are reported too.
        min_area: Components with fewer pixels are dropped (noise).

    Returns:
        A `CrackReport` (cracks in raster order of their first pixel, and totals).
    """
    if mm_per_px is not None and not (math.isfinite(mm_per_px) and mm_per_px > 0):
        raise CracklocError(f"mm_per_px must be a positive number, got {mm_per_px!r}")
    if min_area < 0:
        raise CracklocError(f"min_area must be ≥ 0, got {min_area}")
    m = _as_mask(mask)  # [H,W] bool
    labels, kept = _components(m, min_area)  # [H,W] int, 0 = background
    cracks = [_measure_one(labels, label_, box, area, index=index, mm_per_px=mm_per_px)
              for index, (label_, box, area) in enumerate(kept, start=1)]
    return CrackReport(cracks, *m.shape, mm_per_px=mm_per_px, min_area=min_area)


def _measure_one(labels: np.ndarray, label_: int, box: tuple[slice, slice], area: int, *, index: int,
                 mm_per_px: float | None) -> Crack:
    """Component `label_` as crack number `index`, measured on its box grown by 1 px (`_ring_box`)."""
    ys, xs = _ring_box(box, labels.shape)
    comp = labels[ys, xs] == label_  # [h',w'] this crack alone, 1-px ring around it
    dist = ndi.distance_transform_edt(comp)  # [h',w'] distance to nearest background pixel
    skel = skeletonize(comp)
    length = _skeleton_lengths(skel, dist, comp.astype(np.int32), 1)[1]
    width = local_width_map(comp)  # [h',w'], 0 outside the crack
    on_skeleton = width[skel & comp]  # [N]
    w = on_skeleton if on_skeleton.size else np.array([width[comp].max()])  # no skeleton: the widest point
    sk = np.argwhere(skel & comp) + np.array([ys.start, xs.start])
    (y0, y1), (x0, x1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
    orientation = regionprops(comp.astype(np.uint8))[0].orientation  # central moments: crop-invariant
    return Crack(index=index, area_px=area, length_px=float(length), mean_width_px=float(w.mean()),
                 max_width_px=float(w.max()), orientation_deg=_orientation_deg(orientation),
                 bbox=(int(x0), int(y0), int(x1), int(y1)), mm_per_px=mm_per_px, skeleton=sk,
                 widths=on_skeleton)


def _label_text(crack: Crack) -> str:
    if crack.mm_per_px is not None:
        return f"#{crack.index} L={crack.length_mm:.1f}mm W={crack.max_width_mm:.2f}mm"
    return f"#{crack.index} L={crack.length_px:.0f}px W={crack.max_width_px:.1f}px"


def draw_geometry(overlay_rgb: np.ndarray, report: CrackReport, *,
                  skeleton_color: tuple[int, int, int] = (255, 255, 0),
                  box_color: tuple[int, int, int] = (0, 200, 255)) -> np.ndarray:
    """Draw each crack's skeleton, bounding box and a short label on a copy of the image.

    Args:
        overlay_rgb: uint8 [H,W,3] image (e.g. the heatmap overlay), same size as the mask.
        report: From `measure_cracks`.
        skeleton_color, box_color: RGB colours.

    Returns:
        uint8 [H,W,3], a new array.
    """
    img = np.asarray(overlay_rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise CracklocError(f"draw_geometry: expected uint8 [H,W,3], got {img.dtype} {img.shape}")
    if img.shape[:2] != (report.height, report.width):
        raise CracklocError(f"draw_geometry: image is {img.shape[1]}x{img.shape[0]}, "
                            f"report is {report.width}x{report.height}")
    out = img.copy()
    for c in report.cracks:
        out[c.skeleton[:, 0], c.skeleton[:, 1]] = skeleton_color
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for c in report.cracks:
        x0, y0, x1, y1 = c.bbox
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=box_color, width=1)
        text = _label_text(c)
        tx, ty = x0, y0 - 11 if y0 >= 11 else min(y1 + 1, max(report.height - 11, 0))
        left, top, right, bottom = draw.textbbox((tx, ty), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((tx, ty), text, fill=box_color)
    return np.asarray(pil, dtype=np.uint8).copy()
