"""The warp stage (talking_head.warp): the reference mouth box moved onto target landmarks, piecewise affinely."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talking_head.models.mask_noise import LOWER_FACE_POINTS
from talking_head.warp import CANONICAL_LOWER_FACE, INNER_MOUTH_POINTS, TRIANGLES, warp_box, warped_frames

LOWER = list(LOWER_FACE_POINTS)


def face_points(batch: int = 1) -> torch.Tensor:
    """(batch, 68, 2) landmarks in [0, 1] of the box: the canonical lower face (other points unused)."""
    pts = torch.full((batch, 68, 2), 0.5)
    pts[:, LOWER] = torch.as_tensor(CANONICAL_LOWER_FACE, dtype=torch.float32)
    return pts


def smooth_image(batch: int = 1, size: int = 48, seed: int = 0) -> torch.Tensor:
    """A smooth random image (upsampled noise): bilinear sampling of it is well behaved everywhere."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def pixel_centres(size: int) -> torch.Tensor:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs, ys], dim=-1)  # (size, size, 2) in [0, 1]


def inside_hull(points: torch.Tensor, size: int, margin: float = 2.0) -> torch.Tensor:
    """(size, size) bool: pixel centres inside the convex hull of the lower-face points (68, 2), `margin` px in."""
    from matplotlib.path import Path
    from scipy.spatial import ConvexHull

    pts = points[LOWER].numpy()
    hull = Path(pts[ConvexHull(pts).vertices])
    inside = hull.contains_points(pixel_centres(size).reshape(-1, 2).numpy(), radius=-margin / size)
    return torch.from_numpy(inside).reshape(size, size)


def test_the_triangulation_follows_the_lip_contours():
    """Every edge of the outer and inner lip is an edge of the triangulation, and every triangle has area."""
    edges = {frozenset((int(t[i]), int(t[(i + 1) % 3]))) for t in TRIANGLES for i in range(3)}
    position = {p: k for k, p in enumerate(LOWER)}
    for ring in (list(range(48, 60)), list(INNER_MOUTH_POINTS)):
        for a, b in zip(ring, ring[1:] + ring[:1]):
            assert frozenset((position[a], position[b])) in edges, (a, b)
    assert TRIANGLES.shape[1] == 3 and TRIANGLES.min() >= 0 and TRIANGLES.max() == len(LOWER) + 16 - 1


def test_identity_landmarks_give_the_reference_back():
    image, pts = smooth_image(), face_points()
    out = warp_box(image, pts, pts)
    assert out.warped.shape == image.shape and out.warped.dtype == image.dtype
    assert out.trust.shape == (1, 1, 48, 48) and out.trust.dtype == image.dtype
    assert torch.allclose(out.warped, image, atol=1e-4)
    assert out.trust.min() == 1 and not out.fallback.any()


def test_an_affine_motion_of_the_points_moves_the_image_affinely():
    """Inside the hull of the moved face points every triangle maps by the same affine: the warp equals a
    grid_sample of that one affine there (the border points stay put, so outside the hull it does not)."""
    size = 64
    image, ref = smooth_image(size=size), face_points()
    angle, scale, shift = math.radians(6), 1.05, torch.tensor([0.02, -0.015])
    rot = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = torch.tensor([0.5, 0.5])
    target = (ref - centre) @ rot.T + centre + shift
    out = warp_box(image, ref, target)

    # The global affine, backwards: each output pixel reads the reference at A^-1(p).
    source = (pixel_centres(size) - centre - shift) @ torch.linalg.inv(rot).T + centre
    expected = F.grid_sample(image, (2 * source - 1)[None], mode="bilinear", padding_mode="border",
                             align_corners=False)
    inside = inside_hull(target[0], size)
    assert inside.sum() > 500  # the lower face covers a good part of the box
    diff = (out.warped - expected)[0].abs().amax(dim=0)
    assert diff[inside].max() < 1e-4
    assert diff[~inside].max() > 1e-2  # outside the hull the fixed border points bend the motion
    assert not out.fallback.any()


def test_folded_landmarks_stay_finite_inside_the_input_range_and_are_not_trusted():
    image, ref = smooth_image(batch=2), face_points(2)
    target = ref.clone()
    target[0, 48:60, 1] = 1.0 - target[0, 48:60, 1]  # the outer lip mirrored upside down: crossing points
    target[1, 2:15, 0] = target[1, 2:15, 0].flip(0)  # the jaw's left and right swapped
    out = warp_box(image, ref, target)
    assert torch.isfinite(out.warped).all()
    assert out.warped.min() >= image.min() - 1e-6 and out.warped.max() <= image.max() + 1e-6
    assert out.fallback.any(dim=1).all()  # both frames have folded triangles ...
    assert (out.trust == 0).any() and (out.trust == 1).any()  # ... which are not trusted; the rest is


def test_degenerate_triangles_fall_back_to_the_unwarped_reference():
    image, ref = smooth_image(), face_points()
    collapsed = ref.clone()
    collapsed[:, LOWER] = 0.5  # every lower-face point in one place: the face's triangles have no area
    face_only = (TRIANGLES < len(LOWER)).all(dim=1)
    # A collapsed target: its face triangles cover nothing; the border's fan still tiles the box.
    out = warp_box(image, ref, collapsed)
    assert out.fallback[0, face_only].all()
    assert torch.isfinite(out.warped).all() and out.warped.abs().max() <= image.abs().max() + 1e-6
    # A collapsed reference: the face's triangles have nothing to take their pixels from. Inside the face they
    # show the reference unwarped, and the warp is not trusted there.
    flat = warp_box(image, collapsed, ref)
    assert flat.fallback[0, face_only].all() and torch.isfinite(flat.warped).all()
    face = inside_hull(ref[0], 48)
    assert face.sum() > 100 and (flat.trust[0, 0][face] == 0).all()
    assert torch.allclose(flat.warped[0][:, face], image[0][:, face], atol=1e-4)


def test_an_opening_mouth_is_not_trusted_inside():
    image, ref = smooth_image(size=64), face_points()
    target = ref.clone()
    target[:, [65, 66, 67], 1] += 0.06  # the lower inner lip drops: the mouth opens
    target[:, 55:60, 1] += 0.06
    out = warp_box(image, ref, target)
    centre = target[0, 60:68].mean(dim=0)
    x, y = (centre * 64).long().tolist()
    assert out.trust[0, 0, y, x] == 0  # the inside of the opened mouth
    assert out.trust[0, 0, 5, 5] == 1  # far from it
    closing = warp_box(image, target, ref)  # closing a mouth shows lips that exist: trusted
    assert closing.trust[0, 0, y - 2, x] == 1


def test_a_batch_of_frames_shares_one_reference_and_matches_frame_by_frame():
    image = smooth_image(size=32)
    ref = face_points()
    targets = ref.expand(3, -1, -1) + 0.01 * torch.randn(3, 68, 2, generator=torch.Generator().manual_seed(1))
    batch = warp_box(image, ref, targets)
    assert batch.warped.shape == (3, 3, 32, 32) and batch.trust.shape == (3, 1, 32, 32)
    for k in range(3):
        one = warp_box(image, ref, targets[k:k + 1])
        assert torch.allclose(one.warped, batch.warped[k:k + 1], atol=1e-6)
        assert torch.equal(one.trust, batch.trust[k:k + 1])
    double = warp_box(image.double(), ref.double(), targets.double())
    assert double.warped.dtype == torch.float64 and torch.allclose(double.warped.float(), batch.warped, atol=1e-5)


def test_gradients_flow_to_the_box_and_the_points():
    image = smooth_image(size=32).requires_grad_(True)
    ref = face_points().requires_grad_(True)
    target = (face_points() + 0.01).requires_grad_(True)
    out = warp_box(image, ref, target)
    (out.warped * torch.linspace(-1, 1, 32)).sum().backward()
    for t in (image, ref, target):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("box, ref, target, match", [
    (torch.zeros(3, 32, 32), face_points(), face_points(), "reference_box"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), face_points(), face_points(), "reference_box"),
    (torch.zeros(1, 3, 32, 32), face_points(), torch.zeros(1, 20, 2), "target_points"),
    (torch.zeros(1, 3, 32, 32), face_points()[0], face_points(), "reference_points"),
    (torch.zeros(1, 3, 32, 32), face_points(), face_points().long(), "floating point"),
    (torch.zeros(1, 3, 32, 32), face_points(), face_points() * float("nan"), "NaN"),
    (torch.zeros(2, 3, 32, 32), face_points(), face_points(3), "batch"),
    ([[0.0]], face_points(), face_points(), "reference_box"),
])
def test_bad_inputs_are_refused(box, ref, target, match):
    with pytest.raises(ValueError, match=match):
        warp_box(box, ref, target)


def test_warped_frames_composite_only_the_lower_face(face_image):
    """The evaluator's helper: a still photo, its lower face warped onto moved landmarks; pixels away from the
    mouth box stay the photo's own."""
    from talking_head.identity import StillIdentity, load_photo

    image, points = face_image
    photo = load_photo(image, points, crop_face=False)
    targets = np.repeat(points[None], 3, axis=0)
    targets[1:, 55:60, 1] += 3.0  # the lower lip down 3 px
    frames = list(warped_frames(StillIdentity(photo), targets))
    assert len(frames) == 3 and all(f.shape == image.shape and f.dtype == np.uint8 for f in frames)
    assert np.array_equal(frames[0][:20], image[:20])  # the forehead is never touched
    assert np.abs(frames[0].astype(int) - image).max() <= 2  # unmoved landmarks: the photo back (rounding)
    assert np.abs(frames[1].astype(int) - image).max() > 5  # moved ones: the lower face changed
