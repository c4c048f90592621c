"""Lip-motion metrics (talking_head.evaluation.lip_motion) on small synthetic arrays."""

import numpy as np
import pytest

from talking_head.evaluation.lip_motion import (
    clip_lip_motion, frame_levels_db, mouth_opening, pearson_r, silent_frames, summarise_lip_motion,
)

SR, FPS = 16000, 25.0
SPF = int(SR / FPS)  # 640 samples a frame


def face(opening: float, width: float = 100.0) -> np.ndarray:
    """(68, 2) landmarks with jaw ends `width` apart and inner lips 62/66 `opening * width` apart."""
    lm = np.zeros((68, 2))
    lm[:, 0] = np.linspace(0, width, 68)
    lm[:, 1] = 50.0
    lm[0] = (0.0, 40.0)
    lm[16] = (width, 40.0)
    lm[62] = (width / 2, 60.0)
    lm[66] = (width / 2, 60.0 + opening * width)
    return lm


def faces(openings, width=100.0) -> np.ndarray:
    return np.stack([face(o, width) for o in openings])


def test_mouth_opening_is_normalised_by_face_width():
    assert mouth_opening(face(0.05)) == pytest.approx(0.05)
    assert mouth_opening(face(0.05, width=40.0)) == pytest.approx(0.05)  # scale free
    seq = mouth_opening(faces([0.0, 0.02, 0.1]))
    np.testing.assert_allclose(seq, [0.0, 0.02, 0.1])
    bad = face(0.05)
    bad[66] = np.nan
    assert np.isnan(mouth_opening(bad))
    flat = face(0.05)
    flat[16] = flat[0]  # zero face width
    assert np.isnan(mouth_opening(flat))
    with pytest.raises(ValueError, match="68, 2"):
        mouth_opening(np.zeros((10, 20, 2)))


def test_pearson_r():
    t = np.sin(np.linspace(0, 6, 50))
    assert pearson_r(t, t) == pytest.approx(1.0)
    assert pearson_r(-2 * t + 1, t) == pytest.approx(-1.0)
    assert pearson_r(np.full(50, 0.3), t) == 0.0  # constant prediction: the floor
    assert pearson_r(t, np.full(50, 0.3)) is None  # constant truth: undefined
    assert pearson_r(t[:2], t[:2]) is None  # too short
    noisy = t.copy()
    noisy[::2] = np.nan  # NaNs are skipped, not propagated
    assert pearson_r(noisy, t) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        pearson_r(t, t[:-1])


def tone(frames: int, amp: float) -> np.ndarray:
    return amp * np.sin(2 * np.pi * 200 * np.arange(frames * SPF) / SR)


def test_frame_levels_and_silence():
    audio = np.concatenate([np.zeros(10 * SPF), tone(10, 0.5), 1e-3 * tone(10, 1.0)])
    levels = frame_levels_db(audio, SR, FPS, 32)  # 2 frames past the end
    assert levels[:10].max() == -np.inf
    np.testing.assert_allclose(levels[10:20], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.05)
    np.testing.assert_allclose(levels[20:30], 20 * np.log10(1e-3 / np.sqrt(2)), atol=0.05)
    assert np.isneginf(levels[30:]).all()
    silent = silent_frames(audio, SR, FPS, 30)
    # Margin 2: the 2 quiet frames next to the loud stretch are not silent; the -60 dB tone is quiet.
    np.testing.assert_array_equal(silent, [True] * 8 + [False] * 14 + [True] * 8)
    np.testing.assert_array_equal(silent_frames(audio, SR, FPS, 30, margin=0),
                                  [True] * 10 + [False] * 10 + [True] * 10)
    # A lone quiet frame inside speech is not silence.
    gap = np.concatenate([tone(5, 0.5), np.zeros(SPF), tone(5, 0.5)])
    assert not silent_frames(gap, SR, FPS, 11).any()
    # All-silent audio: every frame silent (absolute floor), whatever the peak.
    assert silent_frames(np.zeros(5 * SPF), SR, FPS, 5).all()
    assert silent_frames(1e-4 * tone(5, 1.0), SR, FPS, 5).all()
    with pytest.raises(ValueError, match="1-D"):
        frame_levels_db(np.zeros((2, 100)), SR, FPS, 1)
    with pytest.raises(ValueError, match="NaN"):
        frame_levels_db(np.array([0.0, np.nan]), SR, FPS, 1)
    with pytest.raises(ValueError, match="fps"):
        frame_levels_db(np.zeros(100), SR, 0.0, 1)


def test_clip_lip_motion_scores_a_mouth_that_stays_open_on_silence():
    # 10 silent frames, 20 of speech (the mouth moves), 10 silent; GT closes the mouth on silence.
    n = 40
    audio = np.concatenate([np.zeros(10 * SPF), tone(20, 0.3), np.zeros(10 * SPF)])
    speech = 0.05 + 0.04 * np.sin(np.linspace(0, 4 * np.pi, 20))
    gt_open = np.concatenate([np.full(10, 0.01), speech, np.full(10, 0.01)])
    gt = faces(gt_open)
    good = clip_lip_motion(faces(gt_open + 0.002), gt, audio, SR, FPS)
    assert good["r"] == pytest.approx(1.0)
    assert good["silent_frames"] == 16  # 8 + 8: margins of 2 next to speech
    assert good["silent_opening_pred"] == pytest.approx(0.012)
    assert good["silent_opening_gt"] == pytest.approx(0.01)
    # A model that keeps the mouth half open on silence: r drops and the silent opening is off by 0.04.
    bad_open = np.concatenate([np.full(10, 0.05), speech, np.full(10, 0.05)])
    bad = clip_lip_motion(faces(bad_open), gt, audio, SR, FPS)
    assert bad["r"] < 0.9
    assert bad["silent_opening_pred"] == pytest.approx(0.05)
    # The floor (identity repeated): r 0 by construction.
    floor = clip_lip_motion(np.broadcast_to(face(0.03), gt.shape), gt, audio, SR, FPS)
    assert floor["r"] == 0.0
    # keep: only the scored frames count; NaN ground truth frames are dropped.
    gt_nan = gt.copy()
    gt_nan[0] = np.nan
    part = clip_lip_motion(faces(gt_open), gt_nan, audio, SR, FPS, keep=np.arange(1, 30))
    assert part["frames"] == 29 and part["silent_frames"] == 7
    with pytest.raises(ValueError, match="frames, 68, 2"):
        clip_lip_motion(faces(gt_open)[:-1], gt, audio, SR, FPS)

    summary = summarise_lip_motion([good, bad, floor])
    assert summary["mouth_opening_r"] == pytest.approx((good["r"] + bad["r"] + 0.0) / 3)
    assert summary["silent_frames"] == 48
    assert summary["silent_opening"] == pytest.approx((0.012 + 0.05 + 0.03) / 3)
    assert summary["silent_opening_gt"] == pytest.approx(0.01)
    assert summary["silent_opening_diff"] == pytest.approx((0.012 + 0.05 + 0.03) / 3 - 0.01)
    empty = summarise_lip_motion([])
    assert empty["mouth_opening_r"] is None and empty["silent_opening_diff"] is None
