"""A class-conditioned 3D UNet for frame clips, (B, C, F, H, W) -> (B, out_channels, F, H, W).

The paper's denoiser (DESIGN.md 2.4): a 3D "Basic UNet" with 4 levels of 32, 64, 128 and 256 channels,
conditioned on the diffusion timestep and on one of 8 emotion classes. diffusers has no such model
(`UNet3DConditionModel` accepts `class_labels` but ignores them), so it is written here from diffusers' parts
(`Timesteps`, `TimestepEmbedding`) and three small blocks:

    conv_in -> [DownBlock3D] * levels -> MidBlock3D -> [UpBlock3D] * levels -> GroupNorm, SiLU, conv_out

* All convolutions are 3×3×3 with padding 1, so any number of frames F >= 1 works and neighbouring frames
  exchange information at every layer (temporal consistency).
* Down/upsampling is spatial only (stride (1, 2, 2)): F clips are short (~16 frames), and halving them would
  forbid odd or tiny F. H and W must be divisible by 2 ** (levels - 1).
* Skip connections like diffusers' `UNet2DModel`: every resnet and downsampler output of the down path is
  concatenated into the matching up-path resnet.
* Conditioning, paper eq. (3): `emb = concat(time_embedding(t), class_embedding(label))`; every residual block
  adds a linear projection of SiLU(emb) to its features. The class table has `num_class_embeds + 1` rows; the
  last one is the "no class" row used for classifier-free guidance (`talking_head.constants.NULL_EMOTION`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput


@dataclass
class UNet3DClassOutput(BaseOutput):
    """
    Output of [`ClassConditionedUNet3DModel`].

    Args:
        sample (`torch.Tensor` of shape `(B, out_channels, F, H, W)`): the model's prediction.
    """

    sample: torch.Tensor


# ---------------------------------------------------------------------------------------------- blocks
class Conv3d(nn.Conv3d):
    """`nn.Conv3d` (same parameters and state dict) that always uses oneDNN on CPU float32.

    ATen sends a 3D convolution with a small batch (B*C*F*H <= 20480, e.g. one 8-frame clip at 64x64) to its
    reference kernel `slow_conv3d`, which is about 6x slower here than oneDNN's; generation runs batch 1, so it
    would pay that on every step. The result is the same to float rounding (1e-6) and autograd works.
    """

    def _conv_forward(self, input, weight, bias):
        if (input.device.type == "cpu" and input.dtype == torch.float32 and self.padding_mode == "zeros"
                and torch.backends.mkldnn.is_available()):
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super()._conv_forward(input, weight, bias)


class ResnetBlock3D(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the (timestep, class) embedding, twice, with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, groups: int, eps: float,
                 dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1×1×1 conv only where the channel count changes, so the residual path can be added.
        self.shortcut = Conv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(hidden_states)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None, None]  # same shift for every frame and pixel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        residual = hidden_states if self.shortcut is None else self.shortcut(hidden_states)
        return residual + h


class Downsample3D(nn.Module):
    """Halves H and W (not F) with a strided 3×3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv3d(channels, channels, kernel_size=3, stride=(1, 2, 2), padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden_states)


class Upsample3D(nn.Module):
    """Doubles H and W (not F): nearest-neighbour, then a 3×3×3 conv (no checkerboard artefacts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


class DownBlock3D(nn.Module):
    """`num_layers` resnets, then (except at the lowest level) a downsampler; returns every output as a skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, num_layers: int, groups: int,
                 eps: float, dropout: float, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, emb_channels, groups, eps, dropout)
            for i in range(num_layers)
        )
        self.downsampler = Downsample3D(out_channels) if add_downsample else None
        self.gradient_checkpointing = False  # switched by ModelMixin.enable_gradient_checkpointing()

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor):
        skips = ()
        for resnet in self.resnets:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, emb)
            else:
                hidden_states = resnet(hidden_states, emb)
            skips += (hidden_states,)
        if self.downsampler is not None:
            hidden_states = self.downsampler(hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class MidBlock3D(nn.Module):
    """Two resnets at the lowest resolution (no attention: the paper's "Basic UNet" is convolution only)."""

    def __init__(self, channels: int, emb_channels: int, groups: int, eps: float, dropout: float):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(channels, channels, emb_channels, groups, eps, dropout) for _ in range(2)
        )
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, emb)
            else:
                hidden_states = resnet(hidden_states, emb)
        return hidden_states


class UpBlock3D(nn.Module):
    """`num_layers` resnets, each fed the previous output concatenated with one skip, then an upsampler."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: list[int], emb_channels: int,
                 groups: int, eps: float, dropout: float, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D((in_channels if i == 0 else out_channels) + skip, out_channels, emb_channels, groups,
                          eps, dropout)
            for i, skip in enumerate(skip_channels)
        )
        self.upsampler = Upsample3D(out_channels) if add_upsample else None
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, skips: tuple, emb: torch.Tensor) -> torch.Tensor:
        # `skips` are this level's skips in down-path order; the up path consumes them last-first.
        for resnet, skip in zip(self.resnets, reversed(skips)):
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, emb)
            else:
                hidden_states = resnet(hidden_states, emb)
        if self.upsampler is not None:
            hidden_states = self.upsampler(hidden_states)
        return hidden_states


# ---------------------------------------------------------------------------------------------- model
class ClassConditionedUNet3DModel(ModelMixin, ConfigMixin):
    r"""
    A 3D UNet conditioned on a diffusion timestep and a class label (an emotion); see the module docstring.

    Parameters:
        sample_size (`int`, defaults to 256): the frame side the model is meant for. Informational only (the
            pipeline's default resolution); the model accepts any H, W divisible by 2 ** (levels - 1).
        in_channels (`int`, defaults to 7): input channels. The pipeline feeds the noisy frames (3), the
            mask-noised reference frames (3) and the mask (1).
        out_channels (`int`, defaults to 3): output channels (the prediction for the 3 RGB channels).
        block_out_channels (`tuple[int]`, defaults to `(32, 64, 128, 256)`): channels per level (the paper's).
        layers_per_block (`int`, defaults to 2): resnets per down level (the up levels get one more, as in
            diffusers' UNets, to consume the downsampler's skip).
        num_class_embeds (`int`, defaults to 8): number of real classes; the table has one more, null row.
        norm_num_groups (`int`, defaults to 8): GroupNorm groups; must divide every entry of block_out_channels.
        norm_eps (`float`, defaults to 1e-5): GroupNorm epsilon.
        time_embed_dim (`int`, *optional*): timestep embedding size; defaults to 4 * block_out_channels[0].
        class_embed_dim (`int`, *optional*): class embedding size; defaults to time_embed_dim, so timestep and
            class carry equal weight in the concatenated embedding.
        flip_sin_to_cos (`bool`, defaults to True), freq_shift (`int`, defaults to 0): sinusoidal timestep
            features, as in diffusers' `UNet2DModel`.
        dropout (`float`, defaults to 0.0): dropout inside the residual blocks.
        condition_skip (`bool`, defaults to False): add the unmasked part of the condition frames,
            `cond * (1 - mask)` (input channels 3-5 and 6), to the output. With `prediction_type="sample"` the
            network then predicts a correction to the reference frame instead of the whole frame: the untrained
            model already returns the reference outside the mask, and training spends its updates on the mouth
            and the motion. Needs `in_channels=7` and `out_channels=3`. (The whole-face renderer's option.)
        residual_channel (`int`, *optional*): add the input channels `residual_channel ...
            residual_channel + out_channels - 1` to the output. The lower-face renderer sets it to its reference
            box (channels 10-12 of `unet_input`): with `prediction_type="sample"` the network predicts a
            correction to the person's own mouth region, so the untrained model already returns the reference
            (zero-initialised output) and training spends its updates on what moves (lips, teeth, jaw) while
            the skin stays sharp.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 256,
        in_channels: int = 7,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 256),
        layers_per_block: int = 2,
        num_class_embeds: int = 8,
        norm_num_groups: int = 8,
        norm_eps: float = 1e-5,
        time_embed_dim: int | None = None,
        class_embed_dim: int | None = None,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        dropout: float = 0.0,
        condition_skip: bool = False,
        residual_channel: int | None = None,
    ):
        super().__init__()
        channels = [int(c) for c in block_out_channels]
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("layers_per_block", layers_per_block), ("num_class_embeds", num_class_embeds),
                            ("norm_num_groups", norm_num_groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(
                f"block_out_channels must be a non-empty list of positive integers, got {block_out_channels!r}"
            )
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"norm_num_groups ({norm_num_groups}) must divide every entry of block_out_channels {tuple(channels)}"
            )
        if condition_skip and (in_channels != 7 or out_channels != 3):
            raise ValueError(f"condition_skip needs in_channels=7 (noisy, condition, mask) and out_channels=3, got "
                             f"in_channels={in_channels}, out_channels={out_channels}")
        if residual_channel is not None and (isinstance(residual_channel, bool) or not isinstance(residual_channel, int)
                                             or not 0 <= residual_channel <= in_channels - out_channels):
            raise ValueError(f"residual_channel must be an integer in [0, in_channels - out_channels] = "
                             f"[0, {in_channels - out_channels}], got {residual_channel!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        time_dim = time_embed_dim or 4 * channels[0]
        class_dim = class_embed_dim or time_dim
        emb_dim = time_dim + class_dim
        self._spatial_factor = 2 ** (len(channels) - 1)

        # Conditioning: sinusoidal timestep features -> MLP, and a class table with a trailing null row.
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim)
        self.class_embedding = nn.Embedding(num_class_embeds + 1, class_dim)

        self.conv_in = Conv3d(in_channels, channels[0], kernel_size=3, padding=1)

        common = dict(emb_channels=emb_dim, groups=norm_num_groups, eps=norm_eps, dropout=dropout)
        self.down_blocks = nn.ModuleList()
        skip_channels = [channels[0]]  # the channels of every skip the down path produces, in order
        for level, out_ch in enumerate(channels):
            in_ch = channels[max(level - 1, 0)]
            last = level == len(channels) - 1
            self.down_blocks.append(DownBlock3D(in_ch, out_ch, num_layers=layers_per_block, add_downsample=not last,
                                                **common))
            skip_channels += [out_ch] * (layers_per_block + (0 if last else 1))

        self.mid_block = MidBlock3D(channels[-1], **common)

        self.up_blocks = nn.ModuleList()
        prev_ch = channels[-1]
        for level, out_ch in reversed(list(enumerate(channels))):
            level_skips = skip_channels[-(layers_per_block + 1):]
            del skip_channels[-(layers_per_block + 1):]
            # Resnets consume skips last-first, so pass them in that order.
            self.up_blocks.append(UpBlock3D(prev_ch, out_ch, level_skips[::-1], add_upsample=level > 0, **common))
            prev_ch = out_ch

        self.norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_out = Conv3d(channels[0], out_channels, kernel_size=3, padding=1)
        # Zero-initialised: the untrained model predicts 0 (the mean of an epsilon or v target), so early training
        # is stable; gradients still reach conv_out's weights (its input is not zero) and from there everything.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # ------------------------------------------------------------------------------------------ inputs
    def _check_sample(self, sample: torch.Tensor) -> None:
        if not torch.is_tensor(sample) or sample.ndim != 5:
            shape = tuple(sample.shape) if torch.is_tensor(sample) else type(sample).__name__
            raise ValueError(f"sample must be (B, C, F, H, W), got shape {shape}")
        batch, chans, frames, height, width = sample.shape
        if chans != self.config.in_channels:
            raise ValueError(f"sample must have in_channels={self.config.in_channels} channels, got shape "
                             f"{tuple(sample.shape)}")
        if batch < 1 or frames < 1:
            raise ValueError(f"sample needs B >= 1 and F >= 1, got shape {tuple(sample.shape)}")
        factor = self._spatial_factor
        if height % factor or width % factor or height == 0 or width == 0:
            raise ValueError(
                f"sample height and width must be positive multiples of {factor} (2 ** (levels - 1) for "
                f"{len(self.config.block_out_channels)} levels), got H={height}, W={width}"
            )

    def _batch_timesteps(self, timestep, batch: int, device) -> torch.Tensor:
        # As diffusers' UNet2DModel: a number, a 0-d tensor or a (B,) tensor, broadcast to (B,).
        if not torch.is_tensor(timestep):
            if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
                raise ValueError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
            timestep = torch.tensor([timestep], dtype=torch.float32 if isinstance(timestep, float) else torch.long)
        if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch)):
            raise ValueError(f"timestep must be a scalar or a ({batch},) tensor, got shape {tuple(timestep.shape)}")
        return timestep.to(device).reshape(-1).expand(batch)

    def _batch_class_labels(self, class_labels, batch: int, device) -> torch.Tensor:
        null = self.config.num_class_embeds
        if class_labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        if not torch.is_tensor(class_labels):
            class_labels = torch.as_tensor(class_labels)
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be integer class ids, got dtype {class_labels.dtype}")
        if class_labels.ndim > 1 or (class_labels.ndim == 1 and class_labels.shape[0] not in (1, batch)):
            raise ValueError(f"class_labels must be a scalar or a ({batch},) tensor, got shape "
                             f"{tuple(class_labels.shape)}")
        if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() > null):
            raise ValueError(f"class_labels must be in [0, {null}] ({null} = the null class), got "
                             f"{class_labels.tolist()}")
        return class_labels.to(device=device, dtype=torch.long).reshape(-1).expand(batch)

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet3DClassOutput | tuple:
        """
        Args:
            sample (`torch.Tensor`): `(B, in_channels, F, H, W)`.
            timestep (`torch.Tensor` or `float` or `int`): a number, a 0-d tensor or a `(B,)` tensor.
            class_labels (`torch.Tensor`, *optional*): `(B,)` integer class ids in `[0, num_class_embeds]`; the
                last id is the null class. `None` means the null class for the whole batch.
            return_dict (`bool`, defaults to True): return a [`UNet3DClassOutput`] or the tuple `(sample,)`.
        """
        self._check_sample(sample)
        batch = sample.shape[0]
        timesteps = self._batch_timesteps(timestep, batch, sample.device)
        labels = self._batch_class_labels(class_labels, batch, sample.device)

        # 1. Conditioning. Timesteps returns float32 whatever the model dtype: cast before the MLP.
        t_emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        emb = torch.cat([t_emb, self.class_embedding(labels).to(t_emb.dtype)], dim=1)  # paper eq. (3)

        # 2. Down path, keeping every intermediate output for the skips.
        hidden_states = self.conv_in(sample.to(self.dtype))
        skips = (hidden_states,)
        for block in self.down_blocks:
            hidden_states, block_skips = block(hidden_states, emb)
            skips += block_skips

        # 3. Middle and up path; each up level takes layers_per_block + 1 skips.
        hidden_states = self.mid_block(hidden_states, emb)
        for block in self.up_blocks:
            count = len(block.resnets)
            hidden_states = block(hidden_states, skips[-count:], emb)
            skips = skips[:-count]

        # 4. Out.
        out = self.conv_out(F.silu(self.norm_out(hidden_states)))
        if self.config.residual_channel is not None:
            first = self.config.residual_channel
            out = out + sample[:, first: first + out.shape[1]].to(out.dtype)
        if self.config.condition_skip:
            cond, mask = sample[:, 3:6].to(out.dtype), sample[:, 6:7].to(out.dtype)
            out = out + cond * (1 - mask)
        sample = out
        if not return_dict:
            return (sample,)
        return UNet3DClassOutput(sample=sample)
