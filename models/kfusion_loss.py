# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""The KFusion training loss on landmark sequences (models/kfusion_landmarks.py's model; train_landmarks.py)."""

import torch
import torch.nn.functional as F

from talking_head.constants import MOUTH_SLICE, NUM_LANDMARKS

__all__ = ["landmark_loss"]


def landmark_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mouth_weight: float = 0.8,
    all_weight: float = 0.2,
    velocity_weight: float = 0.5,
    centered: bool = False,
    absolute_weight: float = 0.0,
    silent_frames: torch.Tensor | None = None,
    silent_weight: float = 0.0,
    distance: str = "squared",
) -> torch.Tensor:
    r"""
    The KFusion training loss on landmark sequences `(batch, frames, 68, 2)`:

        all_weight * MSE(all 68 points) + mouth_weight * MSE(mouth points 48-67)
        + velocity_weight * MSE(frame-to-frame differences)

    The first two are the authors' 0.2 / 0.8 split: the mouth is what lip sync is judged on. The
    velocity term compares motion, not positions, so per-frame jitter costs extra (with 0.5, white
    noise on the prediction costs about twice what it would without it). Computed in float32.

    With `centered=True` the three terms compare per-frame mean-centred points (the centroid of the 68
    removed from each frame, as M-LD / F-LD do), so the head's translation, which audio cannot tell,
    does not drown the mouth's shape; `absolute_weight` * MSE(all points, not centred) then keeps the
    face where it belongs. `silent_frames` (batch, frames) bool with `silent_weight` > 0 adds
    silent_weight * MSE(mouth points on those frames): the mouth shape on silence, where a closed
    mouth is the whole target.

    `distance="euclidean"` replaces every squared error by the Euclidean distance per point (per
    frame-to-frame motion for the velocity term), which is what M-LD / F-LD average: the model is then
    pulled towards the conditional median of each point rather than its mean.
    """
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"distance must be 'squared' or 'euclidean', got {distance!r}")
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("pred and target must be torch tensors")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    if pred.ndim != 4 or pred.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"pred must be (batch, frames, {NUM_LANDMARKS}, 2), got {tuple(pred.shape)}")
    pred, target = pred.float(), target.float()
    err = _point_error if distance == "euclidean" else F.mse_loss
    absolute = err(pred, target) if absolute_weight else None
    if centered:
        pred = pred - pred.mean(dim=-2, keepdim=True)
        target = target - target.mean(dim=-2, keepdim=True)
    loss = all_weight * err(pred, target)
    if absolute is not None:
        loss = loss + absolute_weight * absolute
    if silent_frames is not None and silent_weight:
        if silent_frames.shape != pred.shape[:2]:
            raise ValueError(f"silent_frames must be (batch, frames) = {tuple(pred.shape[:2])}, "
                             f"got {tuple(silent_frames.shape)}")
        mask = silent_frames.to(device=pred.device, dtype=pred.dtype)
        mouth_pred, mouth_target = pred[:, :, MOUTH_SLICE], target[:, :, MOUTH_SLICE]
        if distance == "euclidean":
            per_frame = _point_error(mouth_pred, mouth_target, reduce=False)
        else:
            per_frame = (mouth_pred - mouth_target).pow(2).mean((-2, -1))
        loss = loss + silent_weight * (per_frame * mask).sum() / mask.sum().clamp_min(1.0)
    loss = loss + mouth_weight * err(pred[:, :, MOUTH_SLICE], target[:, :, MOUTH_SLICE])
    if pred.shape[1] > 1 and velocity_weight:
        loss = loss + velocity_weight * err(pred.diff(dim=1), target.diff(dim=1))
    return loss


def _point_error(pred: torch.Tensor, target: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Mean Euclidean distance between (..., points, 2) sets (per leading index when not `reduce`); the small
    epsilon keeps the gradient finite where a point is exact."""
    dist = ((pred - target).pow(2).sum(-1) + 1e-12).sqrt().mean(-1)
    return dist.mean() if reduce else dist
