# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""The emotion classifier as a small head on the pipeline's shared, frozen `audio_encoder` (DESIGN.md 8.3-8.4).

    head = WhisperEmotionHead.from_pretrained("assets/pipeline/emotion_classifier")
    encoder = WhisperSpeechEncoder.from_pretrained("assets/pipeline/audio_encoder")
    probs = head.classify(encoder, [wave_a, wave_b])      # (2, 8) calibrated probabilities, rows sum to 1
    index, strength = draw_strength(probs, head.config.draw_threshold)

The head reads one layer of the Whisper encoder (`config.encoder_layer`), pools its states over the utterance's
active frames (mean and standard deviation of each feature, over the states whose 20 ms of audio is within
`active_floor_db` of the loudest; silence before, between and after the words is left out), standardises the
pooled vector with statistics of the training clips (buffers saved with the weights), and maps it to the 8
emotions with a linear layer or a one-hidden-layer MLP. Its `forward` returns **calibrated** logits: divided by
`config.calibration_temperature`, fitted on speakers whose scores are not reported (train/train_emotion_head.py), so
`softmax(logits)` are the probabilities the pipeline draws with.

"Drawn only as strongly as it is sure" (`draw_strength`): the emotion with the highest probability p is drawn
with strength clip((p - t) / (1 - t), 0, 1), t = `config.draw_threshold`; a predicted "neutral" is strength 0.
The pipeline multiplies the user's `emotion_scale` by it.

Bounded work whatever the length: a recording longer than `piece_seconds` is read as at most `max_pieces`
evenly spaced pieces of `piece_seconds` (their states pooled together), so 10 minutes cost what
`max_pieces * piece_seconds` seconds cost.

Labels are the project's 8 emotions in `talking_head.constants.EMOTIONS` order (RAVDESS has no contempt: the
bundled head never learned it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
# PreTrainedModel is looked up in this module by diffusers when it loads the component from a pipeline folder.
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from talking_head.constants import EMOTIONS, SAMPLE_RATE

__all__ = ["WhisperEmotionHead", "WhisperEmotionHeadConfig", "active_frames", "draw_strength", "pool_states",
           "DEFAULT_DRAW_THRESHOLD", "DRAWN_STRENGTH"]

SAMPLES_PER_STATE = 320  # Whisper: one state per 20 ms at 16 kHz
DEFAULT_DRAW_THRESHOLD = 0.5
# A rendering counts as "an emotion drawn" from this strength on (below: neutral or nearly so): the calm-speech
# check (talking_head.evaluation.calm_speech) and the goals use it.
DRAWN_STRENGTH = 0.3
POOLINGS = ("mean_std", "mean")


def _labels():
    id2label = {i: name for i, name in enumerate(EMOTIONS)}
    return id2label, {name: i for i, name in id2label.items()}


class WhisperEmotionHeadConfig(PretrainedConfig):
    """Config of `WhisperEmotionHead`.

    Args:
        encoder_layer: which layer of the audio encoder the head reads (0 = convolutional stem, k = the k-th block;
            `WhisperSpeechEncoder.encode(..., layers=[encoder_layer])`).
        d_model: the encoder's state size.
        pooling: "mean_std" (mean and standard deviation of each feature over the active frames) or "mean".
        hidden_size: 0 for a linear head, else the width of one hidden layer (GELU).
        dropout: on the standardised pooled vector (and the hidden layer) while training.
        calibration_temperature: the logits are divided by it (temperature scaling; 1 = none). Not called
            `temperature`: transformers reserves that name for generation.
        logit_offsets: None, or one number per emotion added to the calibrated logits: a prior over the emotions
            (log prior ratios), e.g. that most speech a user brings is calm, which a class-balanced training set
            does not say.
        draw_threshold: t of the drawing rule (see `draw_strength`).
        active_floor_db: states whose audio is more than this below the loudest state are not pooled (0: all).
        piece_seconds, max_pieces: long audio is read as at most `max_pieces` evenly spaced pieces of this length.
        encoder_source: what the head was trained on (the encoder's config `source`), for the record.
    """

    model_type = "whisper-emotion-head"

    def __init__(self, encoder_layer: int = 4, d_model: int = 512, pooling: str = "mean_std", hidden_size: int = 0,
                 dropout: float = 0.2, calibration_temperature: float = 1.0, logit_offsets: list | None = None,
                 draw_threshold: float = DEFAULT_DRAW_THRESHOLD, active_floor_db: float = 40.0,
                 piece_seconds: float = 10.0, max_pieces: int = 3, encoder_source: dict | None = None, **kwargs):
        id2label, label2id = _labels()
        kwargs["id2label"], kwargs["label2id"] = id2label, label2id  # fixed: the project's EMOTIONS
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        checks = (("encoder_layer", encoder_layer, lambda v: isinstance(v, int) and v >= 0),
                  ("d_model", d_model, lambda v: isinstance(v, int) and v >= 1),
                  ("hidden_size", hidden_size, lambda v: isinstance(v, int) and v >= 0),
                  ("max_pieces", max_pieces, lambda v: isinstance(v, int) and v >= 1),
                  ("dropout", dropout, lambda v: _finite(v) and 0 <= v < 1),
                  ("calibration_temperature", calibration_temperature, lambda v: _finite(v) and v > 0),
                  ("draw_threshold", draw_threshold, lambda v: _finite(v) and 0 <= v < 1),
                  ("active_floor_db", active_floor_db, lambda v: _finite(v) and v >= 0),
                  ("piece_seconds", piece_seconds, lambda v: _finite(v) and v >= 1))
        for name, value, ok in checks:
            if isinstance(value, bool) or not ok(value):
                raise ValueError(f"{name} has an invalid value {value!r}")
        if logit_offsets is not None:
            logit_offsets = [float(v) for v in logit_offsets]
            if len(logit_offsets) != len(EMOTIONS) or not all(math.isfinite(v) for v in logit_offsets):
                raise ValueError(f"logit_offsets must be {len(EMOTIONS)} finite numbers, got {logit_offsets}")
        self.encoder_layer, self.d_model, self.pooling = encoder_layer, d_model, pooling
        self.hidden_size, self.dropout = hidden_size, float(dropout)
        self.calibration_temperature, self.logit_offsets = float(calibration_temperature), logit_offsets
        self.draw_threshold, self.active_floor_db = float(draw_threshold), float(active_floor_db)
        self.piece_seconds, self.max_pieces = float(piece_seconds), max_pieces
        self.encoder_source = encoder_source

    @property
    def feature_size(self) -> int:
        return self.d_model * (2 if self.pooling == "mean_std" else 1)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def active_frames(waveform: torch.Tensor, num_states: int, floor_db: float) -> torch.Tensor:
    """(num_states,) bool: the encoder states whose 20 ms of `waveform` (1-D, 16 kHz) are within `floor_db` of the
    loudest state's (state i is centred on sample 320 i). All True when floor_db is 0 or the audio is silent."""
    if floor_db <= 0:
        return torch.ones(num_states, dtype=torch.bool)
    wave = waveform.detach().float().reshape(-1).cpu()
    padded = F.pad(wave, (SAMPLES_PER_STATE // 2, max(0, num_states * SAMPLES_PER_STATE - wave.numel())))
    frames = padded[: num_states * SAMPLES_PER_STATE].reshape(num_states, SAMPLES_PER_STATE)
    level = 10 * torch.log10(frames.pow(2).mean(dim=1) + 1e-10)
    return level >= level.max() - floor_db


def pool_states(states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "mean_std") -> torch.Tensor:
    """(B, T, D) states, (B, T) mask (1 = pooled; None = all) -> (B, D) mean, or (B, 2D) [mean, std], float32.
    An item whose mask is empty is pooled over all its states."""
    states = states.float()
    if attention_mask is None:
        weights = torch.ones(states.shape[:2], device=states.device)
    else:
        weights = attention_mask.to(states.device).float()
        if weights.shape != states.shape[:2]:
            raise ValueError(f"attention_mask must have shape {tuple(states.shape[:2])}, got {tuple(weights.shape)}")
        empty = weights.sum(dim=1, keepdim=True) == 0
        weights = torch.where(empty, torch.ones_like(weights), weights)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mean = torch.einsum("bt,btd->bd", weights, states)
    if pooling == "mean":
        return mean
    var = torch.einsum("bt,btd->bd", weights, (states - mean[:, None]) ** 2)
    return torch.cat([mean, var.clamp_min(1e-8).sqrt()], dim=-1)


def draw_strength(probs, threshold: float = DEFAULT_DRAW_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(index of the most probable emotion, strength it is drawn with), each (B,), from (B, 8) probabilities:
    strength = clip((p_max - t) / (1 - t), 0, 1), and 0 where the most probable emotion is neutral."""
    if not (_finite(threshold) and 0 <= threshold < 1):
        raise ValueError(f"the draw threshold must be a number in [0, 1), got {threshold!r}")
    p = np.asarray(probs.detach().cpu().numpy() if torch.is_tensor(probs) else probs, dtype=np.float64)
    p = p.reshape(-1, p.shape[-1])
    index = p.argmax(axis=1)
    strength = np.clip((p.max(axis=1) - threshold) / (1.0 - threshold), 0.0, 1.0)
    strength[index == EMOTIONS.index("neutral")] = 0.0
    return index, strength.astype(np.float32)


class WhisperEmotionHead(PreTrainedModel):
    """8 emotions from one layer of the frozen Whisper `audio_encoder`'s states (see the module docstring).

    `forward(states, attention_mask=None)`: states (B, T, d_model) of layer `config.encoder_layer`, mask (B, T)
    (1 = a state to pool) -> calibrated logits (B, 8). `classify(encoder, waveforms)` runs the encoder too and
    returns probabilities.
    """

    config_class = WhisperEmotionHeadConfig
    base_model_prefix = "emotion_head"
    main_input_name = "states"

    def __init__(self, config: WhisperEmotionHeadConfig):
        super().__init__(config)
        size = config.feature_size
        # Standardisation of the pooled vector (set from the training clips by the trainer; saved with the weights).
        self.register_buffer("feature_mean", torch.zeros(size))
        self.register_buffer("feature_std", torch.ones(size))
        self.dropout = nn.Dropout(config.dropout)
        if config.hidden_size:
            self.hidden = nn.Linear(size, config.hidden_size)
            self.classifier = nn.Linear(config.hidden_size, len(EMOTIONS))
        else:
            self.hidden = None
            self.classifier = nn.Linear(size, len(EMOTIONS))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_model) -> (B, feature_size) pooled, not yet standardised."""
        if states.ndim != 3 or states.shape[-1] != self.config.d_model:
            raise ValueError(f"states must be (batch, time, {self.config.d_model}) states of encoder layer "
                             f"{self.config.encoder_layer}, got shape {tuple(states.shape)}")
        return pool_states(states, attention_mask, self.config.pooling)

    def logits_from_pooled(self, pooled: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """(B, feature_size) pooled vectors -> (B, 8) logits; `calibrated`: divided by the temperature, plus the
        `logit_offsets` (a prior), else the raw logits (training)."""
        x = (pooled.float() - self.feature_mean.float()) / self.feature_std.float()
        x = self.dropout(x.to(self.classifier.weight.dtype))
        if self.hidden is not None:
            x = self.dropout(F.gelu(self.hidden(x)))
        logits = self.classifier(x).float()
        if not calibrated:
            return logits
        logits = logits / self.config.calibration_temperature
        if self.config.logit_offsets is not None:
            logits = logits + logits.new_tensor(self.config.logit_offsets)
        return logits

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated logits (B, 8); `softmax(logits, -1)` are the emotion probabilities."""
        return self.logits_from_pooled(self.pool(states, attention_mask))

    # ------------------------------------------------------------------ from audio
    def pieces(self, wave: torch.Tensor) -> list[torch.Tensor]:
        """The whole 1-D wave when it fits in `piece_seconds`, else at most `max_pieces` evenly spaced pieces."""
        length = int(round(self.config.piece_seconds * SAMPLE_RATE))
        if wave.numel() <= length:
            return [wave]
        count = min(self.config.max_pieces, math.ceil(wave.numel() / length))
        starts = np.linspace(0, wave.numel() - length, count).round().astype(int)
        return [wave[s: s + length] for s in starts]

    @torch.no_grad()
    def pooled_from_audio(self, encoder, wave) -> torch.Tensor:
        """(feature_size,) the pooled states of one 1-D 16 kHz waveform (numpy or torch), read by `encoder`."""
        wave = _check_wave(wave)
        states, masks = [], []
        for piece in self.pieces(wave):
            s = encoder.encode(piece[None], layers=[self.config.encoder_layer])[0]
            states.append(s)
            masks.append(active_frames(piece, s.shape[0], self.config.active_floor_db))
        return self.pool(torch.cat(states)[None], torch.cat(masks)[None])[0]

    @torch.no_grad()
    def classify(self, encoder, waveforms) -> torch.Tensor:
        """(len(waveforms), 8) calibrated emotion probabilities (float32, CPU) of 1-D 16 kHz waveforms read by
        `encoder` (the pipeline's `audio_encoder`). The head runs in eval mode (its mode is restored)."""
        if isinstance(waveforms, (np.ndarray, torch.Tensor)) or not isinstance(waveforms, (list, tuple)):
            raise ValueError("waveforms must be a list of 1-D arrays (one per clip), e.g. [wave] for a single clip")
        if not waveforms:
            raise ValueError("waveforms is empty")
        check_emotion_head(self, encoder)
        pooled = torch.stack([self.pooled_from_audio(encoder, w) for w in waveforms])
        was_training = self.training
        self.eval()
        try:
            logits = self.logits_from_pooled(pooled.to(self.feature_mean.device))
        finally:
            self.train(was_training)
        return torch.softmax(logits.double(), dim=-1).float().cpu()


def _check_wave(wave) -> torch.Tensor:
    if isinstance(wave, np.ndarray):
        if not np.issubdtype(wave.dtype, np.floating):
            raise ValueError(f"waveforms must be float audio in [-1, 1], got dtype {wave.dtype}")
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    if not isinstance(wave, torch.Tensor) or wave.ndim != 1:
        raise ValueError(f"each waveform must be 1-D mono audio, got {getattr(wave, 'shape', type(wave).__name__)}")
    if wave.numel() == 0:
        raise ValueError("a waveform is empty")
    if not torch.isfinite(wave).all():
        raise ValueError("a waveform contains NaN or infinite values")
    return wave.float()


def check_emotion_head(head, encoder) -> None:
    """Raise a ValueError when `encoder` (None: no audio_encoder) cannot give the states `head` reads."""
    layer, dim = head.config.encoder_layer, head.config.d_model
    if encoder is None:
        raise ValueError(f"the emotion classifier is a head on the audio encoder's layer {layer}, but the pipeline "
                         "has no audio_encoder (its folder is missing?)")
    if encoder.config.d_model != dim or layer > encoder.config.encoder_layers:
        raise ValueError(f"the audio_encoder (d_model {encoder.config.d_model}, {encoder.config.encoder_layers} "
                         f"layers) does not give the states the emotion head reads (layer {layer} of size {dim})")


AutoConfig.register(WhisperEmotionHeadConfig.model_type, WhisperEmotionHeadConfig)
AutoModel.register(WhisperEmotionHeadConfig, WhisperEmotionHead)
