"""Lip-motion metrics of a landmark sequence: does the mouth follow the speech, and close on silence?

Definitions (used by `talking-head evaluate`'s landmark-model section, DESIGN.md 7.5):

* **Mouth opening** of a frame: the inner-lip distance, iBUG-68 points 62 (upper inner lip, centre) and
  66 (lower inner lip, centre), divided by the face width, the distance between the jaw ends 0 and 16.
  Unitless, so it does not depend on the crop size or the pixel scale (0 = closed; a wide-open mouth
  is about 0.15).
* **Mouth-opening correlation** of a clip: Pearson r between the predicted and the ground-truth opening
  over the clip's valid frames. A constant series (the identity-repeated floor) has no linear relation
  with anything: its r is defined as 0 (what the issue means by "0 by construction"). A clip whose
  ground truth is constant, or that has fewer than `MIN_R_FRAMES` valid frames, has no r (None) and is
  left out of the mean over clips.
* **Silent frames**: from the audio energy per video frame. Frame f covers the audio
  `[f / fps, (f + 1) / fps)`; its level is the RMS of those samples in dB. A frame is *quiet* when its
  level is more than `SILENCE_DB_BELOW_PEAK` (25) dB below the clip's loudest frame, or below
  `SILENCE_ABS_DB` (-60 dBFS) whatever the peak (so an all-silent clip is all quiet). A frame is
  *silent* when it and the `SILENCE_MARGIN_FRAMES` (2, 80 ms at 25 fps) frames on each side are all
  quiet: this keeps a lone quiet frame inside a word (a stop consonant's closure) out, and leaves the
  frames next to speech, where a mouth is still closing or already opening, out too. Frames outside
  the clip count as quiet. Checked against GRID s1's word alignments (32 sentences, 2368 frames): of
  the frames this calls silent, 897 of 898 lie in an aligned `sil`; they are 69 % of the `sil` frames
  (30 dB: 328 frames, 25 %; 20 dB: 1166 of 1186 in `sil`).
* **Silent-frame opening**: the mean mouth opening over the silent (and valid) frames, pooled over
  clips, for the prediction and the ground truth; the goal compares the two (|difference| <= 0.02).
"""

from __future__ import annotations

import math

import numpy as np

from talking_head.audio import frame_levels_db  # noqa: F401 - part of this module's API

NUM_LANDMARKS = 68
UPPER_INNER_LIP, LOWER_INNER_LIP = 62, 66
JAW_LEFT, JAW_RIGHT = 0, 16
SILENCE_DB_BELOW_PEAK = 25.0
SILENCE_ABS_DB = -60.0
SILENCE_MARGIN_FRAMES = 2
MIN_R_FRAMES = 3

__all__ = [
    "mouth_opening", "frame_levels_db", "silent_frames", "pearson_r", "clip_lip_motion", "summarise_lip_motion",
]


def _landmark_array(landmarks, name: str) -> np.ndarray:
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"{name} must have shape (..., {NUM_LANDMARKS}, 2), got {arr.shape}")
    return arr


def mouth_opening(landmarks) -> np.ndarray:
    """Inner-lip opening |p62 - p66| / |p0 - p16| of landmarks (..., 68, 2) -> (...). NaN where a point is
    NaN or the face width is 0."""
    lm = _landmark_array(landmarks, "landmarks")
    lips = np.linalg.norm(lm[..., LOWER_INNER_LIP, :] - lm[..., UPPER_INNER_LIP, :], axis=-1)
    width = np.linalg.norm(lm[..., JAW_RIGHT, :] - lm[..., JAW_LEFT, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(lips / width, dtype=np.float64)
    return np.where(np.isfinite(out), out, np.nan)


def silent_frames(audio, sample_rate: int, fps: float, num_frames: int,
                  db_below_peak: float = SILENCE_DB_BELOW_PEAK, abs_db: float = SILENCE_ABS_DB,
                  margin: int = SILENCE_MARGIN_FRAMES) -> np.ndarray:  # fmt: skip
    """(num_frames,) bool: the silent frames of a clip (see the module docstring)."""
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
    levels = frame_levels_db(audio, sample_rate, fps, num_frames)
    if len(levels) == 0:
        return np.zeros(0, dtype=bool)
    peak = levels.max()
    quiet = (levels < peak - float(db_below_peak)) | (levels < float(abs_db))
    margin = int(margin)
    if margin == 0:
        return quiet
    padded = np.concatenate([np.ones(margin, bool), quiet, np.ones(margin, bool)])
    silent = np.ones(len(quiet), dtype=bool)
    for shift in range(2 * margin + 1):
        silent &= padded[shift: shift + len(quiet)]
    return silent


def pearson_r(pred, target) -> float | None:
    """Pearson r of two 1-D series over the positions where both are finite; 0.0 when `pred` is constant
    (no linear relation: the floor), None when `target` is constant or fewer than MIN_R_FRAMES are left."""
    a = np.asarray(pred, dtype=np.float64).ravel()
    b = np.asarray(target, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pred and target must have the same length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < MIN_R_FRAMES:
        return None
    a, b = a - a.mean(), b - b.mean()
    sb = math.sqrt(float(b @ b))
    if sb <= 1e-12:
        return None
    sa = math.sqrt(float(a @ a))
    if sa <= 1e-12:
        return 0.0
    return float(np.clip((a @ b) / (sa * sb), -1.0, 1.0))


def clip_lip_motion(pred_landmarks, gt_landmarks, audio, sample_rate: int, fps: float,
                    keep=None) -> dict:  # fmt: skip
    """Lip-motion figures of one clip.

    pred_landmarks, gt_landmarks: (F, 68, 2) in any one unit (the opening is unitless); audio: the clip's
    mono samples (frame f = [f / fps, (f + 1) / fps)); keep: indices (or a bool mask) of the frames to
    score (default all; frames whose ground truth has NaN are dropped anyway).
    Returns {"frames", "r", "silent_frames", "silent_opening_pred", "silent_opening_gt"} (the means are
    None when the clip has no silent frame; "r" None when undefined, see pearson_r) and the sums
    "silent_sum_pred", "silent_sum_gt" for pooling over clips.
    """
    pred = _landmark_array(pred_landmarks, "pred_landmarks")
    gt = _landmark_array(gt_landmarks, "gt_landmarks")
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt landmarks must both be (frames, 68, 2), got {pred.shape} and {gt.shape}")
    n = len(gt)
    mask = np.zeros(n, dtype=bool)
    if keep is None:
        mask[:] = True
    else:
        keep = np.asarray(keep)
        if keep.dtype == bool:
            if keep.shape != (n,):
                raise ValueError(f"a boolean keep mask must have shape ({n},), got {keep.shape}")
            mask = keep.copy()
        elif len(keep):
            mask[keep.astype(np.int64)] = True
    op_pred, op_gt = mouth_opening(pred), mouth_opening(gt)
    mask &= np.isfinite(op_gt) & np.isfinite(op_pred)
    silent = silent_frames(audio, sample_rate, fps, n) & mask
    n_silent = int(silent.sum())
    return {
        "frames": int(mask.sum()),
        "r": pearson_r(op_pred[mask], op_gt[mask]),
        "silent_frames": n_silent,
        "silent_opening_pred": float(op_pred[silent].mean()) if n_silent else None,
        "silent_opening_gt": float(op_gt[silent].mean()) if n_silent else None,
        "silent_sum_pred": float(op_pred[silent].sum()),
        "silent_sum_gt": float(op_gt[silent].sum()),
        "opening_pred": float(op_pred[mask].mean()) if mask.any() else None,
        "opening_gt": float(op_gt[mask].mean()) if mask.any() else None,
    }


def summarise_lip_motion(rows: list[dict]) -> dict:
    """Over clips (rows of clip_lip_motion): mean r (clips with an r), and the silent-frame openings pooled
    over all silent frames, with their absolute difference."""
    rs = [r["r"] for r in rows if r.get("r") is not None]
    n_silent = int(sum(r["silent_frames"] for r in rows))
    pred = sum(r["silent_sum_pred"] for r in rows) / n_silent if n_silent else None
    gt = sum(r["silent_sum_gt"] for r in rows) / n_silent if n_silent else None
    return {
        "mouth_opening_r": float(np.mean(rs)) if rs else None,
        "r_clips": len(rs),
        "silent_frames": n_silent,
        "silent_opening": pred,
        "silent_opening_gt": gt,
        "silent_opening_diff": abs(pred - gt) if n_silent else None,
    }
