"""Synthetic inspection campaigns: a BEFORE photo, a later AFTER photo of the same surface taken
from elsewhere, and the truth between them.

The surface is tiled from crack-free concrete patches (e.g. Özgenel negatives) or made in code.
Cracks are polylines in BEFORE's pixel frame; AFTER sees the same surface with some cracks
extended, widened or added, through a known homography (rotation, scale, perspective), in other
light (brightness, gamma, white balance, a lighting gradient) and recompressed as JPEG.
numpy + OpenCV only (no torch), so registration tests and benchmarks stay light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

CHANGES = ("unchanged", "extended", "widened", "new", "mixed")
STEP_PX = 5.0  # polyline segment length


@dataclass(frozen=True, eq=False)
class Crack:
    """A crack: a polyline `points` [N,2] float (x, y) px, drawn `width` px wide, darkening by `depth`."""

    points: np.ndarray
    width: float
    depth: float = 0.6

    @property
    def length(self) -> float:
        """Polyline length (px)."""
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


@dataclass(frozen=True)
class CrackChange:
    """The truth for one crack id: status ("new", "grown" or "unchanged"), the length added (px; a new
    crack's whole length) and the width change (px)."""

    id: int
    status: str
    added_length_px: float = 0.0
    width_change_px: float = 0.0


@dataclass(frozen=True, eq=False)
class CampaignPair:
    """One synthetic pair and its truth; crack lists are in BEFORE's frame, index = crack id."""

    before: np.ndarray  # [H,W,3] uint8 RGB
    after: np.ndarray  # [h,w,3] uint8 RGB
    homography: np.ndarray  # [3,3] float64: AFTER px -> BEFORE px
    cracks_before: list[Crack]
    cracks_after: list[Crack]
    changes: list[CrackChange]
    change: str
    region: np.ndarray = field(repr=False)  # [H,W] bool: BEFORE pixels AFTER sees, with a margin


# ---- surfaces -----------------------------------------------------------------------------------


def concrete_surface(rng: np.random.Generator, shape: tuple[int, int], *,
                     patches: list[np.ndarray] | None = None) -> np.ndarray:
    """A crack-free concrete surface [H,W,3] uint8 RGB.

    Tiled from `patches` (uint8 RGB, randomly rotated and flipped, seams feathered, colours pulled
    towards a common mean) or, when `patches` is None, a synthetic texture (multi-scale noise, pores).
    """
    return _tiled(rng, shape, patches) if patches else _synthetic(rng, shape)


def _tiled(rng: np.random.Generator, shape: tuple[int, int], patches: list[np.ndarray]) -> np.ndarray:
    h, w = shape
    p = min(min(t.shape[:2]) for t in patches)
    overlap = max(p // 6, 2)
    step = p - overlap
    ramp = np.minimum(np.arange(p) + 1, np.arange(p)[::-1] + 1).clip(max=overlap + 1) / (overlap + 1)
    win = np.outer(ramp, ramp).astype(np.float32)[..., None]  # [p,p,1] feathered weights
    ys, xs = range(0, max(h - overlap, 1), step), range(0, max(w - overlap, 1), step)
    picks = rng.choice(len(patches), size=len(ys) * len(xs), replace=len(ys) * len(xs) > len(patches))
    target = np.mean([t.reshape(-1, 3).mean(0) for t in patches[:64]], axis=0)
    acc = np.zeros((ys[-1] + p, xs[-1] + p, 3), np.float32)
    weight = np.zeros((ys[-1] + p, xs[-1] + p, 1), np.float32)
    for k, (y, x) in enumerate((y, x) for y in ys for x in xs):
        tile = np.rot90(patches[picks[k]][:p, :p], int(rng.integers(4))).astype(np.float32)
        tile = tile[:, ::-1] if rng.random() < 0.5 else tile
        tile = tile + 0.7 * (target - tile.reshape(-1, 3).mean(0))
        acc[y:y + p, x:x + p] += tile * win
        weight[y:y + p, x:x + p] += win
    return np.clip(acc / weight, 0, 255)[:h, :w].round().astype(np.uint8)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-blurred noise [H,W] float32 (made coarse and upsampled for large sigma)."""
    h, w = shape
    down = max(1, int(sigma // 3))
    n = rng.standard_normal((h // down + 2, w // down + 2)).astype(np.float32)
    if sigma > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma / down)
    if down > 1:
        n = cv2.resize(n, (w + 2 * down, h + 2 * down), interpolation=cv2.INTER_CUBIC)
    n = n[:h, :w]
    return n / (n.std() + 1e-6)


def _synthetic(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    grey = 0.58 + sum(a * _noise(rng, shape, s) for s, a in ((40, 0.06), (10, 0.04), (2.5, 0.035), (0, 0.02)))
    spots = np.zeros((h, w), np.float32)  # pores (dark) and aggregate (light), sub-pixel anti-aliased
    for _ in range(int(h * w / 900)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.choice([rng.uniform(0.8, 2.5), rng.uniform(2.5, 6.0)], p=[0.8, 0.2])
        v = -rng.uniform(0.15, 0.4) if rng.random() < 0.7 else rng.uniform(0.05, 0.15)
        cv2.circle(spots, (round(x * 16), round(y * 16)), round(r * 16), float(v), -1, cv2.LINE_AA, 4)
    grey = grey * (1 + spots)
    tint = np.array([1.0, 0.97, 0.92], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    return np.clip(grey[..., None] * tint * 255, 0, 255).round().astype(np.uint8)


# ---- cracks -------------------------------------------------------------------------------------


def _segment_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points (px, py) to the segment a-b."""
    d = b - a
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return np.hypot(px - a[0] - t * d[0], py - a[1] - t * d[1])


def crack_distance(shape: tuple[int, int], crack: Crack) -> np.ndarray:
    """Distance (px) of every pixel to the crack's polyline [H,W] float32 (inf far from it)."""
    h, w = shape
    dist = np.full((h, w), np.inf, np.float32)
    r = crack.width / 2 + 2
    for a, b in zip(crack.points[:-1], crack.points[1:], strict=True):
        x0, x1 = max(int(min(a[0], b[0]) - r), 0), min(int(max(a[0], b[0]) + r) + 2, w)
        y0, y1 = max(int(min(a[1], b[1]) - r), 0), min(int(max(a[1], b[1]) + r) + 2, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        np.minimum(dist[y0:y1, x0:x1], _segment_distance(xx, yy, a, b), out=dist[y0:y1, x0:x1])
    return dist


def draw_cracks(surface: np.ndarray, cracks: list[Crack]) -> tuple[np.ndarray, np.ndarray]:
    """Darken `surface` [H,W,3] uint8 along each crack (anti-aliased): → (image uint8, mask [H,W] bool).

    The mask is the band within width/2 px of the polyline (at least the nearest pixel).
    """
    h, w = surface.shape[:2]
    dark = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), bool)
    for crack in cracks:
        dist = crack_distance((h, w), crack)
        coverage = np.clip(crack.width / 2 + 0.5 - dist, 0, 1)  # [H,W] pixel coverage
        dark = np.maximum(dark, crack.depth * coverage)
        mask |= dist <= max(crack.width / 2, 0.5)
    dark = cv2.GaussianBlur(dark, (0, 0), 0.6)
    image = surface.astype(np.float32) * (1 - dark[..., None])
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, steps: int,
          free: np.ndarray) -> np.ndarray:
    """Up to `steps` smooth random steps of STEP_PX from `start` while on `free` pixels: → [n,2]."""
    pts, a = [start], angle
    for _ in range(steps):
        a += rng.normal(0, 0.12)
        p = pts[-1] + STEP_PX * np.array([math.cos(a), math.sin(a)])
        x, y = int(round(p[0])), int(round(p[1]))
        if not (0 <= y < free.shape[0] and 0 <= x < free.shape[1] and free[y, x]):
            break
        pts.append(p)
    return np.array(pts[1:]).reshape(-1, 2)


def _free(region: np.ndarray, cracks: list[Crack], *, clearance: int = 15) -> np.ndarray:
    """`region` minus a band of `clearance` px around the cracks."""
    near = np.zeros(region.shape, np.uint8)
    for c in cracks:
        cv2.polylines(near, [c.points.round().astype(np.int32)], False, 1, 2 * clearance + int(c.width))
    return region & (near == 0)


def random_crack(rng: np.random.Generator, free: np.ndarray, *, min_length: float,
                 max_length: float, tries: int = 50) -> Crack | None:
    """A random smooth crack inside `free` [H,W] bool, `min_length`..`max_length` px long, or None."""
    ys, xs = np.nonzero(free)
    for _ in range(tries if len(xs) else 0):
        k = int(rng.integers(len(xs)))
        start = np.array([xs[k], ys[k]], float)
        pts = _walk(rng, start, rng.uniform(0, 2 * math.pi), int(max_length // STEP_PX), free)
        if len(pts) * STEP_PX >= min_length:
            return Crack(np.vstack([start, pts]), float(rng.uniform(1.0, 4.0)), float(rng.uniform(0.45, 0.7)))
    return None


def _extend(rng: np.random.Generator, cracks: list[Crack], k: int, free: np.ndarray,
            length: float) -> Crack | None:
    """Crack k extended at a random end along its direction by exactly `length` px, or None."""
    pts = cracks[k].points
    if rng.random() < 0.5:
        pts = pts[::-1]
    d = pts[-1] - pts[-2]
    steps = int(round(length / STEP_PX))
    ext = _walk(rng, pts[-1], math.atan2(d[1], d[0]), steps, _free(free, cracks[:k] + cracks[k + 1:]))
    return Crack(np.vstack([pts, ext]), cracks[k].width, cracks[k].depth) if len(ext) == steps else None


def edit_cracks(rng: np.random.Generator, cracks: list[Crack], change: str, region: np.ndarray,
                *, extend_px: tuple[float, float] = (40, 200)) -> tuple[list[Crack], list[CrackChange]]:
    """AFTER's cracks (BEFORE frame, same ids, new ones appended) and the truth per id."""
    if change not in CHANGES:
        raise ValueError(f"change must be one of {CHANGES}, not {change!r}")
    out = list(cracks)
    truth = [CrackChange(i, "unchanged") for i in range(len(cracks))]
    order = [int(i) for i in rng.permutation(len(cracks))]
    if change in ("extended", "mixed"):
        for _ in range(40):
            k, length = order[0], STEP_PX * int(rng.uniform(*extend_px) // STEP_PX)
            grown = _extend(rng, out, k, region, length)
            if grown is not None:
                out[k], truth[k] = grown, CrackChange(k, "grown", added_length_px=length)
                break
            order = order[1:] + order[:1]
            extend_px = (extend_px[0], max(extend_px[0], 0.9 * extend_px[1]))
        else:
            raise RuntimeError("no room to extend a crack; use a larger shape")
    if change in ("widened", "mixed"):
        k = order[-1] if change == "mixed" else order[0]
        dw = float(rng.uniform(1.0, 3.0))
        out[k] = Crack(out[k].points, out[k].width + dw, out[k].depth)
        truth[k] = CrackChange(k, "grown", truth[k].added_length_px, width_change_px=dw)
    if change in ("new", "mixed"):
        side = min(region.shape)
        new = random_crack(rng, _free(region, out), min_length=0.2 * side, max_length=0.5 * side)
        if new is None:
            raise RuntimeError("no room for a new crack; use a larger shape")
        truth.append(CrackChange(len(out), "new", added_length_px=new.length))
        out.append(new)
    return out, truth


# ---- the second view ----------------------------------------------------------------------------


def _translate(x: float, y: float) -> np.ndarray:
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1]], float)


def random_view(rng: np.random.Generator, shape: tuple[int, int], *, max_rotation_deg: float = 20,
                scale: tuple[float, float] = (0.7, 1.4), perspective: float = 1e-4
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """A random second view of a BEFORE of `shape`: (homography AFTER px -> BEFORE px, AFTER shape).

    `scale` is BEFORE px per AFTER px; AFTER's canvas covers about the same area as BEFORE.
    """
    h, w = shape
    s = rng.uniform(*scale)
    t = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    zoom = rng.uniform(0.85, 1.1)
    ah, aw = (max(int(round(n / s * zoom * rng.uniform(0.97, 1.03))), 8) for n in (h, w))
    rs = np.array([[s * math.cos(t), -s * math.sin(t), 0], [s * math.sin(t), s * math.cos(t), 0], [0, 0, 1]])
    persp = np.eye(3)
    persp[2, :2] = rng.uniform(-perspective, perspective, 2)
    shift = rng.uniform(-0.06, 0.06, 2) * (w, h)
    centre = _translate((w - 1) / 2 + shift[0], (h - 1) / 2 + shift[1])
    hom = centre @ persp @ rs @ _translate(-(aw - 1) / 2, -(ah - 1) / 2)
    return hom / hom[2, 2], (ah, aw)


def _corners(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def seen_region(homography: np.ndarray, shape: tuple[int, int], after_shape: tuple[int, int], *,
                margin: int = 0) -> np.ndarray:
    """BEFORE pixels [H,W] bool inside AFTER's warped canvas and `margin` px from both borders."""
    quad = cv2.perspectiveTransform(_corners(after_shape)[None], homography)[0]
    region = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(region, np.round(quad * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    region[[0, -1], :] = 0
    region[:, [0, -1]] = 0
    if margin > 0:
        region = cv2.erode(region, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * margin + 1,) * 2))
    return region.astype(bool)


def relight(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Other light: brightness, gamma, white balance, a linear lighting gradient and sensor noise."""
    h, w = image.shape[:2]
    x = (image.astype(np.float32) / 255) ** rng.uniform(0.75, 1.35)
    gains = rng.uniform(0.75, 1.2) * rng.uniform(0.9, 1.1, 3)
    g = rng.uniform(-0.1, 0.1, 2)
    ramp = 1 + g[0] * np.linspace(-1, 1, w)[None, :] + g[1] * np.linspace(-1, 1, h)[:, None]  # [H,W]
    x = x * gains.astype(np.float32) * ramp[..., None].astype(np.float32)
    x += rng.normal(0, 1.5 / 255, x.shape).astype(np.float32)
    return np.clip(x * 255, 0, 255).round().astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """`image` [H,W,3] uint8 RGB after a JPEG round trip at `quality`."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def make_pair(rng: np.random.Generator, *, shape: tuple[int, int] = (900, 1200),
              patches: list[np.ndarray] | None = None, change: str = "mixed") -> CampaignPair:
    """A synthetic BEFORE/AFTER pair with 2-4 cracks, `change` applied (see `CHANGES`), and the truth.

    All cracks (before and after the edits) lie where both photos see the surface.
    """
    h, w = shape
    hom, after_shape = random_view(rng, shape)
    quad = cv2.perspectiveTransform(_corners(after_shape)[None], hom)[0]  # [4,2] AFTER's canvas on BEFORE
    left, top = (int(max(0.0, -v)) + 4 for v in quad.min(0))
    right, bottom = (int(max(0.0, v - (n - 1))) + 4 for v, n in zip(quad.max(0), (w, h), strict=True))
    world = concrete_surface(rng, (h + top + bottom, w + left + right), patches=patches)
    region = seen_region(hom, shape, after_shape, margin=max(12, min(shape) // 25))
    cracks: list[Crack] = []
    side = min(shape)
    for _ in range(int(rng.integers(2, 5))):
        crack = random_crack(rng, _free(region, cracks), min_length=0.25 * side, max_length=0.6 * side)
        cracks += [crack] if crack is not None else []
    if len(cracks) < 2:
        raise RuntimeError(f"no room for two cracks in a {h}x{w} BEFORE; use a larger shape")
    edited, truth = edit_cracks(rng, cracks, change, region)
    shift = np.array([left, top], float)
    before = draw_cracks(world, [Crack(c.points + shift, c.width, c.depth) for c in cracks])[0]
    before = jpeg(before[top:top + h, left:left + w], int(rng.integers(88, 96)))
    world_after = draw_cracks(world, [Crack(c.points + shift, c.width, c.depth) for c in edited])[0]
    s = math.sqrt(abs(np.linalg.det(hom[:2, :2])))  # BEFORE px per AFTER px
    if s > 1:  # AFTER sees the surface coarser: blur before sampling, as a lens would
        world_after = cv2.GaussianBlur(world_after, (0, 0), 0.5 * math.sqrt(s * s - 1))
    after = cv2.warpPerspective(world_after, _translate(left, top) @ hom, after_shape[::-1],
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    after = jpeg(relight(rng, after), int(rng.integers(70, 91)))
    return CampaignPair(before, after, hom, cracks, edited, truth, change, region)


def homography_rms(h_est: np.ndarray, h_true: np.ndarray, shape: tuple[int, int], *,
                   before_shape: tuple[int, int] | None = None, step: int = 8) -> float:
    """RMS distance (BEFORE px) between AFTER points mapped by `h_est` and by `h_true`.

    Points: a grid every `step` px over AFTER of `shape` (h, w); with `before_shape`, only those
    that `h_true` maps inside BEFORE. inf when no point is left.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)[None]  # [1,N,2]
    truth = cv2.perspectiveTransform(pts, h_true)[0]
    est = cv2.perspectiveTransform(pts, h_est)[0]
    if before_shape is not None:
        bh, bw = before_shape
        keep = (truth[:, 0] >= 0) & (truth[:, 0] <= bw - 1) & (truth[:, 1] >= 0) & (truth[:, 1] <= bh - 1)
        truth, est = truth[keep], est[keep]
    if not len(truth):
        return math.inf
    return float(np.sqrt(np.mean(np.sum((est - truth) ** 2, axis=1))))
