"""Millimetres from an ArUco marker: a flat surface drawn in mm, photographed through known tilts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackloc.errors import CracklocError
from crackloc.imageops.marker import Marker, find_marker, parse_marker

PPM = 4.0  # texture px per mm
PLANE = (400.0, 300.0)  # mm (width, height)
MARKER_AT, SIDE = np.array([30.0, 30.0]), 50.0  # top-left corner (mm), side (mm)
BAR = (np.array([150.0, 220.0]), np.array([350.0, 220.0]), 3.0)  # end points (mm), width (mm)
BAR_GREY = 40.0
SPEC = parse_marker("aruco:4x4_50:50")


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Homography [3,3] on points [N,2] → [N,2]."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    p = np.c_[pts, np.ones(len(pts))] @ h.T  # [N,3]
    return p[:, :2] / p[:, 2:]


def _marker_patch(marker_id: int, side_px: int, quiet_px: int) -> np.ndarray:
    """A printed marker (grey 30 / 235) with a white quiet border: uint8 [side+2q, side+2q]."""
    img = cv2.aruco.generateImageMarker(SPEC.aruco_dictionary(), marker_id, side_px)
    img = np.where(img > 127, 235, 30).astype(np.uint8)
    return cv2.copyMakeBorder(img, *[quiet_px] * 4, cv2.BORDER_CONSTANT, value=235)


def _surface() -> np.ndarray:
    """The plane texture, float32 [1200,1600]: pixel (i, j) covers mm [j, j+1]/PPM × [i, i+1]/PPM."""
    rng = np.random.default_rng(3)
    h, w = int(PLANE[1] * PPM), int(PLANE[0] * PPM)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
    tex = 150 + tex * (12 / tex.std())  # concrete-like grey noise
    x0, q = int(MARKER_AT[0] * PPM), int(10 * PPM)
    patch = _marker_patch(7, int(SIDE * PPM), q)
    tex[x0 - q: x0 - q + len(patch), x0 - q: x0 - q + len(patch)] = patch
    # the bar: anti-aliased coverage from the distance of each pixel centre to its centre line
    (p0, p1, width), ys, xs = BAR, *np.mgrid[0:h, 0:w]
    cx, cy = (xs + 0.5) / PPM - p0[0], (ys + 0.5) / PPM - p0[1]
    length, (tx, ty) = np.linalg.norm(p1 - p0), (p1 - p0) / np.linalg.norm(p1 - p0)
    along, across = cx * tx + cy * ty, np.abs(cy * tx - cx * ty)
    cov = np.clip((width / 2 - across) * PPM + 0.5, 0, 1) * np.clip(np.minimum(along, length - along) * PPM + 0.5, 0, 1)
    return (tex * (1 - cov) + BAR_GREY * cov).astype(np.float32)


def _camera(tilt_deg: float, axis_deg: float = 30.0) -> np.ndarray:
    """Plane mm → image px [3,3]: a pinhole (f 1000 px, 1200×900) tilted about an in-plane axis."""
    axis = np.array([np.cos(np.radians(axis_deg)), np.sin(np.radians(axis_deg)), 0.0]) * np.radians(tilt_deg)
    rot, _ = cv2.Rodrigues(axis)
    k = np.array([[1000.0, 0, 600], [0, 1000, 450], [0, 0, 1]])
    centre = np.array([[1, 0, -PLANE[0] / 2], [0, 1, -PLANE[1] / 2], [0, 0, 1]])
    return k @ np.c_[rot[:, 0], rot[:, 1], [0, 0, 520]] @ centre


@pytest.fixture(scope="module")
def surface() -> np.ndarray:
    return _surface()


def _photograph(surface: np.ndarray, tilt_deg: float, axis_deg: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB [900,1200,3] photo of the surface, and mm → px.

    Each photo pixel averages 4×4 linearly interpolated samples (a sensor integrates over its
    area; a bare warp would alias edges by up to ±¼ px), then noise and JPEG 90.
    """
    cam, ss = _camera(tilt_deg, axis_deg), 4
    mm_from_tex = np.array([[1 / PPM, 0, 0.5 / PPM], [0, 1 / PPM, 0.5 / PPM], [0, 0, 1]])
    fine_from_px = np.array([[ss, 0, (ss - 1) / 2], [0, ss, (ss - 1) / 2], [0, 0, 1]])
    fine = cv2.warpPerspective(surface, fine_from_px @ cam @ mm_from_tex, (1200 * ss, 900 * ss),
                               flags=cv2.INTER_LINEAR, borderValue=90)
    photo = cv2.resize(fine, (1200, 900), interpolation=cv2.INTER_AREA)
    photo += np.random.default_rng(abs(int(tilt_deg))).normal(0, 2, photo.shape).astype(np.float32)
    rgb = np.clip(np.stack([photo * 1.02, photo, photo * 0.96], axis=2), 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED), cam


def _bar_cross_section(cam: np.ndarray, offset_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """At the bar's middle (moved along it by offset): image point [2], image normal [2], true width (px).

    The width is the distance between the images of the bar's two edge lines along that normal.
    """
    p0, p1, width = BAR
    t = (p1 - p0) / np.linalg.norm(p1 - p0)
    n, mid = np.array([-t[1], t[0]]), (p0 + p1) / 2 + offset_mm * t
    centre, ahead = _apply(cam, np.array([mid, mid + t]))
    tangent = (ahead - centre) / np.linalg.norm(ahead - centre)
    normal = np.array([-tangent[1], tangent[0]])
    hits = []
    for side in (-1, 1):
        a, b = _apply(cam, np.array([mid + side * width / 2 * n, mid + side * width / 2 * n + t]))
        # centre + s·normal on the line a + λ(b − a): solve [normal, a − b] (s, λ) = a − centre
        s, _ = np.linalg.solve(np.c_[normal, a - b], a - centre)
        hits.append(s)
    return centre, normal, abs(hits[1] - hits[0])


def _dark_width_px(photo: np.ndarray, centre: np.ndarray, normal: np.ndarray) -> float:
    """Width (px) of the dark run through centre along normal: its half-contrast crossings."""
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    s = np.arange(-20, 20.001, 0.05, dtype=np.float32)  # [S] px along the normal
    xy = centre[None] + s[:, None] * normal[None]  # [S,2]
    profile = cv2.remap(grey, xy[:, 0:1].astype(np.float32), xy[:, 1:2].astype(np.float32), cv2.INTER_LINEAR)[:, 0]
    background = np.median(np.r_[profile[:100], profile[-100:]])
    level = (background + profile.min()) / 2
    inside = np.flatnonzero(profile < level)
    first, last = inside[0], inside[-1]  # crossings, linearly interpolated between samples
    left = s[first - 1] + (profile[first - 1] - level) / (profile[first - 1] - profile[first]) * 0.05
    right = s[last] + (profile[last] - level) / (profile[last] - profile[last + 1]) * 0.05
    return float(right - left)


@pytest.mark.parametrize("tilt", [0, 20, 30, 40])
def test_lengths_and_widths_through_a_tilted_camera(surface, tilt):
    photo, cam = _photograph(surface, tilt)
    marker = find_marker(photo, SPEC)
    assert marker is not None and marker.id == 7 and marker.corners.shape == (4, 2)
    square = np.array([[0, 0], [SIDE, 0], [SIDE, SIDE], [0, SIDE]])
    assert np.abs(marker.to_plane(marker.corners) - square).max() < 0.5
    # the detected corners are where the printed ones are (true plane, mm; about 0.2 px)
    true_corners = _apply(np.linalg.inv(cam), marker.corners)
    assert np.abs(true_corners - (MARKER_AT + square)).max() < 0.1
    # length far from the marker
    p0, p1, width = BAR
    ends = _apply(cam, np.array([p0, p1]))
    assert marker.length_mm(ends) == pytest.approx(200.0, rel=0.05)
    # width across the bar's middle: the geometric one and the one read off the photo's pixels
    centre, normal, true_px = _bar_cross_section(cam)
    assert true_px * marker.mm_per_px(centre[None], normal[None])[0] == pytest.approx(width, rel=0.05)
    assert true_px * marker.mm_per_px_across(centre[None], normal[None])[0] == pytest.approx(width, rel=0.02)
    sections = [_bar_cross_section(cam, off) for off in np.linspace(-20, 20, 9)]
    measured = np.mean([_dark_width_px(photo, c, n) * marker.mm_per_px(c[None], n[None])[0] for c, n, _ in sections])
    assert measured == pytest.approx(width, rel=0.05)


def test_width_across_an_oblique_crack(surface):
    """Tilted 40° about an axis 135° off the bar: |J·n| overstates the width, |det J| / |J·t| does not."""
    photo, cam = _photograph(surface, -40, axis_deg=135)
    marker = find_marker(photo, SPEC)
    assert marker is not None
    centre, normal, true_px = _bar_cross_section(cam)
    along_normal = true_px * marker.mm_per_px(centre[None], normal[None])[0]
    assert along_normal > BAR[2] * 1.03  # J·n is not perpendicular to the bar in the plane
    assert true_px * marker.mm_per_px_across(centre[None], normal[None])[0] == pytest.approx(BAR[2], rel=0.02)
    sections = [_bar_cross_section(cam, off) for off in np.linspace(-20, 20, 9)]
    widths = [_dark_width_px(photo, c, n) * marker.mm_per_px_across(c[None], n[None])[0] for c, n, _ in sections]
    assert np.mean(widths) == pytest.approx(BAR[2], rel=0.05)


def test_scale_is_the_homography_jacobian():
    corners = np.array([[100.0, 120], [300, 110], [320, 290], [90, 300]])
    marker = Marker(3, corners, 50.0)
    p, eps = np.array([[500.0, 600], [150, 200]]), 1e-4
    for d in (np.array([1.0, 0]), np.array([0.6, 0.8])):
        numeric = np.linalg.norm(marker.to_plane(p + eps * d) - marker.to_plane(p - eps * d), axis=1) / (2 * eps)
        assert marker.mm_per_px(p, np.tile(d * 3, (2, 1))) == pytest.approx(numeric, rel=1e-6)
    centre = corners.mean(axis=0)
    assert 50 / 210 < marker.mean_mm_per_px < 50 / 180
    assert marker.length_mm(corners[:1]) == 0.0
    assert marker.length_mm(np.r_[corners, corners[:1]]) == pytest.approx(200.0)
    assert np.allclose(marker.to_plane(centre[None]), 25.0, atol=3)
    record = json.loads(json.dumps(Marker(3, corners + 1 / 3, 50.0).to_dict()))
    assert record["id"] == 3 and record["side_mm"] == 50.0 and record["corners"][0] == [100.33, 120.33]


def test_largest_marker_wins_and_grey_works():
    page = np.full((600, 800), 200, np.uint8)
    for marker_id, side, (x, y) in ((1, 80, (50, 50)), (2, 160, (400, 200)), (3, 120, (100, 350))):
        patch = _marker_patch(marker_id, side, 20)
        page[y: y + len(patch), x: x + len(patch)] = patch
    marker = find_marker(page, SPEC)
    assert marker is not None and marker.id == 2
    assert np.allclose(marker.corners, [[419.5, 219.5], [579.5, 219.5], [579.5, 379.5], [419.5, 379.5]], atol=0.5)
    assert find_marker(page, parse_marker("aruco:6x6_250:50")) is None  # another dictionary
    turned = find_marker(np.rot90(page), SPEC)  # (x, y) → (y, 799 − x); corners keep the marker's order
    assert turned is not None and np.allclose(turned.corners, np.c_[marker.corners[:, 1], 799 - marker.corners[:, 0]], atol=0.05)


def test_no_marker_gives_none(surface):
    no_marker = np.clip(surface[600:, 800:], 0, 255).astype(np.uint8)  # the bar, the texture, no marker
    assert find_marker(np.stack([no_marker] * 3, axis=2), SPEC) is None


def test_twelve_megapixel_photo():
    rng = np.random.default_rng(0)
    photo = rng.integers(135, 165, (3000, 4000), dtype=np.uint8)
    patch = _marker_patch(11, 300, 40)
    photo[2000: 2000 + len(patch), 2500: 2500 + len(patch)] = patch
    marker = find_marker(np.stack([photo] * 3, axis=2), SPEC)
    assert marker is not None and marker.id == 11
    expected = np.array([[2539.5, 2039.5], [2839.5, 2039.5], [2839.5, 2339.5], [2539.5, 2339.5]])
    assert np.abs(marker.corners - expected).max() < 0.5
    assert marker.mean_mm_per_px == pytest.approx(50 / 300, rel=0.01)


@pytest.mark.parametrize("spec", ["aruco:9x9_50:50", "aruco:4x4_50:-1", "qr:50", "aruco:4x4_50", "aruco:4x4_50:inf",
                                  "aruco:4x4_50:0", "aruco:4x4_51:50", "aruco:4x4_50:50:1", "", "aruco:4x4_50:x\ny"])
def test_malformed_spec_is_one_line(spec):
    with pytest.raises(CracklocError) as err:
        parse_marker(spec)
    message = str(err.value)
    assert "\n" not in message and "aruco:4x4_50:50" in message and "1000" in message


def test_spec_forms():
    assert parse_marker("aruco:4x4_50:50") == parse_marker("ARUCO:4X4_50:50.0")
    spec = parse_marker("aruco:5X5_100:40.5")
    assert (spec.dictionary, spec.side_mm, spec.bits, str(spec)) == ("5x5_100", 40.5, 5, "aruco:5x5_100:40.5")
    assert spec.aruco_dictionary().markerSize == 5
    assert parse_marker("aruco:7x7_1000:12").dictionary == "7x7_1000"


# ---- crack geometry on the plane (`crackloc.inference.plane`, as `predict --geometry --marker` runs it) ----


def _bar_mask(cam: np.ndarray, shape: tuple[int, int] = (900, 1200)) -> np.ndarray:
    """bool [H,W]: photo pixels whose centre lies on the bar (mapped back onto the plane)."""
    (p0, p1, width), (h, w) = BAR, shape
    ys, xs = np.mgrid[0:h, 0:w]
    mm = _apply(np.linalg.inv(cam), np.c_[xs.ravel(), ys.ravel()]).reshape(h, w, 2)
    t = (p1 - p0) / np.linalg.norm(p1 - p0)
    rel = mm - p0
    along, across = rel @ t, np.abs(rel @ np.array([-t[1], t[0]]))
    return (along >= 0) & (along <= np.linalg.norm(p1 - p0)) & (across <= width / 2)


@pytest.mark.parametrize("tilt", [0, 20, 40])
def test_crack_lengths_and_widths_in_mm_hold_across_a_tilted_plane(surface, tilt):
    from crackloc.inference.geometry import measure_cracks
    from crackloc.inference.plane import measure_on_plane

    photo, cam = _photograph(surface, tilt)
    report = measure_on_plane(measure_cracks(_bar_mask(cam)), photo, SPEC)
    assert report.on_plane and report.count == 1, report.marker
    crack = report.cracks[0]
    length = np.linalg.norm(BAR[1] - BAR[0])
    assert abs(crack.length_mm - length) <= 0.05 * length, (crack.length_mm, crack.length_px)
    assert abs(crack.mean_width_mm - BAR[2]) <= 0.05 * BAR[2], (crack.mean_width_mm, crack.mean_width_px)
    d = report.to_dict()
    assert d["marker"]["found"] and d["total_length_mm"] == pytest.approx(crack.length_mm, abs=1e-3)


def test_a_photo_without_its_marker_is_reported_and_kept_in_px(surface):
    from crackloc.inference.geometry import measure_cracks
    from crackloc.inference.plane import measure_on_plane

    photo, cam = _photograph(surface, 20)
    report = measure_on_plane(measure_cracks(_bar_mask(cam)), photo, parse_marker("aruco:5x5_100:50"))
    d = report.to_dict()
    assert d["marker"] == {"found": False, "spec": "aruco:5x5_100:50"} and "total_length_mm" not in d
    assert "length_mm" not in d["cracks"][0]


def test_predict_measures_on_the_marker_plane_and_lists_photos_without_it(surface, tmp_path, capsys):
    from crackloc.cli import main

    photo, _ = _photograph(surface, 20)
    small = cv2.resize(photo, (600, 450), interpolation=cv2.INTER_AREA)  # keeps the test fast
    cv2.imwrite(str(tmp_path / "marked.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "plain.png"), cv2.cvtColor(small[250:, :], cv2.COLOR_RGB2BGR))  # no marker
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "marked.png"), str(tmp_path / "plain.png"), "--out", str(out),
            "--marker", "aruco:4x4_50:50", "--save", "mask"]
    assert main(argv) == 0
    records = {Path(r["path"]).name: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    marked, plain = records["marked.png"]["geometry"], records["plain.png"]["geometry"]
    assert marked["marker"]["found"] and marked["marker"]["mean_mm_per_px"] == pytest.approx(1.04, rel=0.15)
    assert "total_length_mm" in marked and all("length_mm" in c for c in marked["cracks"])
    assert plain["marker"] == {"found": False, "spec": "aruco:4x4_50:50"} and "total_length_mm" not in plain
    assert "marker not found in 1 image(s), measured in px only" in capsys.readouterr().err
    assert records["marked.png"]["settings"]["marker"] == "aruco:4x4_50:50"
    assert main([*argv[:-2], "--mm-per-px", "0.5"]) == 2  # one scale or the other
