"""The evaluation metrics of DESIGN.md section 5, as pure functions.

PSNR and SSIM (scikit-image), on uint8 RGB frames:

* `psnr(gt, pred)`: `skimage.metrics.peak_signal_noise_ratio` with
  data_range=255. Identical frames give +inf (returned as such, without
  skimage's divide-by-zero warning). When frames are averaged, an infinite
  frame counts as `psnr_cap(shape)`, the PSNR of the smallest possible
  non-zero error (one 8-bit step in one value of the frame): the largest
  finite PSNR a frame of that size can have (see `mean_psnr`).
* `ssim(gt, pred)`: `skimage.metrics.structural_similarity` with
  channel_axis=-1 and data_range=255 and scikit-image's defaults otherwise
  (7x7 uniform window, sample covariance, K1=0.01, K2=0.03): the SSIM of
  each RGB channel, averaged. These are the settings of the public EAT/MEAD
  evaluator (`compare_ssim(gt, fake, multichannel=True)` on uint8 frames).

Landmark distance (LD), in pixels of a 256x256 frame (the EAT/MEAD evaluator
convention, `calibrate_lmk` + `ld` of its test_lmd script):

* M-LD: the 20 mouth points (iBUG 48-67) of each frame, centred on THEIR OWN
  mean, then the mean Euclidean distance between corresponding points of the
  generated and the ground-truth frame.
* F-LD: the same over all 68 points, centred on the mean of all 68.

Mean-centring removes the translation of the face (or of the mouth, for M-LD)
in the frame, so LD measures shape (lip opening, expression), not where the
head is. A rigid translation of the whole face therefore gives LD 0; moving
the lower lip down by d pixels (10 of the 20 mouth points) gives M-LD d / 2.
"""

from __future__ import annotations

import math

import numpy as np

from talking_head.constants import MOUTH_SLICE, NUM_LANDMARKS

LD_SIZE = 256  # landmark distances are in pixels of a 256x256 frame (DESIGN.md section 5)
MOUTH_POINTS = MOUTH_SLICE.stop - MOUTH_SLICE.start  # 20

__all__ = [
    "LD_SIZE",
    "MOUTH_POINTS",
    "centre_landmarks",
    "landmark_distance",
    "mean_psnr",
    "psnr",
    "psnr_cap",
    "ssim",
    "to_uint8",
]


def to_uint8(frame) -> np.ndarray:
    """uint8 as is; float in [0, 1] -> round(255 x) as uint8 (what a video file would store)."""
    x = np.asarray(frame)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("frames contain NaN or infinite values")
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_uint8(gt), to_uint8(pred)
    if a.shape != b.shape:
        raise ValueError(f"frames to compare must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"frames must be RGB (H, W, 3), got shape {a.shape}")
    return a, b


def psnr(gt, pred) -> float:
    """PSNR in dB of two RGB frames (uint8, or float in [0, 1]); +inf when they are identical."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pair(gt, pred)
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def psnr_cap(shape) -> float:
    """The largest finite PSNR of a uint8 frame of `shape`: one value off by one 8-bit step.

    Used in place of +inf for identical frames when PSNR is averaged
    (101.1 dB at 256x256x3, 89.1 dB at 64x64x3).
    """
    n = int(np.prod(shape))
    return 10.0 * math.log10(255.0**2 * n)


def mean_psnr(values, shape) -> tuple[float | None, int]:
    """(mean PSNR with +inf frames counted as `psnr_cap(shape)`, number of such frames)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return None, 0
    infinite = np.isposinf(v)
    v = np.where(infinite, psnr_cap(shape), v)
    return float(v.mean()), int(infinite.sum())


def ssim(gt, pred) -> float:
    """SSIM of two RGB frames (uint8, or float in [0, 1]) with scikit-image (see the module docstring)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(gt, pred)
    if min(a.shape[:2]) < 7:
        raise ValueError(f"SSIM needs frames of at least 7x7 pixels, got {a.shape[1]}x{a.shape[0]}")
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def centre_landmarks(points) -> np.ndarray:
    """Subtract each frame's mean point: (..., N, 2) -> (..., N, 2) float64."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 2 or p.shape[-1] != 2:
        raise ValueError(f"landmarks must have shape (..., N, 2), got {p.shape}")
    return p - p.mean(axis=-2, keepdims=True)


def landmark_distance(pred, gt, region: str = "face") -> np.ndarray:
    """Per-frame LD between landmark sets (..., 68, 2), in the units of the input (pixels).

    region="mouth": M-LD over the 20 mouth points, each set centred on its own
    mouth mean; region="face": F-LD over all 68 points centred on their mean.
    Returns an array of the leading shape (a float for a single frame (68, 2)).
    Frames where either input has a NaN give NaN.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must both be (..., {NUM_LANDMARKS}, 2), got {p.shape} and {g.shape}")
    if region == "mouth":
        p, g = p[..., MOUTH_SLICE, :], g[..., MOUTH_SLICE, :]
    elif region != "face":
        raise ValueError(f"region must be 'mouth' or 'face', got {region!r}")
    d = np.linalg.norm(centre_landmarks(p) - centre_landmarks(g), axis=-1).mean(axis=-1)
    return d if d.ndim else float(d)
