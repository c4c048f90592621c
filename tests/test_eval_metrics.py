"""Correctness of the evaluation metrics (talking_head.evaluation.metrics / emotion)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from conftest import synthetic_face_landmarks
from talking_head.evaluation.emotion import emotion_scores
from talking_head.evaluation.metrics import landmark_distance, mean_psnr, psnr, psnr_cap, ssim, to_uint8

LOWER_LIP = [55, 56, 57, 58, 59, 65, 66, 67]  # outer and inner lower lip: 8 of the 20 mouth points


@pytest.fixture(scope="module")
def pair():
    """A reference pair: a 96x96 crop of scikit-image's astronaut and a noisy, shifted copy."""
    from skimage import data

    a = data.astronaut()[40:136, 180:276].copy()
    rng = np.random.default_rng(0)
    b = np.clip(np.roll(a.astype(np.float64), 1, axis=1) + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    return a, b


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM written out independently: 7x7 uniform window, sample covariance, per channel."""
    win, k1, k2, L = 7, 0.01, 0.03, 255.0
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    n = win * win
    out = []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = uniform_filter(x, win), uniform_filter(y, win)
        cov = n / (n - 1)
        vx = cov * (uniform_filter(x * x, win) - mx * mx)
        vy = cov * (uniform_filter(y * y, win) - my * my)
        vxy = cov * (uniform_filter(x * y, win) - mx * my)
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        pad = win // 2
        out.append(s[pad:-pad, pad:-pad].mean())  # the border where the window does not fit is left out
    return float(np.mean(out))


def test_identical_frames_give_ssim_one_and_infinite_psnr(pair):
    a, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warning escapes
        assert psnr(a, a.copy()) == math.inf
        assert ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)
    # Averaging: an identical frame counts as the largest finite PSNR of its size, and is counted.
    value, identical = mean_psnr([math.inf, 30.0], a.shape)
    assert identical == 1 and value == pytest.approx((psnr_cap(a.shape) + 30.0) / 2)
    assert psnr_cap((256, 256, 3)) == pytest.approx(101.1, abs=0.05)


def test_psnr_cap_is_the_smallest_error():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[3, 4, 1] = 1  # one 8-bit step in one value
    assert psnr(a, b) == pytest.approx(psnr_cap(a.shape))


def test_psnr_matches_its_definition_and_accepts_float_frames(pair):
    a, b = pair
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(a / 255.0, b / 255.0) == pytest.approx(psnr(a, b))  # float [0, 1] frames are rounded to uint8
    assert np.array_equal(to_uint8(a / 255.0), a)


def test_our_ssim_matches_scikit_image_on_a_reference_pair(pair):
    from skimage.metrics import structural_similarity

    a, b = pair
    ours = ssim(a, b)
    theirs = structural_similarity(a, b, channel_axis=-1, data_range=255)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours == pytest.approx(reference_ssim(a, b), abs=1e-6)
    assert 0.2 < ours < 0.9  # a real, non-trivial pair
    assert ssim(a, b) == ssim(a.astype(np.float32) / 255, b.astype(np.float32) / 255)


def test_metrics_refuse_mismatched_frames(pair):
    a, _ = pair
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:-1])
    with pytest.raises(ValueError, match="RGB"):
        ssim(a[..., 0], a[..., 0])


def test_pure_translation_gives_zero_landmark_distance():
    gt = synthetic_face_landmarks(256)
    moved = gt + np.array([7.5, -3.25], np.float32)
    assert landmark_distance(moved, gt, "mouth") == pytest.approx(0.0, abs=1e-5)  # float32 input
    assert landmark_distance(moved, gt, "face") == pytest.approx(0.0, abs=1e-5)
    # Per frame: a different translation for each frame of a clip is still 0 everywhere.
    clip_gt = np.stack([gt] * 5)
    clip = clip_gt + np.random.default_rng(0).normal(0, 20, (5, 1, 2))
    np.testing.assert_allclose(landmark_distance(clip, clip_gt, "face"), 0.0, atol=1e-5)


@pytest.mark.parametrize("d", [1.0, 4.0])
def test_known_lower_lip_shift_gives_the_expected_ld(d):
    # Moving k of N points by d moves them by d (N - k) / N and the others by d k / N after
    # mean-centring, so the mean distance is 2 d k (N - k) / N^2.
    gt = synthetic_face_landmarks(256)
    pred = gt.copy()
    pred[LOWER_LIP, 1] += d  # lower lip down by d pixels
    k = len(LOWER_LIP)
    assert landmark_distance(pred, gt, "mouth") == pytest.approx(2 * d * k * (20 - k) / 20**2)  # 0.48 d
    assert landmark_distance(pred, gt, "face") == pytest.approx(2 * d * k * (68 - k) / 68**2)


def test_mouth_shift_alone_is_a_mouth_translation():
    # The whole mouth moved: M-LD centres the mouth on itself (0); F-LD sees it.
    gt = synthetic_face_landmarks(256)
    pred = gt.copy()
    pred[48:68] += np.array([0.0, 3.0], np.float32)
    assert landmark_distance(pred, gt, "mouth") == pytest.approx(0.0, abs=1e-9)
    assert landmark_distance(pred, gt, "face") == pytest.approx(2 * 3.0 * 20 * 48 / 68**2)


def test_landmark_distance_shapes_and_nan():
    gt = np.stack([synthetic_face_landmarks(256)] * 3)
    pred = gt.copy()
    pred[1, 0, 0] = np.nan
    d = landmark_distance(pred, gt, "face")
    assert d.shape == (3,) and np.isnan(d[1]) and d[0] == 0 and d[2] == 0
    with pytest.raises(ValueError):
        landmark_distance(gt[:, :20], gt[:, :20])
    with pytest.raises(ValueError, match="region"):
        landmark_distance(gt, gt, "eyes")


def test_emotion_scores():
    # true: neutral x3, happy x2, sad x1; predicted: 2 of 3 neutral right, happy both right, sad as happy
    labels = np.array([0, 0, 0, 5, 5, 6])
    preds = np.array([0, 0, 6, 5, 5, 5])
    s = emotion_scores(labels, preds)
    assert s["n"] == 6 and s["accuracy"] == pytest.approx(4 / 6)
    assert s["per_class_recall"]["neutral"] == pytest.approx(2 / 3)
    assert s["per_class_recall"]["happy"] == 1.0 and s["per_class_recall"]["sad"] == 0.0
    assert s["per_class_recall"]["angry"] is None  # no examples
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    cm = np.array(s["confusion"])
    assert cm.sum() == 6 and cm[0, 0] == 2 and cm[0, 6] == 1 and cm[6, 5] == 1
    assert s["support"]["neutral"] == 3
