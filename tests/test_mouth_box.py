"""The mouth box geometry (talking_head.mouth_box) and the region mode of GaussianMaskNoise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_face_landmarks
from talking_head.models.mask_noise import HEATMAP_GROUPS, LOWER_FACE_POINTS, GaussianMaskNoise
from talking_head.mouth_box import BOX_SCALE, MIN_BOX_SIDE, MouthBox, feather


def test_box_covers_the_lower_face_of_every_frame_and_not_the_eyes():
    pts = synthetic_face_landmarks(200)
    opened = pts.copy()
    opened[5:12, 1] += 20  # the jaw drops in a second frame
    box = MouthBox.from_landmarks(np.stack([pts, opened]))
    lower = np.concatenate([pts, opened])[:, :][np.r_[LOWER_FACE_POINTS, np.array(LOWER_FACE_POINTS) + 68]]
    assert (lower[:, 0] > box.x0).all() and (lower[:, 0] < box.x0 + box.side).all()
    assert (lower[:, 1] > box.y0).all() and (lower[:, 1] < box.y0 + box.side).all()
    extent = (lower.max(0) - lower.min(0)).max()
    assert abs(box.side - BOX_SCALE * extent) <= 1
    eyes = pts[36:48]
    assert (eyes[:, 1] < box.y0 + 0.1 * box.side).all()  # the eyes are at most at the box's top edge


def test_normalise_round_trip_and_scaled():
    box = MouthBox(10, 20, 50)
    pts = np.float32([[10, 20], [60, 70], [35, 45]])
    np.testing.assert_allclose(box.normalise(pts), [[0, 0], [1, 1], [0.5, 0.5]])
    np.testing.assert_allclose(box.denormalise(box.normalise(pts)), pts, atol=1e-5)
    t = torch.from_numpy(pts)
    torch.testing.assert_close(box.denormalise(box.normalise(t)), t)
    assert box.scaled(2.0) == MouthBox(20, 40, 100)


def test_cut_matches_the_pixels_and_replicates_outside_the_image():
    image = torch.arange(3 * 40 * 50, dtype=torch.float32).reshape(1, 3, 40, 50)
    box = MouthBox(5, 6, 16)
    np.testing.assert_array_equal(box.cut(image, 16), image[..., 6:22, 5:21])
    edge = MouthBox(-4, -4, 8).cut(image, 8)  # top-left corner: edge pixels repeated
    assert torch.equal(edge[..., :5, :5], image[..., :1, :1].expand(-1, -1, 5, 5))
    with pytest.raises(ValueError, match="outside"):
        MouthBox(100, 100, 8).cut(image, 8)


def test_paste_changes_only_the_weighted_pixels_inside_the_image():
    image = torch.zeros(2, 3, 30, 40)
    patch = torch.ones(2, 3, 8, 8)
    weight = torch.zeros(1, 1, 8, 8)
    weight[..., 2:6, 2:6] = 1
    box = MouthBox(34, 10, 16)  # sticks out on the right: only the inside part is pasted
    out = box.paste(image, patch, weight)
    assert out.shape == image.shape and torch.equal(image, torch.zeros_like(image))  # input untouched
    changed = (out != 0).any(dim=1)
    ys, xs = torch.nonzero(changed[0], as_tuple=True)
    assert xs.min() >= 34 and ys.min() >= 10 and ys.max() < 26
    assert out.max() == 1


def test_feather_is_one_inside_zero_outside_and_smooth():
    region = torch.zeros(1, 1, 64, 64)
    region[..., 16:48, 16:48] = 1
    w = feather(region)
    assert w[..., :16, :].max() == 0 and w[..., 48:, :].max() == 0  # nothing outside the region
    assert w[0, 0, 32, 32] == pytest.approx(1.0)
    row = w[0, 0, 32, 10:40]
    assert (row.diff() >= -1e-6).all()  # a ramp, no step


def test_too_small_a_face_is_refused_with_a_clear_error():
    tiny = synthetic_face_landmarks(12)
    with pytest.raises(ValueError, match="too small"):
        MouthBox.from_landmarks(tiny)
    assert MouthBox.from_landmarks(synthetic_face_landmarks(64)).side >= MIN_BOX_SIDE


# ------------------------------------------------------------------ region mode of the mask-noise layer
def _box_landmarks(size=64):
    pts = synthetic_face_landmarks(256)
    box = MouthBox.from_landmarks(pts)
    return torch.from_numpy(box.normalise(pts))[None, None].float()  # (1, 1, 68, 2)


def test_region_is_solid_covers_the_mouth_and_spares_the_eyes():
    layer = GaussianMaskNoise()
    assert layer.config.mask_mode == "region"
    lm = _box_landmarks()
    region = layer.compute_region(lm, 64, 64)[0, 0, 0]
    assert set(torch.unique(region).tolist()) <= {0.0, 1.0}
    px = (lm[0, 0] * 64).long()
    for i in list(range(48, 68)) + [8, 33]:  # mouth, chin, nose base
        x, y = px[i].clamp(0, 63)
        assert region[y, x] == 1
    for i in range(36, 48):  # eyes (inside or above the box top) are never masked
        x, y = px[i]
        if 0 <= y < 64 and 0 <= x < 64:
            assert region[y, x] == 0
    # Solid: the centre of the mouth and the cheek between jaw and mouth are covered (no dots).
    mid = ((px[48] + px[4]) // 2).clamp(0, 63)
    assert region[mid[1], mid[0]] == 1
    # A margin is left around it inside the box for the blend.
    assert region[0].max() == 0 and region[-1].max() == 0 and region[:, 0].max() == 0


def test_region_covers_every_frame_and_the_extra_landmarks():
    layer = GaussianMaskNoise()
    lm = _box_landmarks()
    low = lm.clone()
    low[..., 5:12, 1] += 0.12  # jaw open in another frame
    one = layer.compute_region(lm, 64, 64)
    both = layer.compute_region(torch.cat([lm, low], dim=1), 64, 64)
    with_extra = layer.compute_region(lm, 64, 64, extra_landmarks=low)
    assert both.sum() > one.sum() and torch.equal(both, with_extra)
    assert (both >= one).all()
    mask = layer.compute_mask(torch.cat([lm, low], dim=1), 64, 64)
    assert mask.shape == (1, 1, 2, 64, 64) and torch.equal(mask[:, :, 0], mask[:, :, 1])


def test_region_noise_replaces_only_the_region_and_is_seeded():
    layer = GaussianMaskNoise()
    lm = _box_landmarks().expand(1, 3, -1, -1)
    frames = torch.rand(1, 3, 3, 64, 64) * 2 - 1
    a = layer(frames, lm, generator=torch.Generator().manual_seed(0))
    b = layer(frames, lm, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.noised_frames, b.noised_frames)
    outside = a.mask.expand_as(frames) == 0
    assert torch.equal(a.noised_frames[outside], frames[outside])
    assert not torch.equal(a.noised_frames[~outside], frames[~outside])


def test_heatmaps_have_one_channel_per_group_peaking_at_the_points():
    layer = GaussianMaskNoise()
    lm = _box_landmarks()
    maps = layer.heatmaps(lm, 64, 64)
    assert maps.shape == (1, len(HEATMAP_GROUPS), 1, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    x, y = (lm[0, 0, 62] * 64).long()
    assert maps[0, 2, 0, y, x] > 0.5  # inner lip channel at an inner-lip point
    assert maps[0, 2, 0, :5].max() == 0  # nothing at the top of the box


def test_landmarks_mode_is_the_papers_dotted_mask():
    layer = GaussianMaskNoise(mask_mode="landmarks", kernel_size=5, sigma=1.0)
    lm = _box_landmarks()
    dotted = layer.compute_mask(lm, 64, 64)
    region = GaussianMaskNoise().compute_mask(lm, 64, 64)
    assert 0 < dotted.sum() < region.sum()


@pytest.mark.parametrize("kw", [dict(mask_mode="blob"), dict(region_points=(1, 2)), dict(region_points=(1, 2, 99)),
                                dict(region_sigma=0.0), dict(region_margin=float("nan")), dict(heatmap_sigma=2)])
def test_bad_region_settings_are_refused(kw):
    with pytest.raises(ValueError):
        GaussianMaskNoise(**kw)


def test_region_settings_round_trip(tmp_path):
    layer = GaussianMaskNoise(region_points=tuple(range(48, 68)), region_margin=0.05)
    layer.save_pretrained(tmp_path)
    again = GaussianMaskNoise.from_pretrained(tmp_path)
    assert list(again.config.region_points) == list(range(48, 68)) and again.config.region_margin == 0.05
    lm = _box_landmarks()
    assert torch.equal(layer.compute_region(lm, 64, 64), again.compute_region(lm, 64, 64))


def test_a_video_frame_keeps_its_head_pose_but_takes_the_reference_mouth():
    """follow_face: in dubbing the frame's own mouth (the old speech) never drives; its pose does."""
    from types import SimpleNamespace

    from talking_head.mouth_box import follow_face
    from talking_head.mouth_rest import REST_POINTS

    from conftest import synthetic_face_landmarks

    ref = synthetic_face_landmarks(200).astype(np.float64)
    frames = []
    for j in range(3):
        own = ref + np.array([5.0 * j, 2.0 * j])  # the head moved
        own[60:68, 1] += np.where(np.arange(60, 68) >= 65, 4.0 * j, 0.0)  # and the old speech opened the mouth
        frames.append(own)
    source = SimpleNamespace(reference=0, index=lambda i: i, landmarks_at=lambda j: frames[j],
                             face_box=lambda j: (100.0, 100.0, 100.0))
    moves = torch.zeros(3, 68, 2)
    moves[:, 66, 1] = 0.05  # the new speech opens the lower inner lip by 5 px
    out = follow_face(source, moves).numpy()
    speech = list(REST_POINTS)
    for j in range(3):
        expected = ref[speech] + np.array([5.0 * j, 2.0 * j])
        expected[speech.index(66), 1] += 5.0
        np.testing.assert_allclose(out[j][speech], expected, atol=1e-3)  # the reference's mouth, in frame j's pose
        others = [k for k in range(68) if k not in speech]
        np.testing.assert_allclose(out[j][others], frames[j][others], atol=1e-4)  # everything else is the frame's
