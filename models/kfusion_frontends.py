# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""The KFusion landmark model's audio front ends and building blocks (models/kfusion_landmarks.py reads them).

* Global domain: `WindowEncoder` reads one raw-waveform window per video frame.
* Context domain, one of: `LogMelFrontend` (log-mel, no pretrained weights), `Wav2Vec2Frontend` (the paper's
  wav2vec 2.0), or `EncoderStatesFrontend` (hidden states of the pipeline's shared `audio_encoder`, Whisper:
  DESIGN.md 8.3; computed outside the model, so the encoder is not a second copy inside it).
* `TemporalConvBlock`: the residual 1-D convolutions both domains run over time; `sample_at_frames` brings a
  feature sequence at its own rate to the video frames.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2Model
from transformers.audio_utils import mel_filter_bank

from talking_head.constants import SAMPLE_RATE

# Keys of a transformers config dict that describe where it came from, not the architecture.
WAV2VEC2_META_KEYS = ("transformers_version", "architectures", "_name_or_path", "model_type", "torch_dtype", "dtype")


class TemporalConvBlock(nn.Module):
    """Pre-norm residual 1-D convolution over time: (B, T, C) -> (B, T, C).

    Convolutions rather than attention: they are local, so a model trained on
    short clips behaves the same on minutes of audio, and need no positions.
    """

    def __init__(self, channels: int, kernel_size: int, dropout: float, dilation: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation)
        self.proj = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(self.proj(F.gelu(h)))


class WindowEncoder(nn.Module):
    """Raw-waveform window (N, L) -> feature (N, C).

    No normalisation layer: loudness is the signal this domain exists to read,
    and a norm layer would divide the amplitude away.
    """

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // 2
        self.convs = nn.Sequential(
            nn.Conv1d(1, hidden, kernel_size=10, stride=5),
            nn.GELU(),
            nn.Conv1d(hidden, channels, kernel_size=8, stride=4),
            nn.GELU(),
            nn.Conv1d(channels, channels, kernel_size=4, stride=2),
            nn.GELU(),
            # A fixed number of positions keeps where in the window things happen.
            nn.AdaptiveAvgPool1d(6),
        )
        self.out = nn.Linear(channels * 6, channels)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(windows.unsqueeze(1)).flatten(1))


class BandConvStem(nn.Module):
    """Log-mel features (B, T, k * n_mels) -> (B, T, channels * ceil(n_mels / 4)): two 3x3 convolutions over
    (time, mel band), each halving the bands, before the Context domain's projection.

    The same filters read every band, so a voice whose formants sit a few bands higher or lower moves a
    pattern rather than meeting other weights (the lever that took the emotion classifier from 50 % to 59 %
    on unseen speakers). Stride 1 and centred kernels over time keep every step where it was.
    """

    def __init__(self, in_channels: int, channels: int, n_mels: int):
        super().__init__()
        self.in_channels, self.n_mels = in_channels, n_mels
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=(1, 2), padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=(1, 2), padding=1), nn.GELU(),
        )
        self.output_dim = channels * math.ceil(math.ceil(n_mels / 2) / 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = features.shape
        # [log-mel, delta, delta2] along the last axis -> (B, k, T, n_mels): the three as image channels.
        x = features.reshape(batch, steps, self.in_channels, self.n_mels).permute(0, 2, 1, 3)
        return self.convs(x).permute(0, 2, 1, 3).flatten(2)


class LogMelFrontend(nn.Module):
    """Waveform (B, S) -> log-mel (B, T, n_mels), 25 ms windows every 10 ms.

    Needs no pretrained weights, which makes it the working default here.
    torch.stft + a mel filterbank instead of torchaudio (see DESIGN.md 6).
    """

    def __init__(self, sample_rate: int, n_mels: int, deltas: bool = False, max_frequency: float | None = None,
                 band_mean: bool = False):
        super().__init__()
        self.deltas = bool(deltas)
        self.band_mean = bool(band_mean)
        self.n_fft = int(round(0.025 * sample_rate))
        self.hop_length = int(round(0.010 * sample_rate))
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=sample_rate / 2 if max_frequency is None else float(max_frequency),
            sampling_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        # Derived from the config, so not saved in the checkpoint.
        self.register_buffer("mel_filters", torch.from_numpy(filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.output_dim = n_mels * (3 if self.deltas else 1)
        self.first_time = 0.0  # with center=True, frame t is centred on sample t * hop_length
        self.time_step = self.hop_length / sample_rate
        # Training-time vocal-tract length perturbation (set by train_landmarks.py --aug_freq_warp, not saved):
        # in train mode each clip's spectrum is read at frequencies scaled by a random factor in 1 +- this.
        self.freq_warp = 0.0

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # Zero ("constant") padding at the ends: reflection fails on clips shorter than half a window.
        spec = torch.stft(
            waveform,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.abs() ** 2
        if self.training and self.freq_warp > 0:
            power = warp_frequencies(power, 1.0 + self.freq_warp * (2 * torch.rand(power.shape[0]) - 1))
        mel = power.transpose(1, 2) @ self.mel_filters  # (B, T, n_mels)
        log_mel = torch.log10(mel.clamp_min(1e-10))
        # Whisper's scaling: 80 dB dynamic range below each clip's peak, roughly in [-1, 1].
        log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        log_mel = (log_mel + 4.0) / 4.0
        if self.band_mean:
            log_mel = log_mel - active_band_mean(mel, log_mel)
        if not self.deltas:
            return log_mel
        delta = deltas(log_mel)
        return torch.cat([log_mel, delta, deltas(delta)], dim=-1)


def warp_frequencies(power: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Power spectra (B, bins, T) as another vocal tract would give them: bin k of item b takes the input's
    value at k / factors[b] (formants and pitch scaled by the factor, timing kept), linearly interpolated."""
    bins = power.shape[1]
    source = torch.arange(bins, dtype=power.dtype, device=power.device)[None] / factors.to(power)[:, None]
    left = source.clamp(0, bins - 1).floor().long().clamp(max=bins - 2)  # (B, bins)
    weight = (source.clamp(0, bins - 1) - left)[..., None]
    pairs = torch.gather(power, 1, torch.cat([left, left + 1], dim=1)[..., None].expand(-1, -1, power.shape[2]))
    return pairs[:, :bins] * (1 - weight) + pairs[:, bins:] * weight


def active_steps(energy: torch.Tensor, below_peak_db: float = 30.0) -> torch.Tensor:
    """(B, N) energies -> bool (B, N): the steps within `below_peak_db` of each item's loudest (the speech, not
    the silence around it)."""
    return energy >= energy.amax(dim=1, keepdim=True) * 10.0 ** (-below_peak_db / 10.0)


def active_band_mean(mel: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
    """(B, 1, n_mels): each band's mean log-mel over the active steps: the voice's and the microphone's average
    spectrum, which says who and where, not what is said. Silence is left out so the mean does not depend on
    how much of it surrounds the speech."""
    active = active_steps(mel.sum(-1)).to(log_mel.dtype)[..., None]  # (B, T, 1)
    return (log_mel * active).sum(1, keepdim=True) / active.sum(1, keepdim=True).clamp_min(1.0)


def deltas(features: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over time of (B, T, C), HTK's formula with N = `width` steps on each side (edges
    repeated): sum_n n (c[t+n] - c[t-n]) / (2 sum_n n^2)."""
    steps = features.shape[1]
    padded = torch.cat([features[:, :1].expand(-1, width, -1), features,
                        features[:, -1:].expand(-1, width, -1)], dim=1)
    out = torch.zeros_like(features)
    for n in range(1, width + 1):
        out = out + n * (padded[:, width + n: width + n + steps] - padded[:, width - n: width - n + steps])
    return out / (2 * sum(n * n for n in range(1, width + 1)))


class Wav2Vec2Frontend(nn.Module):
    """Waveform (B, S) -> wav2vec 2.0 features (B, T, hidden), ~20 ms per step.

    The transformers model is a submodule, so its weights are part of this
    model's state dict and checkpoint.
    """

    def __init__(self, config: Wav2Vec2Config, freeze: bool):
        super().__init__()
        self.wav2vec2 = Wav2Vec2Model(config)
        self.freeze = freeze
        if freeze:
            self.wav2vec2.requires_grad_(False)
        stride, receptive_field = 1, 1
        for kernel, step in zip(config.conv_kernel, config.conv_stride):
            receptive_field += (kernel - 1) * stride
            stride *= step
        self.receptive_field = receptive_field
        self.output_dim = config.hidden_size
        sample_rate = SAMPLE_RATE  # wav2vec 2.0 models are 16 kHz models
        self.first_time = (receptive_field - 1) / 2 / sample_rate  # centre of the first feature's samples
        self.time_step = stride / sample_rate

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # What Wav2Vec2FeatureExtractor(do_normalize=True) does: zero mean, unit variance per clip.
        mean = waveform.mean(dim=1, keepdim=True)
        std = waveform.var(dim=1, keepdim=True, unbiased=False).add(1e-7).sqrt()
        waveform = (waveform - mean) / std
        if waveform.shape[1] < self.receptive_field:  # very short clips: give the conv stack one step
            waveform = F.pad(waveform, (0, self.receptive_field - waveform.shape[1]))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.wav2vec2(waveform).last_hidden_state


class EncoderStatesFrontend(nn.Module):
    """Hidden states of a pretrained speech encoder, made outside the model (B, T, layers * dim), `state_rate`
    per second, state t centred at t / state_rate seconds -> (B, T, layers * dim), each layer's states
    layer-normalised on their own (a Whisper block's residual stream grows with depth; the last layer is
    normalised already).

    The encoder itself is the pipeline's `audio_encoder` (shared with the emotion classifier), so it is not a
    second copy inside the landmark model; the trainer reads cached states."""

    def __init__(self, state_dim: int, num_layers: int, state_rate: float = 50.0):
        super().__init__()
        self.num_layers, self.state_dim = int(num_layers), int(state_dim)
        self.norms = nn.ModuleList([nn.LayerNorm(self.state_dim) for _ in range(self.num_layers)])
        self.output_dim = self.num_layers * self.state_dim
        self.first_time = 0.0
        self.time_step = 1.0 / float(state_rate)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        per_layer = states.float().split(self.state_dim, dim=-1)
        return torch.cat([norm(x) for norm, x in zip(self.norms, per_layer)], dim=-1)


def active_rms(waveform: torch.Tensor, block: int, below_peak_db: float = 30.0) -> torch.Tensor:
    """(B, S) -> (B, 1): RMS over the `block`-sample blocks whose energy is within `below_peak_db` of the
    loudest block (the speech level, not diluted by the silence around it); 0 for all-zero audio."""
    batch, samples = waveform.shape
    blocks = max(1, math.ceil(samples / block))
    padded = F.pad(waveform, (0, blocks * block - samples))
    energy = padded.reshape(batch, blocks, block).pow(2).sum(-1)
    counts = torch.full((blocks,), float(block), device=waveform.device)
    counts[-1] = samples - (blocks - 1) * block
    energy = energy / counts  # mean square per block
    active = active_steps(energy, below_peak_db)
    mean_square = (energy * active).sum(1, keepdim=True) / active.sum(1, keepdim=True).clamp_min(1)
    return mean_square.sqrt()


def sample_at_frames(features: torch.Tensor, first_time: float, time_step: float, num_frames: int, fps: float):
    """Linearly interpolate features (B, T, C), step t centred at first_time + t * time_step
    seconds, at the video frame centres (f + 0.5) / fps -> (B, F, C). Any fps, any length."""
    steps = features.shape[1]
    times = (torch.arange(num_frames, device=features.device, dtype=torch.float64) + 0.5) / fps
    position = ((times - first_time) / time_step).clamp(0, steps - 1)
    lower = position.floor().long().clamp(max=steps - 1)
    upper = (lower + 1).clamp(max=steps - 1)
    weight = (position - lower).to(features.dtype)[None, :, None]
    return features[:, lower] * (1 - weight) + features[:, upper] * weight


def wav2vec2_config_from_dict(config: dict) -> Wav2Vec2Config:
    if not isinstance(config, dict):
        raise ValueError(f"wav2vec2_config must be a dict of Wav2Vec2Config arguments, got {type(config).__name__}")
    # Wav2Vec2Config silently accepts any keyword; a typo would otherwise build the wrong model.
    known = set(Wav2Vec2Config().to_dict()) | {"num_labels"}
    unknown = sorted(set(config) - known - set(WAV2VEC2_META_KEYS))
    if unknown:
        raise ValueError(f"wav2vec2_config has unknown Wav2Vec2Config keys: {unknown}")
    return Wav2Vec2Config(**{k: v for k, v in config.items() if k not in WAV2VEC2_META_KEYS})
