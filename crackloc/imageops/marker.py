"""Millimetres from a printed ArUco marker lying on the photographed surface.

A marker of known side S (mm) fixes the homography from image pixels to the surface plane, in
millimetres, with the marker's corners at (0,0), (S,0), (S,S), (0,S). It rectifies the whole
plane, so lengths far from the marker hold too, as long as the surface is flat.

- `parse_marker("aruco:4x4_50:50")` → `MarkerSpec` (dictionary DICT_4X4_50, side 50 mm).
- `find_marker(image, spec)` → `Marker` (the largest of that dictionary) or None.
- `Marker.to_plane`, `length_mm` (polylines), `mm_per_px` (scale along an image direction),
  `mm_per_px_across` (scale of a width across a line, exact for oblique lines under tilt).

Widths: a width w (px) measured along the image normal d of a crack whose image tangent is t is
w·|det J| / |J t| mm in the plane (J: the homography's Jacobian). `mm_per_px` gives |J d|, the
scale along d, which equals it when J d stays perpendicular to J t (a crack along or across the
tilt) and overstates it otherwise: by up to about 5 % for an oblique crack under a 40° tilt.

The corners are refined by fitting lines to the marker's outer edges, so the print needs a light
margin of at least half a cell around its black border (standard prints have a whole cell).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from crackloc.errors import CracklocError

DICTIONARIES = tuple(f"{n}x{n}_{k}" for n in (4, 5, 6, 7) for k in (50, 100, 250, 1000))
DETECT_MAX_SIDE = 1600  # px: larger images are searched at this size, corners refined at full size
_FORM = (
    "expected aruco:<dictionary>:<side mm>, e.g. aruco:4x4_50:50, with dictionary "
    "NxN_K (N 4-7, K 50|100|250|1000) and a positive side"
)
_SPEC = re.compile(r"aruco:(\d+x\d+_\d+):([^:]+)", re.IGNORECASE)


@dataclass(frozen=True)
class MarkerSpec:
    """Which marker to look for: an ArUco dictionary (e.g. "4x4_50") and its printed side (mm)."""

    dictionary: str
    side_mm: float

    @property
    def bits(self) -> int:
        """Cells along one side of the marker's inner pattern (4 for 4x4_50)."""
        return int(self.dictionary.split("x")[0])

    def aruco_dictionary(self) -> cv2.aruco.Dictionary:
        """The cv2.aruco predefined dictionary."""
        return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, f"DICT_{self.dictionary.upper()}"))

    def __str__(self) -> str:
        return f"aruco:{self.dictionary}:{self.side_mm:.10g}"


def parse_marker(spec: str) -> MarkerSpec:
    """Parse "aruco:<dictionary>:<side mm>" (case-insensitive).

    Raises:
        CracklocError: (one line) for any other form, an unknown dictionary or a side that is not
            a positive finite number.
    """
    match = _SPEC.fullmatch(str(spec).strip())
    if match is None or match.group(1).lower() not in DICTIONARIES:
        raise CracklocError(f"bad marker {spec!r}: {_FORM}")
    try:
        side = float(match.group(2))
    except ValueError:
        side = math.nan
    if not (math.isfinite(side) and side > 0):
        raise CracklocError(f"bad marker {spec!r}: {_FORM}")
    return MarkerSpec(match.group(1).lower(), side)


@dataclass(frozen=True, eq=False)
class Marker:
    """A marker found in an image.

    Attributes:
        id: its id in the dictionary.
        corners: float64 [4,2] (x, y) image px, in ArUco order: the printed marker's top-left,
            top-right, bottom-right, bottom-left.
        side_mm: its printed side.
    """

    id: int
    corners: np.ndarray
    side_mm: float

    @cached_property
    def homography(self) -> np.ndarray:
        """float64 [3,3]: image px (x, y, 1) → plane mm (u, v, 1), corners → the S×S square."""
        s = self.side_mm
        square = np.array([[0, 0], [s, 0], [s, s], [0, s]], dtype=np.float64)
        return _four_point_homography(np.asarray(self.corners, dtype=np.float64), square)

    def to_plane(self, points_xy: np.ndarray) -> np.ndarray:
        """Image points float [N,2] (x, y) → plane points float64 [N,2] (u, v) in mm."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        mapped = np.c_[pts, np.ones(len(pts))] @ self.homography.T  # [N,3]
        return mapped[:, :2] / mapped[:, 2:]

    def length_mm(self, polyline_xy: np.ndarray) -> float:
        """Plane length (mm) of an image polyline float [N,2]: the sum of its segments."""
        plane = self.to_plane(polyline_xy)  # [N,2]
        return float(np.linalg.norm(np.diff(plane, axis=0), axis=1).sum())

    def jacobians(self, points_xy: np.ndarray) -> np.ndarray:
        """d(u, v)/d(x, y) of the homography at image points [N,2] → float64 [N,2,2] (mm per px)."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        h = self.homography
        w = pts @ h[2, :2] + h[2, 2]  # [N]
        uv = self.to_plane(pts)  # [N,2]
        # row i of J: (h[i, :2] - uv_i * h[2, :2]) / w
        return (h[None, :2, :2] - uv[:, :, None] * h[None, 2:3, :2]) / w[:, None, None]

    def mm_per_px(self, points_xy: np.ndarray, directions_xy: np.ndarray) -> np.ndarray:
        """Local scale |J(p)·d| (mm per px) along image directions d [N,2] at points p [N,2] → [N].

        Directions are normalised here. A length of n px along d at p is about n·scale mm.
        """
        d = _unit(directions_xy)  # [N,2]
        return np.linalg.norm(np.einsum("nij,nj->ni", self.jacobians(points_xy), d), axis=1)

    def mm_per_px_across(self, points_xy: np.ndarray, normals_xy: np.ndarray) -> np.ndarray:
        """Scale (mm per px) of a width measured along a line's image normal n [N,2] at p [N,2].

        The plane distance between the two edges, |det J| / |J t| with t ⟂ n: unlike `mm_per_px`,
        exact for oblique lines under a tilt (module docstring) → float64 [N].
        """
        n = _unit(normals_xy)  # [N,2]
        t = np.c_[-n[:, 1], n[:, 0]]  # [N,2] the line's image tangent
        jac = self.jacobians(points_xy)  # [N,2,2]
        along = np.linalg.norm(np.einsum("nij,nj->ni", jac, t), axis=1)  # [N]
        return np.abs(np.linalg.det(jac)) / along

    @cached_property
    def mean_mm_per_px(self) -> float:
        """Isotropic scale sqrt(|det J|) (mm per px) at the marker's centre, for display."""
        s = self.side_mm / 2
        centre = np.linalg.solve(self.homography, [s, s, 1.0])  # the diagonals' crossing
        jac = self.jacobians(centre[None, :2] / centre[2])[0]  # [2,2]
        return float(math.sqrt(abs(np.linalg.det(jac))))

    def to_dict(self) -> dict:
        """JSON-ready: id, corners (px, 0.01), side_mm, mean_mm_per_px."""
        return {
            "id": int(self.id),
            "corners": np.round(np.asarray(self.corners, dtype=np.float64), 2).tolist(),
            "side_mm": float(self.side_mm),
            "mean_mm_per_px": round(self.mean_mm_per_px, 6),
        }


def find_marker(image: np.ndarray, spec: MarkerSpec) -> Marker | None:
    """The largest marker of `spec`'s dictionary in uint8 RGB [H,W,3] or grey [H,W], or None.

    Images over DETECT_MAX_SIDE px are searched on a downscaled copy; the corners found are then
    refined at full resolution (cv2.cornerSubPix).
    """
    grey = _grey(image)  # uint8 [H,W]
    scale = min(1.0, DETECT_MAX_SIDE / max(grey.shape))
    small = grey if scale == 1.0 else cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    detector = cv2.aruco.ArucoDetector(spec.aruco_dictionary(), params)
    found, ids, _ = detector.detectMarkers(small)
    ids = np.asarray(ids if ids is not None else [], dtype=np.int64).reshape(-1)  # cv2 4.x [N,1], 5.x [N]
    if len(ids) == 0:
        return None
    quads = [np.asarray(c, dtype=np.float64).reshape(4, 2) for c in found]  # each [4,2] small px
    best = max(range(len(quads)), key=lambda i: abs(cv2.contourArea(quads[i].astype(np.float32))))
    corners = (quads[best] + 0.5) / scale - 0.5  # small px → full px (pixel centres at integers)
    cell = float(np.linalg.norm(corners - np.roll(corners, 1, axis=0), axis=1).min()) / (spec.bits + 2)
    if scale != 1.0:
        half = int(np.clip(round(0.4 * cell), 2, 25))  # the window stays within the black border cell
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 0.01)
        pts = cv2.cornerSubPix(grey, corners.astype(np.float32).reshape(-1, 1, 2), (half, half), (-1, -1), criteria)
        corners = pts.reshape(4, 2).astype(np.float64)
    return Marker(int(ids[best]), _fit_edges(grey, corners, cell), spec.side_mm)


def _fit_edges(grey: np.ndarray, corners: np.ndarray, cell: float) -> np.ndarray:
    """Corners [4,2] as the crossings of lines fitted to the marker's 4 outer edges, at subpixel.

    Along each side, profiles across it (±0.45 cell) give where the dark-to-light step lies;
    a robust line through them uses the whole edge, not a few pixels at the corner. Corners that
    would move over half a cell are kept as they were.
    """
    reach = max(2.0, 0.45 * cell)
    offsets = np.arange(-reach, reach + 1e-6, 0.25, dtype=np.float64)  # [S] px across the edge
    top_left = np.maximum(np.floor(corners.min(axis=0) - reach - 2), 0).astype(int)  # (x, y)
    bottom_right = np.ceil(corners.max(axis=0) + reach + 3).astype(int)
    image = grey[top_left[1]: bottom_right[1], top_left[0]: bottom_right[0]].astype(np.float32)  # around it
    lines = []
    for a, b in zip(corners - top_left, np.roll(corners - top_left, -1, axis=0), strict=True):
        along = (b - a) / np.linalg.norm(b - a)
        out = np.array([along[1], -along[0]])  # outward for clockwise (ArUco) corner order
        count = int(np.clip(np.linalg.norm(b - a) / 2, 8, 64))
        base = a + np.linspace(0.15, 0.85, count)[:, None] * (b - a)  # [K,2]
        xy = (base[:, None] + offsets[None, :, None] * out).astype(np.float32)  # [K,S,2]
        prof = cv2.remap(image, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        edge = _steps(prof.astype(np.float64), offsets)  # [K] offsets (nan where unclear)
        keep = np.isfinite(edge)
        if keep.sum() < 4:
            return corners
        pts = base[keep] + edge[keep, None] * out  # [k,2]
        vx, vy, x0, y0 = cv2.fitLine(pts.astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append(np.cross([x0, y0, 1.0], [x0 + vx, y0 + vy, 1.0]))
    crossings = np.array([np.cross(lines[i - 1], lines[i]) for i in range(4)])  # [4,3]
    refined = crossings[:, :2] / crossings[:, 2:] + top_left
    moved = np.linalg.norm(refined - corners, axis=1)
    return np.where((moved < 0.5 * cell)[:, None], refined, corners)


def _steps(profiles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Where each dark-to-light profile [K,S] (at even offsets [S]) steps up → [K], nan if unclear.

    Read from the area above the dark level: exact for pixel-integrated edges at any phase,
    where the half-level crossing of interpolated pixels is off by up to 0.09 px.
    """
    quarter = max(1, profiles.shape[1] // 4)
    dark, light = profiles[:, :quarter].mean(axis=1), profiles[:, -quarter:].mean(axis=1)  # [K]
    contrast = np.where(light - dark >= 10, light - dark, np.nan)  # [K] grey levels
    rise = (profiles - dark[:, None]) / contrast[:, None]  # [K,S] 0 inside the marker, 1 outside
    area = rise.sum(axis=1) - (rise[:, 0] + rise[:, -1]) / 2  # [K] trapezoid rule, in steps
    edge = offsets[-1] - (offsets[1] - offsets[0]) * area
    return np.where(np.abs(edge) < offsets[-1] / 2, edge, np.nan)


def _grey(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3] or grey [H,W] → contiguous uint8 grey [H,W]."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise CracklocError(f"marker search needs a uint8 [H,W,3] or [H,W] image, got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float [N,2] → unit vectors float64 [N,2]; a zero vector is refused."""
    v = np.asarray(vectors, dtype=np.float64).reshape(-1, 2)
    norm = np.linalg.norm(v, axis=1, keepdims=True)  # [N,1]
    if np.any(norm == 0):
        raise ValueError("directions must be non-zero")
    return v / norm


def _four_point_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The exact homography float64 [3,3] taking 4 points src [4,2] to dst [4,2] (h33 = 1).

    src is centred and scaled to about ±1 first, so that the 8×8 system is well conditioned.
    """
    centre, size = src.mean(axis=0), float(np.abs(src - src.mean(axis=0)).max()) or 1.0
    norm = np.array([[1 / size, 0, -centre[0] / size], [0, 1 / size, -centre[1] / size], [0, 0, 1]])
    rows, rhs = [], []
    for (x, y), (u, v) in zip((src - centre) / size, dst, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    h = np.append(np.linalg.solve(np.array(rows), np.array(rhs)), 1.0).reshape(3, 3) @ norm
    return h / h[2, 2]
