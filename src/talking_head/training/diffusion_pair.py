"""The renderer's training example (DESIGN 7.2 item 4): mouth boxes, the mask-noise context, the noised
sample and its target, built exactly as TalkingHeadPipeline builds its input; the region loss; and the
mask-noise layer and UNet the diffusion trainer and `benchmarks/bench_train.py` build."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from talking_head.constants import NULL_EMOTION


def build_mask_noise(resolution: int, noise_type: str = "uniform_replace", mask_mode: str = "region",
                     region_points=None):
    """GaussianMaskNoise for boxes of `resolution`: the region mode's sizes are relative to the box; the
    landmarks mode's 256²-tuned blob size is scaled to `resolution` (as talking_head.presets does)."""
    from talking_head.models.mask_noise import GaussianMaskNoise

    ref = GaussianMaskNoise()
    scale = resolution / 256.0
    kernel = max(1, int(round(ref.config.kernel_size * scale)) | 1)
    extra = {} if region_points is None else {"region_points": tuple(int(i) for i in region_points)}
    return GaussianMaskNoise(kernel_size=kernel, sigma=max(0.5, ref.config.sigma * scale),
                             threshold=ref.config.threshold, noise_type=noise_type, mask_mode=mask_mode, **extra)


def build_unet(preset: str, resolution: int, in_channels: int = 13, condition_skip: bool = False,
               residual_channel: int | None = None):
    """A freshly initialised ClassConditionedUNet3DModel of a talking_head.presets preset at `resolution`."""
    from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel
    from talking_head.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    factor = 2 ** (len(spec["block_out_channels"]) - 1)
    if resolution % factor:
        raise ValueError(f"--resolution {resolution} must be divisible by {factor} for the {preset} UNet")
    return ClassConditionedUNet3DModel(sample_size=resolution, in_channels=in_channels, out_channels=3,
                                       block_out_channels=spec["block_out_channels"],
                                       layers_per_block=spec["layers_per_block"], condition_skip=condition_skip,
                                       residual_channel=residual_channel)


# ------------------------------------------------------------------------------------- diffusion training pair
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SAMPLING = ("uniform", "below_t_start", "mixed")


def sample_timesteps(batch_size: int, num_train_timesteps: int, mode: str, t_start: int, bias: float,
                     device) -> torch.Tensor:
    """Training timesteps (int64, from torch's global RNG).

    uniform: U{0..T-1}. below_t_start: U{0..t_start-1}, the range SDEdit sampling from t_start visits.
    mixed: below_t_start with probability `bias`, else uniform (keeps larger t_start usable).
    """
    if mode not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {mode!r}")
    full = torch.randint(0, num_train_timesteps, (batch_size,), device=device)
    if mode == "uniform":
        return full
    low = torch.randint(0, min(t_start, num_train_timesteps), (batch_size,), device=device)
    if mode == "below_t_start":
        return low
    return torch.where(torch.rand(batch_size, device=device) < bias, low, full)


@dataclass
class DiffusionPair:
    model_input: torch.Tensor  # (B, 13, F, S, S): pipelines.pipeline_talking_head.unet_input
    timesteps: torch.Tensor  # (B,)
    class_labels: torch.Tensor  # (B,), NULL_EMOTION where dropped for classifier-free guidance
    target: torch.Tensor  # (B, 3, F, S, S): what the UNet is trained to predict
    noisy: torch.Tensor  # x_t
    sample: torch.Tensor  # x0, the target mouth boxes
    cond: torch.Tensor  # the context: the target boxes with the region replaced by mask noise
    mask: torch.Tensor  # (B, 1, F, S, S): the region
    heatmaps: torch.Tensor  # (B, 3, F, S, S): the target landmarks
    reference: torch.Tensor  # (B, 3, S, S): the reference frame's box


def mouth_boxes(batch: dict, sample_size: int, jitter: bool = False, indices=None) -> dict:
    """Cut every clip of a batch to its mouth box (talking_head.mouth_box, DESIGN 7.2 item 2).

    batch: frames (B, 3, F, H, W) at the stored face-crop resolution, landmarks (B, F, 68, 2) and
    reference (B, 3, H, W) / reference_landmarks (B, 68, 2), normalised to the crop. One box per clip covers
    the lower face of its frames and of its reference, as the pipeline's box covers the photo's and every
    generated frame's (`indices`: the landmarks it is placed on, the mask-noise layer's region_points;
    default the lower face). jitter: scale the box by U(0.95, 1.15) and shift it by up to 4 % of its side (torch's
    global RNG), so the model sees the mouth at the positions and sizes a video's box can give it.
    Returns frames (B, 3, F, S, S), reference (B, 3, S, S), landmarks (B, F, 68, 2) and reference_landmarks
    (B, 68, 2) normalised to the box.
    """
    from talking_head.models.mask_noise import LOWER_FACE_POINTS
    from talking_head.mouth_box import BOX_SCALE, MouthBox

    indices = LOWER_FACE_POINTS if indices is None else tuple(indices)

    frames, ref = batch["frames"], batch["reference"]
    height, width = frames.shape[-2:]
    scale = frames.new_tensor((width, height))
    out = {"frames": [], "reference": [], "landmarks": [], "reference_landmarks": []}
    for b in range(frames.shape[0]):
        points = torch.cat([batch["landmarks"][b], batch["reference_landmarks"][b][None]]) * scale
        factor = BOX_SCALE * (float(torch.empty(()).uniform_(0.95, 1.15)) if jitter else 1.0)
        box = MouthBox.from_landmarks(points, scale=factor, indices=indices)
        if jitter:
            dx, dy = (torch.rand(2) * 0.08 - 0.04) * box.side
            box = MouthBox(box.x0 + int(round(float(dx))), box.y0 + int(round(float(dy))), box.side)
        out["frames"].append(box.cut(frames[b].transpose(0, 1), sample_size).transpose(0, 1))
        out["reference"].append(box.cut(ref[b][None], sample_size)[0])
        out["landmarks"].append(box.normalise(batch["landmarks"][b] * scale))
        out["reference_landmarks"].append(box.normalise(batch["reference_landmarks"][b] * scale))
    return {k: torch.stack(v) for k, v in out.items()}


def make_diffusion_pair(batch: dict, mask_noise, scheduler, sample_size: int, prediction_type: str,
                        timesteps: torch.Tensor, p_uncond: float = 0.0, jitter: bool = False,
                        first_step: torch.Tensor | None = None) -> DiffusionPair:
    """One training example per clip (DESIGN 7.2 item 4), built exactly as TalkingHeadPipeline builds its input.

    x0 = the clip's mouth boxes. context = the same boxes with the lower-face region (covering the clip's and
    the reference's landmarks) replaced by mask noise; reference = another frame of the person (the dataset
    picks one with a different mouth opening, so the target mouth cannot be copied); heatmaps = the target
    landmarks. x_t = scheduler.add_noise(x0, noise, t), except for the clips flagged in `first_step` (B,) bool:
    there x_t is what the pipeline's first SDEdit step sees, the box with the REFERENCE's mouth in the region
    noised to `timesteps` (t_start - 1), so the model learns not to keep that mouth but to draw the heatmaps'
    (without them it learns to trust x_t's mouth at t < t_start, and the photo's mouth leaks into the
    video). The UNet sees `unet_input(x_t, context, mask,
    heatmaps, reference)` and the clip's emotion, replaced by NULL_EMOTION with probability p_uncond for
    classifier-free guidance. Its target follows `prediction_type` (the scheduler's, which the saved pipeline
    keeps): the noise, x0, or v = sqrt(ab) noise - sqrt(1 - ab) x0.
    """
    from talking_head.pipelines.pipeline_talking_head import unet_input

    boxes = mouth_boxes(batch, sample_size, jitter=jitter, indices=mask_noise.config.region_points)
    x0 = boxes["frames"]
    device = x0.device
    mask = mask_noise.compute_mask(boxes["landmarks"], sample_size, sample_size,
                                   extra_landmarks=boxes["reference_landmarks"][:, None]).to(x0.dtype)
    context = mask_noise.apply_noise(x0, mask)
    heatmaps = mask_noise.heatmaps(boxes["landmarks"], sample_size, sample_size)
    noise = torch.randn(x0.shape, device=device, dtype=x0.dtype)
    timesteps = timesteps.to(device)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    if first_step is not None and bool(first_step.any()):
        init = x0 * (1 - mask) + boxes["reference"][:, :, None] * mask
        flag = first_step.to(device).view(-1, 1, 1, 1, 1)
        noisy = torch.where(flag, scheduler.add_noise(init, noise, timesteps), noisy)
    model_input = unet_input(noisy, context, mask, heatmaps, boxes["reference"])
    labels = batch["emotion"].to(device).clone()
    if p_uncond > 0:
        drop = torch.rand(labels.shape, device=device) < p_uncond
        labels = torch.where(drop, torch.full_like(labels, NULL_EMOTION), labels)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = x0
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DiffusionPair(model_input=model_input, timesteps=timesteps, class_labels=labels, target=target,
                         noisy=noisy, sample=x0, cond=context, mask=mask, heatmaps=heatmaps,
                         reference=boxes["reference"])


STRUCTURE_LOSSES = ("none", "ssim", "edge")


def lip_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, 1, F, S, S): the brightest of the heatmap channels (B, C, F, S, S) drawn from lip points only (the
    groups of GaussianMaskNoise's HEATMAP_GROUPS inside 48-67), for region_loss's `lips`."""
    from talking_head.models.mask_noise import HEATMAP_GROUPS

    channels = [i for i, group in enumerate(HEATMAP_GROUPS) if min(group) >= 48]
    return heatmaps[:, channels].amax(dim=1, keepdim=True)


def region_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, structure: str = "none",
                structure_weight: float = 0.2, lips: torch.Tensor | None = None,
                lip_weight: float = 0.0) -> torch.Tensor:
    """L1 inside the region (B, 1, F, S, S) of x0 predictions (B, 3, F, S, S), plus an optional structural term.

    "ssim": 1 - SSIM (11-tap Gaussian window, sigma 1.5) averaged over the region; "edge": L1 of the horizontal
    and vertical image gradients inside the region (sharp lip and teeth edges instead of an average blur).
    `lips` (B, 1, F, S, S) in [0, 1], e.g. the target's lip heatmaps: each pixel's weight is 1 + lip_weight * lips
    (the few pixels between the lips decide how open the drawn mouth looks, and an average over the whole region
    lets the model blur them).
    """
    if not (math.isfinite(lip_weight) and lip_weight >= 0):
        raise ValueError(f"lip_weight must be a number >= 0, got {lip_weight!r}")
    pred, target = pred.float(), target.float()
    weight = mask.float()
    if lips is not None and lip_weight > 0:
        weight = weight * (1.0 + lip_weight * lips.float().clamp(0, 1))
    weight = weight.expand_as(pred)
    denom = weight.sum().clamp_min(1.0)
    loss = ((pred - target).abs() * weight).sum() / denom
    if structure == "none":
        return loss
    if structure == "edge":
        gx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
        gy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
        wx, wy = weight[..., :, 1:] * weight[..., :, :-1], weight[..., 1:, :] * weight[..., :-1, :]
        term = (((gx(pred) - gx(target)).abs() * wx).sum() + ((gy(pred) - gy(target)).abs() * wy).sum()) / (
            wx.sum() + wy.sum()).clamp_min(1.0)
    elif structure == "ssim":
        term = ((1.0 - ssim_map(pred, target)) * weight).sum() / denom
    else:
        raise ValueError(f"structure must be one of {STRUCTURE_LOSSES}, got {structure!r}")
    return loss + structure_weight * term


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, F, H, W) images in [-1, 1] (data range 2), same shape."""
    from talking_head.models.mask_noise import gaussian_blur

    b, c, f, h, w = x.shape
    x2, y2 = x.transpose(1, 2).reshape(b * f, c, h, w), y.transpose(1, 2).reshape(b * f, c, h, w)
    blur = lambda t: gaussian_blur(t, 1.5)  # noqa: E731
    mx, my = blur(x2), blur(y2)
    vx, vy, cov = blur(x2 * x2) - mx * mx, blur(y2 * y2) - my * my, blur(x2 * y2) - mx * my
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(b, f, c, h, w).transpose(1, 2)


def predicted_sample(prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, scheduler,
                     prediction_type: str) -> torch.Tensor:
    """The x0 estimate implied by a model output, for any prediction type (comparable validation MSE)."""
    if prediction_type == "sample":
        return prediction
    alphas = scheduler.alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps]
    shape = (-1,) + (1,) * (noisy.ndim - 1)
    a, s = alphas.sqrt().view(shape), (1 - alphas).sqrt().view(shape)
    if prediction_type == "epsilon":
        return (noisy.float() - s * prediction.float()) / a
    if prediction_type == "v_prediction":
        return a * noisy.float() - s * prediction.float()
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
