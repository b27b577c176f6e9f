"""Register AFTER onto BEFORE: SIFT features and a RANSAC homography, refined by ECC.

`register(before, after)` returns a `Registration`: the homography mapping AFTER's pixels onto
BEFORE's, its residual on the feature matches, the share of BEFORE that AFTER covers, and `warp`
to bring any AFTER-frame image, map or mask into BEFORE's frame. A pair that cannot be registered
(a blank image, sizes far apart, another surface, too little overlap, a degenerate homography)
raises `CracklocError` with one line that names BEFORE/AFTER (the caller adds the file names).
numpy + OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from crackloc.errors import CracklocError

MIN_STD = 2.0  # grey levels: an image whose grey std is below this is (nearly) uniform
MAX_SIDE_RATIO = 4.0  # longer sides further apart than this are refused
MIN_INLIERS = 25  # consistent feature matches needed
MIN_OVERLAP = 0.3  # share of BEFORE that AFTER must cover
DET_RANGE = (MAX_SIDE_RATIO**-2, MAX_SIDE_RATIO**2)  # area scale of the linear part (AFTER px -> BEFORE px)
MAX_DEPTH_RATIO = 2.0  # projective depth over AFTER's corners, largest / smallest
LOWE_RATIO = 0.75
RANSAC_PX = 3.0  # RANSAC inlier threshold, in BEFORE feature px
MAX_FEATURES = 6000
ECC_MAX_SHIFT = 4.0  # px: ECC may move RANSAC's mapping at most this far on the overlap
ECC_SIDE = 1600  # px: the finest ECC level's longer side (at most BEFORE's own)


@dataclass(frozen=True, eq=False)
class Registration:
    """AFTER registered onto BEFORE.

    Attributes:
        homography: [3,3] float64 mapping AFTER pixel coords (x, y) to BEFORE pixel coords.
        rms_px: RMS distance (BEFORE px) between the RANSAC inlier matches under `homography`.
        inliers: number of RANSAC inlier matches.
        overlap: share of BEFORE covered by the warped AFTER.
        before_shape, after_shape: (h, w) of the two images.
        refined: whether ECC's intensity refinement was kept.
    """

    homography: np.ndarray
    rms_px: float
    inliers: int
    overlap: float
    before_shape: tuple[int, int]
    after_shape: tuple[int, int]
    refined: bool = False

    def warp(self, array: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Resample an AFTER-frame array [h,w(,C)] into BEFORE's frame [H,W(,C)] (or `shape`).

        bool masks use nearest neighbour; uint8 images and float maps are interpolated linearly
        (float64 and other numbers come back as float32). Pixels AFTER does not cover are 0.
        """
        if array.shape[:2] != tuple(self.after_shape):
            raise ValueError(f"expected an AFTER-frame array {self.after_shape}, got {array.shape[:2]}")
        h, w = shape or self.before_shape
        if array.dtype == bool:
            out = cv2.warpPerspective(array.astype(np.uint8), self.homography, (w, h), flags=cv2.INTER_NEAREST)
            return out.astype(bool)
        src = array if array.dtype in (np.uint8, np.float32) else array.astype(np.float32)
        if src.ndim == 3 and src.shape[2] > 4:  # warpPerspective takes at most 4 channels
            return np.stack([self.warp(src[..., c], shape) for c in range(src.shape[2])], axis=-1)
        out = cv2.warpPerspective(src, self.homography, (w, h), flags=cv2.INTER_LINEAR)
        return out.reshape(h, w, *src.shape[2:])

    @cached_property
    def valid(self) -> np.ndarray:
        """BEFORE pixels [H,W] bool that AFTER covers (1 px in from the border of its footprint)."""
        ones = np.ones(self.after_shape, np.uint8)
        h, w = self.before_shape
        covered = cv2.warpPerspective(ones, self.homography, (w, h), flags=cv2.INTER_NEAREST)
        return cv2.erode(covered, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE).astype(bool)


# ---- geometry helpers ---------------------------------------------------------------------------


def _scaling(f: float) -> np.ndarray:
    """Pixel coords of an image -> those of its resize by `f` (pixel centres kept)."""
    o = 0.5 * f - 0.5
    return np.array([[f, 0, o], [0, f, o], [0, 0, 1]], np.float64)


def _project(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points [N,2] mapped by `hom`: → [N,2]."""
    return cv2.perspectiveTransform(pts.reshape(1, -1, 2).astype(np.float64), hom)[0]


def _corners(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def overlap_share(hom: np.ndarray, before_shape: tuple[int, int], after_shape: tuple[int, int]) -> float:
    """Share of BEFORE covered by AFTER's canvas mapped through `hom` (a convex quad)."""
    quad = _project(hom, _corners(after_shape)).astype(np.float32)
    area, _ = cv2.intersectConvexConvex(quad, _corners(before_shape).astype(np.float32), handleNested=True)
    h, w = before_shape
    return float(max(area, 0.0) / ((h - 1) * (w - 1)))


def _linear_scale(hom: np.ndarray) -> float:
    """BEFORE px per AFTER px of the homography's linear part (square root of its area scale)."""
    return math.sqrt(abs(np.linalg.det(hom[:2, :2] / hom[2, 2])))


def _rms(hom: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((_project(hom, pa) - pb) ** 2, axis=1))))


# ---- features and RANSAC ------------------------------------------------------------------------


def _grey(image: np.ndarray, name: str) -> np.ndarray:
    """Grey uint8 [H,W] of an RGB (or grey) uint8 image; refuses a (nearly) uniform one."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 16:
        raise CracklocError(f"{name} image must be uint8 RGB, at least 16x16 px (got {image.dtype} {image.shape})")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    std = float(grey.std())
    if std < MIN_STD:
        raise CracklocError(f"{name} image is blank or uniform (grey std {std:.1f} levels): nothing to register")
    return grey


def _features(grey: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Keypoints [N,2] (x, y) in full-resolution px, descriptors, and whether they are binary (ORB)."""
    f = min(1.0, max_side / max(grey.shape))
    small = grey if f == 1.0 else cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    small = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(small)
    sift = getattr(cv2, "SIFT_create", None)
    detector = sift(nfeatures=MAX_FEATURES) if sift is not None else cv2.ORB_create(nfeatures=MAX_FEATURES)
    kps, desc = detector.detectAndCompute(small, None)
    pts = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
    return (pts + 0.5) / f - 0.5, desc, sift is None


def _matches(desc_a: np.ndarray | None, desc_b: np.ndarray | None, binary: bool) -> np.ndarray:
    """Index pairs [M,2] (AFTER, BEFORE) that pass Lowe's ratio test."""
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), int)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if binary else cv2.NORM_L2)
    pairs = [(m.queryIdx, m.trainIdx) for m, n in (p for p in matcher.knnMatch(desc_a, desc_b, k=2) if len(p) == 2)
             if m.distance < LOWE_RATIO * n.distance]
    return np.array(pairs, int).reshape(-1, 2)


def _ransac(pa: np.ndarray, pb: np.ndarray, scale: float) -> tuple[np.ndarray | None, np.ndarray]:
    """Homography AFTER -> BEFORE from matched points [M,2] and the inlier mask [M] bool."""
    method = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)
    hom, inl = cv2.findHomography(pa, pb, method, RANSAC_PX / scale, maxIters=10000, confidence=0.9999)
    if hom is None or inl is None:
        return None, np.zeros(len(pa), bool)
    return hom / hom[2, 2], inl.ravel().astype(bool)


def _check_homography(hom: np.ndarray | None, before_shape: tuple[int, int], after_shape: tuple[int, int]) -> None:
    """Refuse a degenerate mapping: mirrored, collapsed or blown up, or in strong perspective."""
    if hom is None or not np.isfinite(hom).all():
        raise CracklocError("BEFORE and AFTER could not be related by a homography")
    det = float(np.linalg.det(hom[:2, :2] / hom[2, 2]))
    if not DET_RANGE[0] <= det <= DET_RANGE[1]:
        raise CracklocError(f"BEFORE and AFTER give a degenerate mapping (area scale {det:.3g}, "
                            f"allowed {DET_RANGE[0]:g}..{DET_RANGE[1]:g})")
    depth = np.c_[_corners(after_shape), np.ones(4)] @ hom[2]  # [4] projective depth at AFTER's corners
    quad = _project(hom, _corners(after_shape)).astype(np.float32)
    if depth.min() <= 0 or depth.max() / depth.min() > MAX_DEPTH_RATIO or not cv2.isContourConvex(quad):
        raise CracklocError("BEFORE and AFTER give a degenerate mapping (strong perspective)")


# ---- intensity refinement -----------------------------------------------------------------------


def _ecc_image(grey: np.ndarray, f: float) -> np.ndarray:
    """log-intensity detail at scale `f`: gamma, gain and smooth lighting become an offset ECC ignores."""
    small = grey if f >= 1.0 else cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    log = np.log1p(small.astype(np.float32))
    return log - cv2.GaussianBlur(log, (0, 0), 12.0)


def _ecc(grey_b: np.ndarray, grey_a: np.ndarray, hom: np.ndarray) -> np.ndarray:
    """ECC (MOTION_HOMOGRAPHY) refinement of `hom` over a 2-level pyramid; raises cv2.error if it fails."""
    r = _linear_scale(hom)
    finest = min(1.0, ECC_SIDE / max(grey_b.shape), 1 / r)  # BEFORE no finer than AFTER
    for fb, iters in ((finest / 2, 40), (finest, 15)):
        fa = min(1.0, fb * r)  # AFTER at BEFORE's ground resolution
        warp = _scaling(fa) @ np.linalg.inv(hom) @ np.linalg.inv(_scaling(fb))  # BEFORE level -> AFTER level
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iters, 1e-6)
        _, warp = cv2.findTransformECC(_ecc_image(grey_b, fb), _ecc_image(grey_a, fa),
                                       (warp / warp[2, 2]).astype(np.float32), cv2.MOTION_HOMOGRAPHY,
                                       criteria, None, 5)
        hom = np.linalg.inv(_scaling(fb)) @ np.linalg.inv(warp.astype(np.float64)) @ _scaling(fa)
        hom = hom / hom[2, 2]
    return hom


def _max_shift(h1: np.ndarray, h2: np.ndarray, after_shape: tuple[int, int]) -> float:
    """Largest distance (BEFORE px) between AFTER points mapped by `h1` and by `h2` (a 9x9 grid)."""
    h, w = after_shape
    yy, xx = np.mgrid[0:h - 1:9j, 0:w - 1:9j]
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    return float(np.linalg.norm(_project(h1, pts) - _project(h2, pts), axis=1).max())


def _refine(grey_b: np.ndarray, grey_a: np.ndarray, hom: np.ndarray, pa: np.ndarray,
            pb: np.ndarray) -> np.ndarray | None:
    """ECC's homography if it converged near RANSAC's and kept the inlier residual within half an
    AFTER pixel of RANSAC's, else None."""
    try:
        refined = _ecc(grey_b, grey_a, hom)
    except cv2.error:
        return None
    if not np.isfinite(refined).all() or _max_shift(refined, hom, grey_a.shape) > ECC_MAX_SHIFT:
        return None
    slack = 0.5 * max(1.0, _linear_scale(hom))  # half an AFTER px, in BEFORE px
    return refined if _rms(refined, pa, pb) <= _rms(hom, pa, pb) + slack else None


# ---- the one entry point ------------------------------------------------------------------------


def register(before: np.ndarray, after: np.ndarray, *, max_side: int = 2000, refine: bool = True) -> Registration:
    """Register AFTER [h,w,3] uint8 RGB onto BEFORE [H,W,3] uint8 RGB.

    Features are found on CLAHE-equalised grey images scaled to at most `max_side` px; ECC then
    refines the RANSAC homography (unless `refine` is False). Raises CracklocError (one line)
    when the pair cannot be registered.
    """
    grey_b, grey_a = _grey(before, "BEFORE"), _grey(after, "AFTER")
    ratio = max(grey_b.shape) / max(grey_a.shape)
    if not 1 / MAX_SIDE_RATIO <= ratio <= MAX_SIDE_RATIO:
        raise CracklocError(f"BEFORE and AFTER sizes are too far apart ({max(grey_b.shape)} vs "
                            f"{max(grey_a.shape)} px on the longer side; at most {MAX_SIDE_RATIO:g}x)")
    kb, db, binary = _features(grey_b, max_side)
    ka, da, _ = _features(grey_a, max_side)
    pairs = _matches(da, db, binary)
    inl = np.zeros(len(pairs), bool)
    hom = None
    if len(pairs) >= 4:
        hom, inl = _ransac(ka[pairs[:, 0]], kb[pairs[:, 1]], min(1.0, max_side / max(grey_b.shape)))
    if inl.sum() < MIN_INLIERS:
        raise CracklocError(f"BEFORE and AFTER do not show the same surface: {int(inl.sum())} consistent "
                            f"feature matches, need {MIN_INLIERS}")
    _check_homography(hom, grey_b.shape, grey_a.shape)
    share = overlap_share(hom, grey_b.shape, grey_a.shape)
    if share < MIN_OVERLAP:
        raise CracklocError(f"BEFORE and AFTER overlap too little: AFTER covers {share:.0%} of BEFORE, "
                            f"need {MIN_OVERLAP:.0%}")
    pa, pb = ka[pairs[inl, 0]], kb[pairs[inl, 1]]
    refined = _refine(grey_b, grey_a, hom, pa, pb) if refine else None
    final = hom if refined is None else refined
    return Registration(final, _rms(final, pa, pb), int(inl.sum()), overlap_share(final, grey_b.shape, grey_a.shape),
                        tuple(grey_b.shape), tuple(grey_a.shape), refined is not None)
