"""Head pose between two faces' landmarks: the similarity transform (rotation, uniform scale, translation) that maps
one face's stable points onto another's. The trainer uses it to take head motion out of the landmark targets; the
pipeline uses it to carry the reference's mouth into each frame of a video (dubbing).
"""

from __future__ import annotations

import torch

from talking_head.utils import smooth_over_time

# Points that move with the head, not with speech: the jaw's ends and the nose.
POSE_POINTS = (0, 1, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35)


def align_pose(landmarks: torch.Tensor, reference: torch.Tensor, points=POSE_POINTS,
               smooth_frames: float = 0.0) -> torch.Tensor:
    """landmarks (B, F, 68, 2) moved by the similarity transform (rotation, uniform scale, translation; no
    reflection) that best maps each frame's `points` onto the reference's (B, 68, 2), least squares (Umeyama).

    smooth_frames > 0: the rotation and scale are blurred over the F frames by a Gaussian of that many frames
    (a head turns slowly; the per-frame fit from 13 detected points jitters, and the jitter would turn the mouth
    with it); the translation stays per frame."""
    idx = list(points)
    src = landmarks[..., idx, :].double()  # (B, F, K, 2)
    dst = reference[:, None, idx, :].double().expand_as(src)
    mu_s, mu_d = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    xs, xd = src - mu_s, dst - mu_d
    # For 2-D similarity: with a = sum(xs . xd), b = sum(xs x xd), the rotation is atan2(b, a) and
    # scale = sqrt(a^2 + b^2) / sum |xs|^2.
    a = (xs * xd).sum((-1, -2))
    b = (xs[..., 0] * xd[..., 1] - xs[..., 1] * xd[..., 0]).sum(-1)
    norm = xs.pow(2).sum((-1, -2)).clamp_min(1e-12)
    cos, sin = a / norm, b / norm  # scale * (cos, sin), (B, F)
    if smooth_frames > 0 and cos.shape[1] > 1:
        cos, sin = smooth_over_time(cos, smooth_frames), smooth_over_time(sin, smooth_frames)
    x = landmarks.double() - mu_s
    out = torch.stack([cos[..., None] * x[..., 0] - sin[..., None] * x[..., 1],
                       sin[..., None] * x[..., 0] + cos[..., None] * x[..., 1]], dim=-1) + mu_d
    return out.to(landmarks.dtype)

