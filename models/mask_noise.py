"""Gaussian mask-noise layer: put noise on the frames where the target landmarks are.

Two modes (`mask_mode`):

* ``"region"`` (default, DESIGN.md 7.2): the frames are a mouth box, and one solid region covering the lower
  face of every frame of the clip is regenerated. The paper's Gaussians (eq. 1) are put at the lower-face
  landmarks (`region_points`: jaw 4-12, nose base 31-35, mouth 48-67), the convex hull of all those points over
  the clip is filled in, the map is blurred by `region_margin` and thresholded (eq. 2): a soft-edged binary
  region, the same for every frame, that eyes, brows and the nose bridge never enter. The landmarks are also
  drawn as Gaussian heatmaps (`heatmaps`), the mouth shape the UNet is asked to draw.
* ``"landmarks"``: the paper's per-landmark dotted mask over the whole face (kept for the ablation), below.

Paper (DESIGN.md 2.3), eq. (1)-(2): every landmark becomes a Gaussian blob (kernel size k, std sigma) on an
F×H×W map, a threshold t turns the map into a binary mask M, and where M = 1 the pixel is replaced by uniform
noise. The UNet then learns to paint the face (mouth, eyes, jaw) back into those noisy regions so that it
matches the landmarks. The authors' later code adds Gaussian noise weighted by the blurred map instead, with no
threshold; that is `noise_type="gaussian_additive"`.

How the map is built (vectorised, no loop over landmarks or frames). Each landmark is bilinearly splatted onto
the pixel grid (sub-pixel accuracy) and the result is convolved with a separable k×k Gaussian kernel. Because
both the bilinear weights and the kernel factor into an x part and a y part, that equals, per frame,

    map[y, x] = sum over landmarks n of  gy[n, y] * gx[n, x]        (one batched matmul: gy^T @ gx)

where gx[n, :] is the 1-D profile of landmark n along x (its two bilinear taps convolved with the 1-D kernel).
We compute it that way: it needs no scatter (deterministic on every device) and a landmark just outside the frame
still shows the part of its blob that falls inside, as it should. The bilinear splat keeps each blob's centroid
exactly on its landmark; its peak is 1 on a pixel centre and at worst ((1 + exp(-1/2σ²)) / 2)² between pixels
(0.97 for σ = 4).

Conventions: frames are (B, C, F, H, W) in [-1, 1]; landmarks are (B, F, N, 2) normalised (x, y) as in
`talking_head.constants` (N is 68 in this project but any number works): x * W, y * H are pixel coordinates
in which pixel (i, j) has its centre at (i, j), the convention of dlib and OpenCV landmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor


logger = logging.get_logger(__name__)

NOISE_TYPES = ("uniform_replace", "gaussian_additive")
MASK_MODES = ("region", "landmarks")
# iBUG-68 indices: jaw 2-14, nose base 31-35, mouth 48-67 (the part of the face that moves with speech; the mouth box
# the evaluation scores).
LOWER_FACE_POINTS = tuple(range(2, 15)) + tuple(range(31, 36)) + tuple(range(48, 68))
# The region the renderer regenerates by default: the chin part of the jaw (4-12), the nose base and the mouth.
# The jaw's sides (2-3, 13-14) barely move in speech; left out, the face's outline against the background stays
# the frame's own and the box is narrower (more of the 64² box for the mouth). Measured (docs/results/
# lower-face-renderer/): the same UNet with this region at inference only, +0.5 dB in dubbing (ground-truth
# landmarks); trained with it (attempt r2, 2000 updates), 36.8 dB vs 32.4. LOWER_FACE_POINTS stays the
# evaluation's mouth box.
REGION_POINTS = tuple(range(4, 13)) + tuple(range(31, 36)) + tuple(range(48, 68))
# Heatmap channels: the jaw line with the nose base (the frame of the lower face), outer lips, inner lips.
HEATMAP_GROUPS = (tuple(range(2, 15)) + tuple(range(31, 36)), tuple(range(48, 60)), tuple(range(60, 68)))


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """A peak-1 1-D Gaussian of std `sigma` pixels, 2 * ceil(3 sigma) + 1 taps."""
    return _gaussian_kernel_1d(2 * int(math.ceil(3.0 * sigma)) + 1, float(sigma))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable, sum-normalised Gaussian blur of `(N, C, H, W)` float images, edges replicated."""
    if sigma <= 0:
        return image
    kernel = gaussian_kernel_1d(sigma).to(device=image.device, dtype=image.dtype)
    kernel = kernel / kernel.sum()
    n, c, h, w = image.shape
    half = kernel.shape[0] // 2
    x = image.reshape(n * c, 1, h, w)
    x = torch.nn.functional.pad(x, (half, half, 0, 0), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.pad(x, (0, 0, half, half), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices (M, 2) of the convex hull of (N, 2) points, in order (Qhull; the points as given if degenerate)."""
    pts = points[np.isfinite(points).all(axis=1)].astype(np.float64)
    # A long clip has thousands of frames: points on a 1/4-pixel grid give the same hull, far fewer of them.
    pts = np.unique(np.round(pts * 4.0) / 4.0, axis=0)
    if len(pts) < 3:
        return pts
    from scipy.spatial import ConvexHull, QhullError

    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # all points on a line: no area to fill (the Gaussians still cover them)
        return pts[:0]


def _fill_polygon(vertices: np.ndarray, height: int, width: int, device) -> torch.Tensor:
    """(H, W) float mask of the pixel centres inside a convex polygon given in pixel coordinates."""
    if len(vertices) < 3:
        return torch.zeros(height, width, device=device)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    edge = torch.roll(v, -1, dims=0) - v  # (M, 2)
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    px, py = xs.reshape(1, -1) + 0.5, ys.reshape(1, -1) + 0.5  # pixel centres
    cross = edge[:, :1] * (py - v[:, 1:]) - edge[:, 1:] * (px - v[:, :1])  # (M, H*W)
    # Inside a convex polygon every edge sees the point on the same side (either orientation).
    inside = (cross >= 0).all(dim=0) | (cross <= 0).all(dim=0)
    return inside.reshape(height, width).float()


@dataclass
class MaskNoiseOutput(BaseOutput):
    """
    Output of [`GaussianMaskNoise`].

    Args:
        noised_frames (`torch.Tensor` of shape `(B, C, F, H, W)`): the frames with noise at the landmarks, in the
            dtype of the input frames.
        mask (`torch.Tensor` of shape `(B, 1, F, H, W)`): where the noise went, in [0, 1], same dtype. Binary for
            `uniform_replace`; the blurred landmark map (the noise weight) for `gaussian_additive`.
    """

    noised_frames: torch.Tensor
    mask: torch.Tensor


def _gaussian_kernel_1d(kernel_size: int, sigma: float) -> torch.Tensor:
    # Peak 1 (not normalised to sum 1), so the 2-D blob exp(-d^2 / 2 sigma^2) is exactly 1 at a landmark that
    # sits on a pixel centre and the threshold means "this fraction of the peak" whatever sigma is.
    offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    return torch.exp(-(offsets**2) / (2.0 * sigma**2)).float()


class GaussianMaskNoise(ModelMixin, ConfigMixin):
    r"""
    Replaces (or perturbs) the pixels around facial landmarks with noise; see the module docstring.

    It has no trainable weights. The 1-D Gaussian kernel is a persistent buffer, so `save_pretrained` writes a
    (tiny) weights file and `from_pretrained` works like for any other diffusers model.

    Parameters:
        kernel_size (`int`, defaults to 21): side k of the square window of a blob, in pixels; odd. The blob is
            zero outside it. 21 > 2 * 8.6, so the window does not clip the thresholded disc of the defaults.
        sigma (`float`, defaults to 4.0): standard deviation of a blob, in pixels of the frames given.
        threshold (`float`, defaults to 0.1): t in (0, 1); a pixel is masked where the map is above t. An isolated
            landmark then masks a disc of radius sigma * sqrt(2 ln(1/t)) = 8.6 px with the defaults.
        noise_type (`str`, defaults to `"uniform_replace"`): `"uniform_replace"` (the paper: masked pixels become
            U(-noise_scale, noise_scale), the pixel range) or `"gaussian_additive"` (the authors' later code:
            `frames + noise_scale * map * N(0, 1)`, no threshold; the result may leave [-1, 1]).
        noise_scale (`float`, defaults to 1.0): half-range of the uniform noise or std of the Gaussian noise.
        mask_mode (`str`, defaults to `"region"`): `"region"` (one solid lower-face region per clip, DESIGN 7.2)
            or `"landmarks"` (the paper's dotted mask at every landmark, for the ablation).
        region_points (`list[int]`): the landmark indices whose hull makes the region (default `REGION_POINTS`:
            jaw 4-12, nose base 31-35, mouth 48-67).
        region_sigma (`float`, defaults to 0.02): std of the region's Gaussians, as a fraction of the frame side.
        region_margin (`float`, defaults to 0.04): std of the blur that grows the filled hull before the
            threshold, as a fraction of the frame side; the region reaches about 1.3 x this beyond the
            outermost landmark (threshold 0.1), room for the jaw to move.
        heatmap_sigma (`float`, defaults to 0.02): std of the landmark heatmaps, as a fraction of the frame side.

    In region mode `kernel_size` and `sigma` are unused (the region's sizes are relative to the frame, which is
    the mouth box at the UNet's resolution); in landmarks mode the region settings are unused.

    The defaults are for 256×256 face crops. There the 17 jaw points are about 17 px apart (measured with dlib on
    a 256×256 crop of the Obama clips in the shared development data), the eyes about 22 px wide, the brow points
    12 px apart. Overlapping blobs are *summed* (the convolution is linear), which joins neighbouring points into
    bands, and the sum is clamped to [0, 1]. With sigma = 4 two blobs 17 px apart still sum to more than t at
    their midpoint, so the jaw line, brows, eyes, nose and lips come out as connected bands about 17 px wide,
    while the cheeks, forehead and background stay clean (17 % of that crop is masked; sigma = 3 leaves the jaw
    as separate dots, sigma = 5 starts to swallow the cheeks). For other resolutions scale kernel_size and sigma
    with the crop side (e.g. 11 and 2.0 at 128×128).
    """

    @register_to_config
    def __init__(
        self,
        kernel_size: int = 21,
        sigma: float = 4.0,
        threshold: float = 0.1,
        noise_type: str = "uniform_replace",
        noise_scale: float = 1.0,
        mask_mode: str = "region",
        region_points: tuple[int, ...] = REGION_POINTS,
        region_sigma: float = 0.02,
        region_margin: float = 0.04,
        heatmap_sigma: float = 0.02,
    ):
        super().__init__()
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {', '.join(MASK_MODES)}, got {mask_mode!r}")
        points = list(region_points) if isinstance(region_points, (list, tuple)) else None
        if not points or len(points) < 3 or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 68
                                                for i in points):
            raise ValueError(f"region_points must be at least 3 landmark indices in [0, 68), got {region_points!r}")
        for name, value in (("region_sigma", region_sigma), ("region_margin", region_margin),
                            ("heatmap_sigma", heatmap_sigma)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 0.5):
                raise ValueError(f"{name} must be a fraction of the frame side in (0, 0.5), got {value!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
            raise ValueError(f"threshold must be in the open interval (0, 1), got {threshold!r}")
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {', '.join(NOISE_TYPES)}, got {noise_type!r}")
        if not (isinstance(noise_scale, (int, float)) and math.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale!r}")
        self.register_buffer("kernel", _gaussian_kernel_1d(kernel_size, float(sigma)), persistent=True)

    # ------------------------------------------------------------------ the landmark map
    def _profiles(self, coords: torch.Tensor, size: int, kernel: torch.Tensor) -> torch.Tensor:
        """1-D blob profiles (M, N, size) of M×N pixel coordinates along one axis (bilinear taps * kernel)."""
        half = kernel.shape[0] // 2
        left = torch.floor(coords)
        frac = (coords - left)[..., None]
        # Offset of every pixel from the landmark's left tap; the right tap is one further.
        offset = torch.arange(size, device=coords.device, dtype=coords.dtype) - left[..., None]

        def kernel_at(d):
            inside = d.abs() <= half  # compare in float first: a huge coordinate must not overflow an index
            index = (d + half).clamp(0, 2 * half).long()
            return torch.where(inside, kernel[index], torch.zeros((), device=d.device, dtype=kernel.dtype))

        return (1.0 - frac) * kernel_at(offset) + frac * kernel_at(offset - 1.0)

    def _landmark_map(self, landmarks: torch.Tensor, height: int, width: int,
                      kernel: torch.Tensor | None = None) -> torch.Tensor:
        """The blurred landmark map, (B, 1, F, H, W) float32 in [0, 1] (`kernel`: 1-D, default the config's)."""
        batch, frames, points, _ = landmarks.shape
        points_xy = landmarks.detach().to(torch.float32).reshape(batch * frames, points, 2)
        # A NaN/inf point (e.g. a failed detection) contributes nothing instead of poisoning the whole map.
        valid = torch.isfinite(points_xy).all(dim=-1)
        points_xy = torch.where(valid[..., None], points_xy, torch.zeros_like(points_xy))
        kernel = (self.kernel if kernel is None else kernel).to(device=points_xy.device, dtype=torch.float32)

        gx = self._profiles(points_xy[..., 0] * width, width, kernel) * valid[..., None]  # (BF, N, W)
        gy = self._profiles(points_xy[..., 1] * height, height, kernel)  # (BF, N, H)
        blob_map = torch.bmm(gy.transpose(1, 2), gx)  # (BF, H, W): sum over landmarks of the separable blobs
        blob_map = blob_map.clamp_(0.0, 1.0)
        return blob_map.reshape(batch, frames, height, width).unsqueeze(1)

    # ------------------------------------------------------------------ region mode
    def compute_region(self, landmarks: torch.Tensor, height: int, width: int,
                       extra_landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """
        The lower-face region of a clip: `(B, 1, 1, height, width)` float32, binary.

        landmarks `(B, F, 68, 2)` (normalised to the frame) and optionally `extra_landmarks` `(B, K, 68, 2)` (e.g.
        the reference frame's): the region covers the `region_points` of all of them (DESIGN 7.2, item 1).
        """
        self._check_landmarks(landmarks, height, width)
        points = landmarks if extra_landmarks is None else torch.cat([landmarks, extra_landmarks.to(landmarks)], 1)
        points = points[:, :, list(self.config.region_points)].detach().float()
        side = float(min(height, width))
        scale = torch.tensor([width, height], dtype=torch.float32, device=points.device)
        kernel = gaussian_kernel_1d(self.config.region_sigma * side)
        blobs = torch.zeros(points.shape[0], height, width, device=points.device)
        for start in range(0, points.shape[1], 256):  # in chunks of frames: memory flat in the video's length
            chunk = self._landmark_map(points[:, start: start + 256], height, width, kernel)
            blobs = torch.maximum(blobs, chunk.amax(dim=2)[:, 0])  # (B, H, W): every frame's Gaussians (eq. 1)
        hulls = torch.stack([_fill_polygon(_convex_hull((clip * scale).reshape(-1, 2).cpu().numpy()),
                                           height, width, points.device) for clip in points])
        filled = torch.maximum(blobs, hulls)[:, None]  # (B, 1, H, W): the points and everything between them
        grown = gaussian_blur(filled, self.config.region_margin * side)
        return (grown > self.config.threshold).float()[:, :, None]  # eq. 2

    def heatmaps(self, landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The landmarks drawn as Gaussians, one channel per group of HEATMAP_GROUPS: `(B, 3, F, H, W)`."""
        self._check_landmarks(landmarks, height, width)
        kernel = gaussian_kernel_1d(self.config.heatmap_sigma * float(min(height, width)))
        maps = [self._landmark_map(landmarks[:, :, list(group)], height, width, kernel) for group in HEATMAP_GROUPS]
        return torch.cat(maps, dim=1)

    # ------------------------------------------------------------------ both modes
    def _check_landmarks(self, landmarks, height, width) -> None:
        if not torch.is_tensor(landmarks) or landmarks.ndim != 4 or landmarks.shape[-1] != 2:
            shape = tuple(landmarks.shape) if torch.is_tensor(landmarks) else type(landmarks).__name__
            raise ValueError(f"landmarks must be a (B, F, N, 2) tensor of normalised (x, y), got {shape}")
        if not landmarks.is_floating_point():
            raise ValueError(f"landmarks must be a floating point tensor, got dtype {landmarks.dtype}")
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if landmarks.numel() > 0:
            largest = torch.nan_to_num(landmarks.detach().abs(), nan=0.0, posinf=0.0, neginf=0.0).max().item()
            if largest > 2.0:
                # Pixel coordinates passed by mistake would silently give an empty mask.
                logger.warning(
                    f"landmarks look like pixel coordinates (largest |value| {largest:.1f}); GaussianMaskNoise "
                    "expects them normalised to [0, 1] of the frame (see talking_head.constants)."
                )

    def compute_mask(self, landmarks: torch.Tensor, height: int, width: int,
                     extra_landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """
        The mask for landmarks `(B, F, N, 2)` (normalised x, y) on frames of `height`×`width` pixels.

        Returns a float32 tensor `(B, 1, F, height, width)` on the landmarks' device, in [0, 1]. Region mode: the
        clip's one region (`compute_region`) repeated over the frames. Landmarks mode: binary for
        `uniform_replace` (map > threshold), the blurred map itself for `gaussian_additive`.
        """
        if self.config.mask_mode == "region":
            return self.compute_region(landmarks, height, width, extra_landmarks).expand(
                -1, -1, landmarks.shape[1], -1, -1)
        self._check_landmarks(landmarks, height, width)
        blob_map = self._landmark_map(landmarks, height, width)
        if self.config.noise_type == "uniform_replace":
            return (blob_map > self.config.threshold).to(torch.float32)
        return blob_map

    # ------------------------------------------------------------------ noise
    def forward(
        self,
        frames: torch.Tensor,
        landmarks: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        extra_landmarks: torch.Tensor | None = None,
    ) -> MaskNoiseOutput | tuple:
        """
        Put noise on `frames` `(B, C, F, H, W)` (in [-1, 1]) where `landmarks` `(B, F, N, 2)` are.

        Args:
            generator: a `torch.Generator` or a list of B of them (one per sample), as for diffusers'
                `randn_tensor`; the same generator state gives the same output.
            return_dict: return a [`MaskNoiseOutput`] (default) or the tuple `(noised_frames, mask)`.
            extra_landmarks: `(B, K, N, 2)` more landmarks the region must cover (region mode; e.g. the
                reference frame's, whose mouth is replaced too).
        """
        if not torch.is_tensor(frames) or frames.ndim != 5:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise ValueError(f"frames must be (B, C, F, H, W), got shape {shape}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be a floating point tensor in [-1, 1], got dtype {frames.dtype}")
        batch, _, num_frames, height, width = frames.shape
        if not torch.is_tensor(landmarks) or landmarks.ndim != 4 or landmarks.shape[-1] != 2:
            shape = tuple(landmarks.shape) if torch.is_tensor(landmarks) else type(landmarks).__name__
            raise ValueError(f"landmarks must be (B, F, N, 2) normalised (x, y), got shape {shape}")
        if tuple(landmarks.shape[:2]) != (batch, num_frames):
            raise ValueError(
                f"landmarks must be (B, F, N, 2) = ({batch}, {num_frames}, N, 2) to match frames of shape "
                f"{tuple(frames.shape)}, got shape {tuple(landmarks.shape)}"
            )
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} generators but the batch size is {batch}")

        if extra_landmarks is not None:
            extra_landmarks = extra_landmarks.to(frames.device)
        mask = self.compute_mask(landmarks.to(frames.device), height, width, extra_landmarks)  # (B, 1, F, H, W)
        noised = self.apply_noise(frames, mask, generator)
        mask = mask.to(frames.dtype)
        if not return_dict:
            return (noised, mask)
        return MaskNoiseOutput(noised_frames=noised, mask=mask)

    def apply_noise(self, frames: torch.Tensor, mask: torch.Tensor,
                    generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """`frames` (B, C, F, H, W) with the noise of the config where `mask` (B, 1, F or 1, H, W) is set."""
        mask = mask.to(device=frames.device, dtype=torch.float32).expand(
            frames.shape[0], 1, *frames.shape[2:])
        # float32 noise whatever the frames' dtype, so a seed gives the same noise in fp32, fp16 and bf16.
        gaussian = randn_tensor(frames.shape, generator=generator, device=frames.device, dtype=torch.float32)
        scale = float(self.config.noise_scale)
        if self.config.noise_type == "uniform_replace":
            # erf(z / sqrt(2)) = 2 * Phi(z) - 1 is exactly U(-1, 1) for z ~ N(0, 1): uniform noise that inherits
            # randn_tensor's handling of generators, generator lists and devices.
            uniform = torch.erf(gaussian * (1.0 / math.sqrt(2.0))) * scale
            # torch.where, not a blend, so unmasked pixels are returned bit for bit.
            return torch.where(mask.bool(), uniform.to(frames.dtype), frames)
        return (frames.float() + scale * mask * gaussian).to(frames.dtype)
