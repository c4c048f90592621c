# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""The pipeline's `audio_encoder`: OpenAI Whisper's speech encoder, frozen, shared by the landmark model and the
emotion classifier (DESIGN.md 8.3).

    encoder = WhisperSpeechEncoder.from_pretrained("assets/pipeline/audio_encoder")
    states = encoder.encode(waveform)        # (B, S) 16 kHz -> (B, T, len(layers) * d_model), 50 states / s

It is transformers' `WhisperEncoder` (the weights come from OpenAI's checkpoints, MIT licence, converted by
train/convert_whisper.py) with two things of its own:

* **Any length, in windows.** Whisper was trained on 30 s windows (3000 log-mel frames); transformers' forward
  refuses anything else. `encode` runs the same layers on windows of at most `window_seconds` (the position
  embeddings' first rows), without padding to 30 s: a 10 s window costs a third of a padded one, and memory
  stays flat in the audio's length. Windows overlap by `window_overlap_seconds`; each keeps the states of its
  middle, so no state is made at a window's edge except at the audio's own ends.
* **Hidden states of chosen layers.** `layers` (default: the config's `output_layers`) picks which layers'
  outputs are returned, concatenated along the features; only the layers up to the deepest one asked for run.
  Layer 0 is the convolutional stem plus positions, layer k the k-th transformer block's output; the final
  layer norm is applied to the full model's last layer only, as in Whisper (`final_norm_layer`: a truncated
  copy gives exactly the full model's states for the layers it keeps).

State i is centred at i / 50 s of its input (the log-mel hop is 10 ms, centred frames; the second convolution
halves the rate): `STATE_RATE` states per second.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
# PreTrainedModel is looked up in this module by diffusers when it loads the component from a pipeline folder.
from transformers import PreTrainedModel, WhisperConfig  # noqa: F401
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

__all__ = ["WhisperSpeechEncoder", "whisper_log_mel", "STATE_RATE"]

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
N_FFT = 400  # 25 ms
STATE_RATE = SAMPLE_RATE / HOP / 2  # 50 states per second


@functools.lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    """Whisper's mel filters (slaney scale and norm, 0-8 kHz): (n_fft // 2 + 1, n_mels)."""
    bank = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))


def whisper_log_mel(waveform: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, S) 16 kHz -> (B, n_mels, S // 160): WhisperFeatureExtractor's log-mel (its `_torch_extract_fbank_features`
    without the 30 s padding): power STFT, mel, log10, floored 8 decades below each item's peak, (x + 4) / 4."""
    if waveform.shape[1] < N_FFT:  # the centred STFT's reflection needs more than half a window of samples
        waveform = F.pad(waveform, (0, N_FFT - waveform.shape[1]))
    window = torch.hann_window(N_FFT, device=waveform.device)
    stft = torch.stft(waveform.float(), N_FFT, HOP, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = filters.to(waveform.device).T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


class WhisperSpeechEncoder(WhisperEncoder):
    """transformers' `WhisperEncoder`, frozen, with `encode` for audio of any length (see the module docstring).

    Config additions (read with defaults, so a plain Whisper config loads): `output_layers` (list of int, the
    layers `encode` returns by default; default: the last), `window_seconds` (default 10.0),
    `window_overlap_seconds` (default 1.0).
    """

    def __init__(self, config: WhisperConfig):
        super().__init__(config)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        encoder = super().from_pretrained(*args, **kwargs)
        if kwargs.get("torch_dtype") is None and kwargs.get("dtype") is None:
            encoder = encoder.float()  # stored in float16; computed in float32 unless a dtype is asked for
        encoder.requires_grad_(False)  # loading makes fresh parameters; the encoder stays frozen
        return encoder.eval()

    # A frozen encoder: train() keeps it in eval mode (no dropout), as the landmark model's front ends do.
    def train(self, mode: bool = True):
        return super().train(False)

    def truncated(self, keep_layers: int, output_layers=None) -> "WhisperSpeechEncoder":
        """A copy with the first `keep_layers` blocks only (the layers above the deepest one read are never run,
        so they need not ship); `output_layers` becomes its default `encode` layers."""
        if not 1 <= keep_layers <= self.config.encoder_layers:
            raise ValueError(f"keep_layers must be in [1, {self.config.encoder_layers}], got {keep_layers}")
        config = self.config.__class__.from_dict(self.config.to_dict())
        config.encoder_layers = int(keep_layers)
        config.final_norm_layer = self.final_norm_layer  # the kept layers' states stay those of the full model
        config.output_layers = list(output_layers or [keep_layers])
        if max(config.output_layers) > keep_layers:
            raise ValueError(f"output_layers {config.output_layers} go deeper than the {keep_layers} kept")
        small = WhisperSpeechEncoder(config)
        small.load_state_dict({k: v for k, v in self.state_dict().items()
                               if not k.startswith("layers.") or int(k.split(".")[1]) < keep_layers})
        return small.to(self.dtype)

    @property
    def final_norm_layer(self) -> int:
        """The layer whose output gets Whisper's final layer norm: the full model's last (beyond a truncated copy's
        blocks, so never applied there)."""
        return int(getattr(self.config, "final_norm_layer", None) or self.config.encoder_layers)

    @property
    def output_layers(self) -> list[int]:
        layers = getattr(self.config, "output_layers", None)
        return list(layers) if layers else [self.config.encoder_layers]

    @property
    def state_dim(self) -> int:
        """Features per state that `encode` returns with the default layers."""
        return len(self.output_layers) * self.config.d_model

    def _window_lengths(self) -> tuple[int, int]:
        """(window, overlap) in samples; a window is a whole number of states, at most the positions' span."""
        per_state = 2 * HOP
        most = self.config.max_source_positions * per_state
        window = min(most, int(round(getattr(self.config, "window_seconds", 10.0) * STATE_RATE)) * per_state)
        overlap = int(round(getattr(self.config, "window_overlap_seconds", 1.0) * STATE_RATE)) * per_state
        if not 0 <= 2 * overlap < window:
            raise ValueError(f"window_overlap_seconds must be under half of window_seconds; got {overlap} and "
                             f"{window} samples")
        return window, overlap

    def _layers_of_window(self, waveform: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """(B, S) with S <= the window -> (B, ceil(S / 320), len(layers) * d_model)."""
        # Not a buffer: transformers builds models on the meta device and leaves non-persistent buffers empty.
        mel = whisper_log_mel(waveform, _mel_filters(self.config.num_mel_bins))
        if mel.shape[-1] % 2:  # an odd frame count: the stride-2 convolution needs one more (silence) frame
            mel = F.pad(mel, (0, 1), value=float(mel.amin()))
        dtype = self.conv1.weight.dtype
        h = F.gelu(self.conv1(mel.to(dtype)))
        h = F.gelu(self.conv2(h)).permute(0, 2, 1)
        h = h + self.embed_positions.weight[: h.shape[1]]
        outputs = {0: h}
        for k, layer in enumerate(self.layers[: max(layers)], start=1):
            h = layer(h, None)
            outputs[k] = self.layer_norm(h) if k == self.final_norm_layer else h
        return torch.cat([outputs[k] for k in layers], dim=-1).float()

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor:
        """Waveform (B, S) mono 16 kHz, any length >= 1 sample -> (B, ceil(S / 320), len(layers) * d_model) float32.

        State i is centred at sample 320 * i. Long audio runs window by window (memory flat in length)."""
        layers = self.output_layers if layers is None else [int(k) for k in layers]
        if not layers or min(layers) < 0 or max(layers) > self.config.encoder_layers:
            raise ValueError(f"layers must be in [0, {self.config.encoder_layers}], got {layers}")
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or waveform.shape[1] < 1:
            raise ValueError(f"waveform must be a (batch, samples) tensor with at least one sample, got "
                             f"{getattr(waveform, 'shape', type(waveform).__name__)}")
        if not torch.isfinite(waveform).all():
            raise ValueError("waveform contains NaN or infinite values")
        waveform = waveform.to(self.device, torch.float32)
        total = math.ceil(waveform.shape[1] / (2 * HOP))
        window, overlap = self._window_lengths()
        if waveform.shape[1] <= window:
            return self._layers_of_window(waveform, layers)[:, :total]
        per_state, step = 2 * HOP, window - 2 * overlap
        pieces, start = [], 0
        while True:
            piece = self._layers_of_window(waveform[:, start: start + window], layers)
            first = 0 if start == 0 else overlap // per_state  # states already made by the window before
            last_window = start + window >= waveform.shape[1]
            keep_to = piece.shape[1] if last_window else (window - overlap) // per_state
            pieces.append(piece[:, first:keep_to])
            if last_window:
                break
            start += step
        return torch.cat(pieces, dim=1)[:, :total]


def check_audio_encoder(landmark_model, encoder) -> None:
    """Raise a ValueError naming what is missing or mismatched when `landmark_model` reads encoder states that
    `encoder` (None: no audio_encoder in the pipeline) cannot give; nothing to check for a log-mel model."""
    if not getattr(landmark_model, "reads_encoder_states", False):
        return
    layers, dim = landmark_model.config.encoder_layers, landmark_model.config.encoder_state_dim
    if encoder is None:
        raise ValueError(f"the landmark model reads Whisper states (layers {layers}) but the pipeline has no "
                         "audio_encoder: its folder is missing (rebuild it with train/convert_whisper.py)")
    if encoder.config.d_model != dim or max(layers) > encoder.config.encoder_layers:
        raise ValueError(f"the audio_encoder (d_model {encoder.config.d_model}, {encoder.config.encoder_layers} "
                         f"layers) does not give the states the landmark model reads (layers {layers} of size {dim})")
