"""GaussianMaskNoise: the mask is where the landmarks are, the noise is where the mask is, and it is reproducible."""

import math

import pytest
import torch

from talking_head.constants import NUM_LANDMARKS
from talking_head.models.mask_noise import GaussianMaskNoise, MaskNoiseOutput


B, C, F, H, W = 2, 3, 2, 32, 32
# The paper's dotted mask (mask_mode="landmarks"); the region mode is tested in test_mouth_box.py.
SMALL = dict(mask_mode="landmarks", kernel_size=7, sigma=1.5, threshold=0.1)  # half-window 3 px: fits 32×32


def make_frames(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, C, F, H, W, generator=g) * 2 - 1).to(dtype)


def make_landmarks(seed=0, n=NUM_LANDMARKS):
    # Normalised points kept in the middle of the frame, so a border band is far from every landmark.
    g = torch.Generator().manual_seed(seed)
    return 0.35 + 0.3 * torch.rand(B, F, n, 2, generator=g)


def at_pixel(x, y, size=(H, W)):
    """Normalised coordinates of pixel column x, row y (pixel centres sit on integer coordinates)."""
    return torch.tensor([x / size[1], y / size[0]])


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shapes_and_dtype(dtype):
    layer = GaussianMaskNoise(**SMALL)
    out = layer(make_frames(dtype), make_landmarks(), generator=seeded(0))
    assert isinstance(out, MaskNoiseOutput)
    assert out.noised_frames.shape == (B, C, F, H, W) and out.noised_frames.dtype == dtype
    assert out.mask.shape == (B, 1, F, H, W) and out.mask.dtype == dtype
    noised, mask = layer(make_frames(dtype), make_landmarks(), generator=seeded(0), return_dict=False)
    assert torch.equal(noised, out.noised_frames) and torch.equal(mask, out.mask)


def test_uniform_mask_is_binary_one_at_landmarks_and_zero_far_away():
    layer = GaussianMaskNoise(**SMALL)
    landmarks = make_landmarks()
    landmarks[0, 0, 0] = at_pixel(12, 14)  # one landmark exactly on a pixel centre
    mask = layer.compute_mask(landmarks, H, W)
    assert mask.shape == (B, 1, F, H, W) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[0, 0, 0, 14, 12] == 1
    # Every pixel whose distance to every landmark exceeds the window half-size (3 px) is exactly 0.
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).float().reshape(-1, 2)
    points = landmarks * torch.tensor([W, H])
    for b in range(B):
        for f in range(F):
            dist = torch.cdist(pixels, points[b, f]).min(dim=1).values.reshape(H, W)
            far = dist > 3 * 2**0.5 + 1
            assert far.any()
            assert (mask[b, 0, f][far] == 0).all()
            # and every landmark's own nearest pixel is masked
            nearest = points[b, f].round().long()
            assert (mask[b, 0, f, nearest[:, 1], nearest[:, 0]] == 1).all()
    # Covers blobs, not the frame: a few pixels around each point.
    assert 0 < mask.mean() < 0.9


def test_noise_replaces_masked_pixels_only():
    layer = GaussianMaskNoise(**SMALL)
    frames = make_frames()
    out = layer(frames, make_landmarks(), generator=seeded(0))
    mask = out.mask.expand_as(frames).bool()
    assert torch.equal(out.noised_frames[~mask], frames[~mask])  # bit for bit
    noise = out.noised_frames[mask]
    assert noise.numel() > 0
    assert noise.min() >= -1 and noise.max() <= 1
    assert (noise != frames[mask]).all()
    # U(-1, 1): mean near 0, spread over the whole pixel range
    assert abs(noise.mean().item()) < 0.1 and noise.min() < -0.9 and noise.max() > 0.9


def test_seeded_generator_is_deterministic_and_seed_dependent():
    layer = GaussianMaskNoise(**SMALL)
    frames, landmarks = make_frames(), make_landmarks()
    a = layer(frames, landmarks, generator=seeded(123)).noised_frames
    b = layer(frames, landmarks, generator=seeded(123)).noised_frames
    c = layer(frames, landmarks, generator=seeded(124)).noised_frames
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_list_of_generators_seeds_each_sample():
    layer = GaussianMaskNoise(**SMALL)
    frames, landmarks = make_frames(), make_landmarks()
    both = layer(frames, landmarks, generator=[seeded(1), seeded(2)]).noised_frames
    first = layer(frames[:1], landmarks[:1], generator=seeded(1)).noised_frames
    second = layer(frames[1:], landmarks[1:], generator=seeded(2)).noised_frames
    assert torch.equal(both, torch.cat([first, second]))
    with pytest.raises(ValueError, match="list of 3 generators but the batch size is 2"):
        layer(frames, landmarks, generator=[seeded(1), seeded(2), seeded(3)])


def test_gaussian_additive_weights_noise_by_the_blurred_map():
    layer = GaussianMaskNoise(**SMALL, noise_type="gaussian_additive", noise_scale=0.5)
    frames, landmarks = make_frames(), make_landmarks(n=4)
    out = layer(frames, landmarks, generator=seeded(0))
    mask = out.mask
    assert mask.min() >= 0 and mask.max() <= 1
    assert ((mask > 0.05) & (mask < 0.95)).any()  # soft weights, not a binary mask
    zero = (mask == 0).expand_as(frames)
    assert torch.equal(out.noised_frames[zero], frames[zero])
    assert (out.noised_frames[~zero] != frames[~zero]).any()
    # The noise is exactly scale * weight * N(0, 1): dividing it out recovers a standard normal sample.
    heavy = (mask > 0.5).expand_as(frames)
    z = ((out.noised_frames - frames) / (0.5 * mask))[heavy]
    assert z.numel() > 50 and abs(z.std().item() - 1) < 0.35
    same = GaussianMaskNoise(**SMALL, noise_type="gaussian_additive", noise_scale=0.0)
    assert torch.equal(same(frames, landmarks, generator=seeded(0)).noised_frames, frames)


@pytest.mark.parametrize("x, y", [(10.0, 17.0), (10.3, 17.6)])
def test_blob_is_centred_on_the_landmark(x, y):
    landmarks = torch.zeros(1, 1, 1, 2)
    landmarks[0, 0, 0] = at_pixel(x, y)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")

    def centroid(m):
        m = m[0, 0, 0]
        return (m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()

    # The soft map is centred exactly, even between pixels ...
    soft = GaussianMaskNoise(**SMALL, noise_type="gaussian_additive").compute_mask(landmarks, H, W)
    cx, cy = centroid(soft)
    assert cx.item() == pytest.approx(x, abs=1e-3) and cy.item() == pytest.approx(y, abs=1e-3)
    # Peak 1 on a pixel centre; between pixels the bilinear splat lowers it, at worst (half a pixel off on both
    # axes) to ((1 + exp(-1 / 2 sigma^2)) / 2) ** 2.
    worst = ((1 + math.exp(-1 / (2 * SMALL["sigma"] ** 2))) / 2) ** 2
    assert soft.max() == 1.0 if x == int(x) else worst <= soft.max() < 1.0
    # ... and the thresholded mask is centred to within a pixel (exactly on a pixel centre).
    hard = GaussianMaskNoise(**SMALL).compute_mask(landmarks, H, W)
    cx, cy = centroid(hard)
    tol = 1e-4 if x == int(x) else 0.6
    assert cx.item() == pytest.approx(x, abs=tol) and cy.item() == pytest.approx(y, abs=tol)


def test_points_off_the_frame_or_missing_contribute_nothing():
    layer = GaussianMaskNoise(**SMALL)
    landmarks = torch.full((1, 1, 3, 2), 5.0)  # far outside (would be 160 px)
    landmarks[0, 0, 1] = float("nan")  # a failed detection
    landmarks[0, 0, 2] = torch.tensor([-1e30, 1e30])
    assert layer.compute_mask(landmarks, H, W).sum() == 0
    # A point just past the right edge still shows the part of its blob inside the frame.
    landmarks[0, 0, 0] = at_pixel(W + 1, 10)
    mask = layer.compute_mask(landmarks, H, W)[0, 0, 0]
    assert mask[10, W - 1] == 1 and mask[:, : W - 4].sum() == 0


def test_save_and_load_round_trip(tmp_path):
    layer = GaussianMaskNoise(mask_mode="landmarks", kernel_size=9, sigma=2.0, threshold=0.25,
                              noise_type="gaussian_additive", noise_scale=0.7)
    layer.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = GaussianMaskNoise.from_pretrained(tmp_path)
    for key in ("kernel_size", "sigma", "threshold", "noise_type", "noise_scale"):
        assert loaded.config[key] == layer.config[key]
    assert torch.equal(loaded.kernel, layer.kernel)
    frames, landmarks = make_frames(), make_landmarks()
    a = layer(frames, landmarks, generator=seeded(5))
    b = loaded(frames, landmarks, generator=seeded(5))
    assert torch.equal(a.noised_frames, b.noised_frames) and torch.equal(a.mask, b.mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=4), "kernel_size must be an odd integer >= 1, got 4"),
        (dict(kernel_size=0), "kernel_size must be an odd integer"),
        (dict(sigma=0.0), "sigma must be a finite number > 0"),
        (dict(threshold=1.0), r"threshold must be in the open interval \(0, 1\), got 1.0"),
        (dict(threshold=0), "threshold must be in the open interval"),
        (dict(noise_type="salt"), "noise_type must be one of uniform_replace, gaussian_additive, got 'salt'"),
        (dict(noise_scale=-1.0), "noise_scale must be a finite number >= 0"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMaskNoise(**kwargs)


def test_bad_inputs_raise():
    layer = GaussianMaskNoise(**SMALL)
    frames, landmarks = make_frames(), make_landmarks()
    with pytest.raises(ValueError, match=r"frames must be \(B, C, F, H, W\), got shape \(2, 3, 8\)"):
        layer(torch.zeros(2, 3, 8), landmarks)
    with pytest.raises(ValueError, match="frames must be a floating point tensor"):
        layer(frames.to(torch.uint8), landmarks)
    with pytest.raises(ValueError, match=r"landmarks must be \(B, F, N, 2\).*got shape \(2, 2, 68\)"):
        layer(frames, landmarks[..., 0])
    with pytest.raises(ValueError, match=r"to match frames of shape \(2, 3, 2, 32, 32\), got shape \(2, 3, 68, 2\)"):
        layer(frames, torch.rand(2, 3, 68, 2))
    with pytest.raises(ValueError, match="height must be a positive integer"):
        layer.compute_mask(landmarks, 0, W)
