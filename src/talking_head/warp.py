"""The warp stage (DESIGN.md 8.2.1): the reference's own mouth, moved onto each target frame's landmarks.

    out = warp_box(reference_box, reference_points, target_points)
    out.warped    # (B, C, H, W): the reference box, warped piecewise-affinely onto the targets
    out.trust     # (B, 1, H, W): 1 where the warp shows the person's real pixels, 0 where it cannot

Boxes are (B, C, H, W) float tensors (a mouth box, `talking_head.mouth_box`); points are iBUG-68 landmarks
(B, 68, 2) in [0, 1] coordinates of the box, as `MouthBox.normalise` and `BoxTrack.local` give them: x = 0 is
the left edge of pixel 0 and x = 1 the right edge of the last pixel (pixel i covers [i, i + 1) / W), which is
also `grid_sample`'s convention with align_corners=False. A reference with batch 1 serves every target.

The geometry is one fixed triangulation: the lower-face landmarks (jaw 2-14, nose base 31-35, mouth 48-67, the
`LOWER_FACE_POINTS` of the mouth box) plus 16 fixed points on the box border, so the triangles tile the whole
box and its border stays put. Each target triangle takes its pixels from the matching reference triangle (one
affine map each); `grid_sample` does the sampling, so the warp is batched, differentiable in the box and the
points, and every output value is an interpolation of input values.

A triangle that is degenerate (area near 0, in the target or the reference) or folded (mirrored between the
reference and the target: a profile view, landmarks crossing) moves nothing: pixels no valid triangle claims
show the reference unwarped. `trust` is 0 there, on the footprint of those triangles, and inside the
target's inner mouth (points 60-67) when it is open wider than the reference's: a warp cannot make teeth or
the inside of a mouth; that is the renderer's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.models.mask_noise import LOWER_FACE_POINTS
from talking_head.mouth_box import BoxTrack, feather

INNER_MOUTH_POINTS = tuple(range(60, 68))
# The canonical lower face the triangulation is built on, in [0, 1] of its mouth box: the mean of the dev data's
# frames (Obama and the GRID speakers, every 10th frame), with the lower lip and the chin moved down by 0.04 of
# the box so that Delaunay's triangles follow both lip contours (with the mean's nearly closed mouth an edge of
# the upper lip ran through the mouth's corner).
CANONICAL_LOWER_FACE = np.array([
    (0.143, 0.317), (0.163, 0.429), (0.199, 0.541), (0.256, 0.626), (0.329, 0.699), (0.414, 0.754),  # 2-7
    (0.518, 0.770), (0.619, 0.745), (0.698, 0.684), (0.762, 0.607), (0.811, 0.519), (0.840, 0.407),  # 8-13
    (0.857, 0.295), (0.431, 0.295), (0.470, 0.304), (0.513, 0.312), (0.553, 0.301), (0.591, 0.289),  # 14, 31-35
    (0.374, 0.463), (0.424, 0.419), (0.477, 0.395), (0.515, 0.404), (0.553, 0.392), (0.606, 0.410),  # 48-53
    (0.654, 0.449), (0.609, 0.537), (0.559, 0.563), (0.518, 0.570), (0.477, 0.568), (0.424, 0.548),  # 54-59
    (0.401, 0.461), (0.477, 0.436), (0.516, 0.437), (0.554, 0.432), (0.628, 0.449), (0.556, 0.503),  # 60-65
    (0.517, 0.511), (0.478, 0.508),  # 66-67
])
# Fixed points on the box border: the corners and three more on each side.
_STEPS = np.linspace(0.0, 1.0, 5)[:-1]
BORDER_POINTS = np.concatenate([np.stack([_STEPS, 0 * _STEPS], 1), np.stack([1 + 0 * _STEPS, _STEPS], 1),
                                np.stack([1 - _STEPS, 1 + 0 * _STEPS], 1), np.stack([0 * _STEPS, 1 - _STEPS], 1)])
# Twice a triangle's area below which it is degenerate, in box units (0.004 px² in a 64² box, 0.03 in 170²).
MIN_AREA = 1e-6
# How much wider (inner-mouth area, box units; 1 px² in a 64² box) the target's mouth may open before its
# inside is no longer trusted.
OPEN_MARGIN = 2.5e-4
# Tolerance of the inside-a-triangle test: pixels on a shared edge belong to the first triangle.
_EDGE = 1e-6


def _area2(a, b, c):
    """Twice the signed area of triangles with corners a, b, c (..., 2); > 0 when counter-clockwise in (x, y)."""
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def _triangulate() -> torch.Tensor:
    """(T, 3) indices into [lower-face points, border points], each triangle counter-clockwise canonically."""
    from scipy.spatial import Delaunay

    points = np.concatenate([CANONICAL_LOWER_FACE, BORDER_POINTS])
    triangles = Delaunay(points).simplices.copy()
    flip = _area2(*(points[triangles[:, k]] for k in range(3))) < 0
    triangles[flip] = triangles[flip][:, ::-1]
    return torch.from_numpy(triangles).long()


TRIANGLES = _triangulate()


@dataclass
class WarpOutput:
    """`warp_box`'s result: `warped` (B, C, H, W) in the box's dtype; `trust` (B, 1, H, W) in {0, 1}, same dtype;
    `fallback` (B, T) bool: the triangles of `TRIANGLES` that were degenerate or folded."""

    warped: torch.Tensor
    trust: torch.Tensor
    fallback: torch.Tensor


def _check_points(points, name: str) -> torch.Tensor:
    if not torch.is_tensor(points) or points.ndim != 3 or points.shape[1:] != (68, 2):
        shape = tuple(points.shape) if torch.is_tensor(points) else type(points).__name__
        raise ValueError(f"{name} must be a (B, 68, 2) tensor of [0, 1] box coordinates, got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {points.dtype}")
    if not torch.isfinite(points.detach()).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return points


def _control_points(points: torch.Tensor) -> torch.Tensor:
    """(B, 68, 2) landmarks -> (B, 54, 2): the lower-face points, then the fixed border points."""
    border = torch.as_tensor(BORDER_POINTS, dtype=points.dtype, device=points.device)
    return torch.cat([points[:, list(LOWER_FACE_POINTS)], border.expand(points.shape[0], -1, -1)], dim=1)


def _barycentric(pixels: torch.Tensor, corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentric coordinates (B, P, 3) of pixels (P, 2) in triangles (B, 3, 2), and which pixels are inside."""
    a, b, c = corners.unbind(1)
    den = _area2(a, b, c)
    usable = den.abs() >= MIN_AREA
    den = torch.where(usable, den, torch.ones_like(den))[:, None]  # no inf, not even in the unused branch's gradient
    d = pixels[None] - a[:, None]
    u, v = (b - a)[:, None], (c - a)[:, None]
    l1 = (d[..., 0] * v[..., 1] - d[..., 1] * v[..., 0]) / den
    l2 = (u[..., 0] * d[..., 1] - u[..., 1] * d[..., 0]) / den
    bary = torch.stack([1 - l1 - l2, l1, l2], dim=-1)
    return bary, (bary >= -_EDGE).all(dim=-1) & usable[:, None]


def _inside_polygon(pixels: torch.Tensor, polygon: torch.Tensor) -> torch.Tensor:
    """(B, P) whether pixels (P, 2) lie inside polygons (B, V, 2) (even-odd rule: any simple polygon)."""
    a, b = polygon[:, None], polygon.roll(-1, dims=1)[:, None]  # (B, 1, V, 2) edges a -> b
    x, y = pixels[None, :, None, 0], pixels[None, :, None, 1]  # (1, P, 1)
    spans = (a[..., 1] > y) != (b[..., 1] > y)
    dy = torch.where(spans, b[..., 1] - a[..., 1], torch.ones_like(a[..., 1]))
    crossing_x = a[..., 0] + (y - a[..., 1]) * (b[..., 0] - a[..., 0]) / dy
    return ((spans & (x < crossing_x)).sum(dim=-1) % 2) == 1


def _polygon_area(polygon: torch.Tensor) -> torch.Tensor:
    """(B,) absolute area of polygons (B, V, 2) (shoelace)."""
    return 0.5 * _area2(torch.zeros_like(polygon), polygon, polygon.roll(-1, dims=1)).sum(dim=1).abs()


def warp_box(reference_box: torch.Tensor, reference_points: torch.Tensor, target_points: torch.Tensor) -> WarpOutput:
    """Warp `reference_box` (B or 1, C, H, W) from `reference_points` (B or 1, 68, 2) onto `target_points`
    (B, 68, 2), all points in [0, 1] box coordinates (see the module docstring)."""
    if not torch.is_tensor(reference_box) or reference_box.ndim != 4 or not reference_box.is_floating_point():
        shape = tuple(reference_box.shape) if torch.is_tensor(reference_box) else type(reference_box).__name__
        raise ValueError(f"reference_box must be a float (B, C, H, W) tensor, got {shape}")
    target = _check_points(target_points, "target_points")
    reference = _check_points(reference_points, "reference_points")
    batch = target.shape[0]
    for name, n in (("reference_box", reference_box.shape[0]), ("reference_points", reference.shape[0])):
        if n not in (1, batch):
            raise ValueError(f"{name} has batch {n}; expected 1 or the targets' {batch}")
    height, width = reference_box.shape[-2:]
    device = reference_box.device
    dtype = torch.float64 if reference_box.dtype == torch.float64 else torch.float32
    src = _control_points(reference.to(device, dtype)).expand(batch, -1, -1)
    dst = _control_points(target.to(device, dtype))
    triangles = TRIANGLES.to(device)
    src_tri, dst_tri = src[:, triangles], dst[:, triangles]  # (B, T, 3, 2)
    src_area, dst_area = _area2(*src_tri.unbind(2)), _area2(*dst_tri.unbind(2))  # (B, T)
    fallback = (src_area.abs() < MIN_AREA) | (dst_area.abs() < MIN_AREA) | (src_area * dst_area < 0)

    ys, xs = torch.meshgrid((torch.arange(height, device=device, dtype=dtype) + 0.5) / height,
                            (torch.arange(width, device=device, dtype=dtype) + 0.5) / width, indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (P, 2): pixel centres
    sample = pixels.expand(batch, -1, -1)  # where each output pixel reads the reference: unwarped by default
    claimed = torch.zeros(batch, pixels.shape[0], dtype=torch.bool, device=device)
    in_fallback = torch.zeros_like(claimed)  # inside a fallback triangle's footprint
    # A loop over the ~90 triangles (not over pixels): memory stays (B, P) whatever the box size.
    for k in range(triangles.shape[0]):
        bary, inside = _barycentric(pixels, dst_tri[:, k])
        good = ~fallback[:, k, None]
        take = inside & good & ~claimed
        sample = torch.where(take[..., None], bary @ src_tri[:, k], sample)
        claimed |= take
        in_fallback |= inside & ~good
    grid = (2 * sample - 1).reshape(batch, height, width, 2).to(reference_box.dtype)
    warped = F.grid_sample(reference_box.expand(batch, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)

    inner = list(INNER_MOUTH_POINTS)
    target_mouth, reference_mouth = (p[:, inner].detach().to(device, dtype) for p in (target, reference))
    opened = _polygon_area(target_mouth) > _polygon_area(reference_mouth) + OPEN_MARGIN  # (B,)
    mouth = _inside_polygon(pixels, target_mouth) & opened[:, None]
    trust = claimed & ~in_fallback & ~mouth
    return WarpOutput(warped=warped, trust=trust.reshape(batch, 1, height, width).to(reference_box.dtype),
                      fallback=fallback)


def warped_frames(source, targets, mask_noise=None, frames_per_batch: int = 16):
    """Yield the frames (H, W, 3) uint8 of an identity `source` (talking_head.identity: a still photo or a
    video) with its reference frame's lower face warped onto `targets` (F, 68, 2), pixels of the frames shown.

    The composite is the renderer's (and the dubbing floor's, talking_head.evaluation.dubbing): one `BoxTrack`
    box, the warp at the reference box's own resolution (nothing is upscaled), the `mask_noise` layer's region
    of the targets and the reference (default `GaussianMaskNoise()`), its feathered edge.
    """
    from talking_head.models.mask_noise import GaussianMaskNoise

    layer = mask_noise if mask_noise is not None else GaussianMaskNoise()
    targets = torch.as_tensor(np.asarray(targets, np.float32))
    track = BoxTrack(source, targets, tuple(layer.config.region_points))
    side = track.reference_place.side
    region = layer.compute_region(track.local[None], side, side, track.ref_local[None, None])[:, :, 0]
    weight = feather(region)  # (1, 1, side, side)
    reference = track.reference_box(side)
    for start in range(0, track.num_frames, frames_per_batch):
        frames = range(start, min(start + frames_per_batch, track.num_frames))
        with torch.no_grad():
            warped = warp_box(reference, track.ref_local[None], track.local[start:frames.stop]).warped
        patch = torch.cat([warped, weight.expand(len(frames), -1, -1, -1)], dim=1)
        yield from track.composite(frames, patch)
