"""Registration of AFTER onto BEFORE (`crackloc.change.register`) on synthetic campaigns with a
known homography (`crackloc.data.campaigns`): within 1 px of the truth, the truth itself sound,
and a one-line refusal for a pair that cannot be registered. numpy + OpenCV only (no torch)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from crackloc.change.register import register
from crackloc.data.campaigns import (
    CHANGES,
    concrete_surface,
    draw_cracks,
    homography_rms,
    make_pair,
    random_view,
    seen_region,
)
from crackloc.errors import CracklocError

SHAPE = (360, 480)  # small BEFORE: each registration takes a fraction of a second


def _pair(seed: int, change: str = "mixed"):
    return make_pair(np.random.default_rng(seed), shape=SHAPE, change=change)


def _error(reg, pair) -> float:
    return homography_rms(reg.homography, pair.homography, pair.after.shape[:2], before_shape=pair.before.shape[:2])


# ---- the campaigns' truth -----------------------------------------------------------------------


@pytest.mark.parametrize("change", CHANGES)
def test_campaign_truth_matches_the_edits(change):
    pair = _pair(3, change)
    before, after, truth = pair.cracks_before, pair.cracks_after, pair.changes
    assert len(truth) == len(after) >= len(before) >= 2
    for t in truth:
        if t.status == "new":
            assert t.id >= len(before) and math.isclose(t.added_length_px, after[t.id].length)
            continue
        b, a = before[t.id], after[t.id]
        assert math.isclose(a.length - b.length, t.added_length_px, abs_tol=1e-6)
        assert math.isclose(a.width - b.width, t.width_change_px, abs_tol=1e-9)
        assert t.status == ("grown" if t.added_length_px or t.width_change_px else "unchanged")
    grown = [t for t in truth if t.status == "grown"]
    assert (len(grown), sum(t.status == "new" for t in truth)) == {
        "unchanged": (0, 0), "extended": (1, 0), "widened": (1, 0), "new": (0, 1), "mixed": (2, 1)}[change]
    assert all(40 <= t.added_length_px <= 200 for t in grown if t.added_length_px)
    assert all(1 <= t.width_change_px <= 3 for t in grown if t.width_change_px)
    ys, xs = np.concatenate([c.points for c in after]).round().astype(int).T[::-1]
    assert pair.region[ys, xs].all(), "every crack lies where both photos see the surface"


def test_unchanged_pair_keeps_every_crack():
    pair = _pair(5, "unchanged")
    assert all(t.status == "unchanged" and not t.added_length_px and not t.width_change_px for t in pair.changes)
    assert all(a is b for a, b in zip(pair.cracks_before, pair.cracks_after, strict=True))
    reg = register(pair.before, pair.after)
    assert _error(reg, pair) <= 1.0
    # the relit AFTER, brought into BEFORE's frame, is dark exactly where BEFORE's cracks are
    _, mask = draw_cracks(np.zeros_like(pair.before), pair.cracks_before)
    grey = cv2.cvtColor(reg.warp(pair.after), cv2.COLOR_RGB2GRAY).astype(float)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
    assert grey[mask & reg.valid].mean() < 0.8 * grey[ring & reg.valid].mean()


def test_homography_rms_measures_a_shift():
    hom = np.eye(3)
    moved = np.array([[1, 0, 0.6], [0, 1, 0.8], [0, 0, 1.0]])
    assert homography_rms(hom, hom, (50, 60)) == 0
    assert math.isclose(homography_rms(moved, hom, (50, 60)), 1.0)
    assert homography_rms(moved, hom + [[0, 0, 500], [0, 0, 0], [0, 0, 0]], (50, 60), before_shape=(50, 60)) == math.inf


# ---- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "change"), [(10 + i, c) for i, c in enumerate(CHANGES)] + [(20, "mixed")])
def test_registers_within_1px_of_the_truth(seed, change):
    pair = _pair(seed, change)
    reg = register(pair.before, pair.after)
    assert _error(reg, pair) <= 1.0
    assert reg.inliers >= 25 and 0 <= reg.rms_px <= 1.5
    true_overlap = seen_region(pair.homography, SHAPE, pair.after.shape[:2]).mean()
    assert abs(reg.overlap - true_overlap) < 0.02
    assert abs(reg.valid.mean() - reg.overlap) < 0.02
    assert reg.homography.shape == (3, 3) and reg.homography.dtype == np.float64


def test_registers_on_a_tiled_surface_and_without_sift(monkeypatch):
    rng = np.random.default_rng(0)
    patches = [concrete_surface(rng, (64, 64)) for _ in range(12)]
    pair = make_pair(np.random.default_rng(1), shape=SHAPE, patches=patches, change="new")
    assert _error(register(pair.before, pair.after), pair) <= 1.0
    monkeypatch.delattr(cv2, "SIFT_create")  # ORB instead
    assert _error(register(pair.before, pair.after), pair) <= 1.0


def test_warp_brings_an_after_mask_onto_the_true_one():
    pair = _pair(30, "extended")
    reg = register(pair.before, pair.after)
    h, w = pair.after.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 5, 1, -1)
    cv2.line(mask, (w // 5, h // 4), (4 * w // 5, 3 * h // 4), 1, 9)
    ours = reg.warp(mask.astype(bool))
    truth = cv2.warpPerspective(mask, pair.homography, SHAPE[::-1], flags=cv2.INTER_NEAREST).astype(bool)
    assert ours.dtype == bool and ours.shape == SHAPE
    assert (ours & truth).sum() / (ours | truth).sum() > 0.9
    heat = reg.warp(mask.astype(np.float64) * 0.5)  # a float map: linear, float32
    assert heat.dtype == np.float32 and heat.shape == SHAPE and 0 <= heat.min() and heat.max() <= 0.5
    assert reg.warp(pair.after).shape == (*SHAPE, 3) and reg.warp(pair.after).dtype == np.uint8
    with pytest.raises(ValueError):
        reg.warp(pair.before[:10])


# ---- refusals -----------------------------------------------------------------------------------


def _refused(before: np.ndarray, after: np.ndarray, words: str) -> str:
    with pytest.raises(CracklocError) as e:
        register(before, after)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(("BEFORE", "AFTER")) and words in msg, msg
    return msg


def test_refuses_another_surface():
    _refused(_pair(40).before, _pair(41).after, "same surface")


def test_refuses_a_black_or_uniform_image():
    pair = _pair(42)
    _refused(pair.before, np.zeros_like(pair.after), "AFTER image is blank")
    _refused(np.full_like(pair.before, 128), pair.after, "BEFORE image is blank")


def test_refuses_sizes_10x_apart():
    pair = _pair(43)
    small = cv2.resize(pair.after, None, fx=0.1, fy=0.1, interpolation=cv2.INTER_AREA)
    _refused(pair.before, small, "too far apart")
    _refused(small, pair.before, "too far apart")


def test_refuses_almost_no_overlap():
    rng = np.random.default_rng(44)
    surface = concrete_surface(rng, (SHAPE[0], 2 * SHAPE[1]))
    before, after = surface[:, :SHAPE[1]], surface[:, int(0.85 * SHAPE[1]):][:, :SHAPE[1]]  # 15 % shared
    _refused(before, after, "overlap too little")


def test_refuses_a_mirrored_view():
    pair = _pair(45)
    _refused(pair.before, np.ascontiguousarray(pair.before[:, ::-1]), "")


def test_random_views_stay_in_the_issue_s_range():
    for seed in range(20):
        hom, (ah, aw) = random_view(np.random.default_rng(seed), SHAPE)
        a = hom[:2, :2] - np.outer(hom[:2, 2], hom[2, :2])  # linear part at AFTER's origin
        assert 0.6 <= math.sqrt(abs(np.linalg.det(a))) <= 1.6
        assert abs(math.degrees(math.atan2(a[1, 0], a[0, 0]))) <= 22
        assert abs(hom[2, :2]).max() <= 2e-4


def test_keeps_ransac_when_ecc_fails(monkeypatch):
    pair = _pair(50, "widened")

    def no_convergence(*args, **kwargs):
        raise cv2.error("ECC did not converge")

    monkeypatch.setattr(cv2, "findTransformECC", no_convergence)
    reg = register(pair.before, pair.after)
    assert not reg.refined and _error(reg, pair) <= 1.0


def test_registers_an_after_3_5x_smaller():
    pair = make_pair(np.random.default_rng(51), shape=(600, 800), change="unchanged")
    f = 800 / 3.5 / max(pair.after.shape[:2])  # longer sides 3.5x apart (the limit is 4x)
    small = cv2.resize(pair.after, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    to_small = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1]])  # pixel centres kept
    truth = pair.homography @ np.linalg.inv(to_small)
    reg = register(pair.before, small)
    assert homography_rms(reg.homography, truth, small.shape[:2], before_shape=(600, 800)) <= 1.0
