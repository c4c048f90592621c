"""The two figures the trainers validate with: PSNR and the landmark distances M-LD / F-LD (DESIGN 5)."""

from __future__ import annotations

import math

import torch

from talking_head.constants import MOUTH_SLICE


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of two images/clips in [-1, 1] (data range 2)."""
    mse = torch.mean((pred.float().clamp(-1, 1) - target.float()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


def landmark_distance(pred: torch.Tensor, target: torch.Tensor, size: float = 256.0) -> tuple[float, float]:
    """(M-LD, F-LD) as in DESIGN 5: per frame, both landmark sets are mean-centred (translation removed),
    then the mean Euclidean distance per point in pixels of a `size`² frame, over the 20 mouth points (M) or
    all 68 (F). `pred`, `target`: (..., 68, 2) normalised landmarks."""
    p = pred.detach().float() * size
    t = target.detach().float() * size
    p = p - p.mean(dim=-2, keepdim=True)
    t = t - t.mean(dim=-2, keepdim=True)
    dist = (p - t).norm(dim=-1)  # (..., 68)
    return float(dist[..., MOUTH_SLICE].mean()), float(dist.mean())
