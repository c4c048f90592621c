# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""The audio emotion classifier (DESIGN.md section 2.1).

Not a custom class: a stock transformers classifier (an audio one, or an image one that reads the log-mel
window as a picture) built from a config whose labels are the project's 8 MEAD emotions in the one canonical
order (`talking_head.constants.EMOTIONS`). Because it is a stock model it saves, loads and sits in a diffusers
pipeline as-is (model_index.json records e.g. ["transformers", "ResNetForImageClassification"]). Several
trained runs of one recipe can be averaged into one model, `EmotionClassifierEnsemble` (a `PreTrainedModel`
holding them, registered with the transformers Auto classes), which loads and predicts the same way.

Two families, chosen by measurement (docs/results/emotion-classifier/):
- **log-mel**: a fixed 3 s window from `EmotionFeatureExtractor` below (64 mel bands of 50-4000 Hz, the
  telephone band, so 8 kHz speech is not foreign; silent edges trimmed; one mean / variance normalisation per
  utterance, so gain and loudness go), read by one of three stock models:
  "cnn-small": `ResNetForImageClassification`, a small convolutional network over the window as a
  one-channel image (3x3 filters shared over time and frequency, pooled over both): the family's best on
  unseen speakers; "tiny" / "small": `WhisperForAudioClassification` (two convolutions over time with the
  bands as channels, then a Transformer encoder, mean-pooled); "ast-small": `ASTForAudioClassification`
  (a patch Transformer).
- **waveform Conformer** ("conformer-tiny", "conformer-small", "paper"): the paper's architecture,
  `Wav2Vec2ConformerForSequenceClassification` on the raw waveform (`Wav2Vec2FeatureExtractor`); "paper"
  is the size of the paper's ConformerXL, to fine-tune a pretrained checkpoint of that shape. Trained
  from scratch on RAVDESS it stayed at chance on unseen actors (15 %).

    model = build_emotion_classifier("cnn-small")     # random init, train from scratch
    extractor = build_emotion_feature_extractor(model)
    model = load_emotion_classifier("path/to/ckpt")   # a local checkpoint (no downloads here)
    extractor = load_emotion_feature_extractor("path/to/ckpt")
    probs = predict_emotion(model, extractor, [wave_a, wave_b])   # (2, 8), rows sum to 1
    EMOTIONS[probs.argmax(-1)[0]]
"""

import inspect
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    AutoConfig,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    BatchFeature,
    FeatureExtractionMixin,  # noqa: F401 - diffusers finds a component's load method by this module's base names
    PretrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    SequenceFeatureExtractor,
    Wav2Vec2ConformerConfig,
    Wav2Vec2ConformerForSequenceClassification,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperForAudioClassification,
)
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_outputs import SequenceClassifierOutput

from talking_head.constants import EMOTIONS, SAMPLE_RATE

__all__ = [
    "EMOTION_CLASSIFIER_PRESETS",
    "EmotionClassifierEnsemble",
    "EmotionEnsembleConfig",
    "EmotionFeatureExtractor",
    "build_emotion_classifier",
    "build_emotion_feature_extractor",
    "emotion_classifier_config",
    "load_emotion_classifier",
    "load_emotion_feature_extractor",
    "predict_emotion",
]

# Log-mel presets are WhisperConfig arguments; `window_frames` (the extractor's fixed window) sets
# max_source_positions = window_frames / 2 (Whisper's second convolution has stride 2).
_LOGMEL_PRESETS = {
    "tiny": dict(num_mel_bins=16, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                 classifier_proj_size=32, window_frames=100),
    "small": dict(num_mel_bins=64, d_model=128, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=256,
                  classifier_proj_size=128, window_frames=300),
}
_CONFORMER_PRESETS = {
    "conformer-tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        conv_depthwise_kernel_size=15,
        classifier_proj_size=32,
    ),
    "conformer-small": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(256,) * 7,
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        conv_depthwise_kernel_size=31,
        classifier_proj_size=128,
    ),
    "paper": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_dim=(512,) * 7,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        conv_depthwise_kernel_size=31,
        classifier_proj_size=256,
    ),
}
# A log-mel patch Transformer (ASTConfig arguments): 16x16 patches of the same log-mel window every 8 bands and
# 8 frames, so the same patch filters read every frequency (a pitch or formant shift moves a pattern, it does not
# meet new weights). `window_frames` sets max_length.
_AST_PRESETS = {
    "ast-small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                      patch_size=16, frequency_stride=8, time_stride=8, num_mel_bins=64, window_frames=300,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
}
# A small convolutional network over the log-mel window read as a one-channel image (ResNetConfig arguments):
# 3x3 filters shared over time *and* frequency, pooled over both at the end, so a voice higher or lower than the
# training speakers' moves a pattern rather than meeting other weights; the usual from-scratch baseline of
# small-data speech emotion work. `num_mel_bins` and `window_frames` are stored in the config for the extractor.
_CNN_PRESETS = {
    "cnn-small": dict(num_channels=1, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                      layer_type="basic", num_mel_bins=64, window_frames=300),
}
EMOTION_CLASSIFIER_PRESETS = {**_LOGMEL_PRESETS, **_AST_PRESETS, **_CNN_PRESETS, **_CONFORMER_PRESETS}

# Shared by the Conformer presets: the "group" feature-encoder norm normalises over the padded sequence, so
# its predictions would change with the batch's padding, and it cannot use an attention mask.
_CONFORMER_COMMON = dict(feat_extract_norm="layer", conv_bias=True, position_embeddings_type="relative")
# Whisper's decoder is not built by WhisperForAudioClassification; these keep its unused config small.
_WHISPER_COMMON = dict(decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=8, vocab_size=8,
                       max_target_positions=8, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                       decoder_start_token_id=3, begin_suppress_tokens=None, suppress_tokens=None, dropout=0.1)
_LABEL_KEYS = ("id2label", "label2id", "num_labels")


def _emotion_labels():
    id2label = {i: name for i, name in enumerate(EMOTIONS)}
    return id2label, {name: i for i, name in id2label.items()}


def emotion_classifier_config(preset: str = "cnn-small", **overrides):
    """The config of a preset with the 8 emotion labels set: a `ResNetConfig` ("cnn-small"), `WhisperConfig`
    ("tiny", "small"), `ASTConfig` ("ast-small") or `Wav2Vec2ConformerConfig` ("conformer-tiny",
    "conformer-small", "paper").

    `overrides` are arguments of that config class (e.g. `encoder_layers=2`); unknown names raise (the
    config classes would silently accept a typo). The labels are fixed: they are the project's EMOTIONS.
    """
    if preset not in EMOTION_CLASSIFIER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(EMOTION_CLASSIFIER_PRESETS)}")
    label_overrides = sorted(set(overrides) & set(_LABEL_KEYS))
    if label_overrides:
        raise ValueError(f"{label_overrides} cannot be overridden: the labels are talking_head.constants.EMOTIONS")
    config_class = (WhisperConfig if preset in _LOGMEL_PRESETS else ASTConfig if preset in _AST_PRESETS
                    else ResNetConfig if preset in _CNN_PRESETS else Wav2Vec2ConformerConfig)
    windowed = preset in _LOGMEL_PRESETS or preset in _AST_PRESETS or preset in _CNN_PRESETS
    known = set(config_class().to_dict())
    known |= {"window_frames"} if windowed else set()
    known |= {"num_mel_bins"} if preset in _CNN_PRESETS else set()  # kept in the ResNet config for the extractor
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} arguments: {unknown}")
    id2label, label2id = _emotion_labels()
    labels = dict(num_labels=len(EMOTIONS), id2label=id2label, label2id=label2id)
    if preset in _LOGMEL_PRESETS:
        kwargs = {**_WHISPER_COMMON, **_LOGMEL_PRESETS[preset], **overrides}
        window_frames = int(kwargs.pop("window_frames"))
        if window_frames < 2 or window_frames % 2:
            raise ValueError(f"window_frames must be an even number >= 2, got {window_frames}")
        return WhisperConfig(**kwargs, max_source_positions=window_frames // 2, **labels)
    if preset in _AST_PRESETS:
        kwargs = {**_AST_PRESETS[preset], **overrides}
        window_frames = int(kwargs.pop("window_frames"))
        if window_frames < kwargs["patch_size"] or kwargs["num_mel_bins"] < kwargs["patch_size"]:
            raise ValueError(f"window_frames and num_mel_bins must be at least patch_size ({kwargs['patch_size']})")
        return ASTConfig(**kwargs, max_length=window_frames, **labels)
    if preset in _CNN_PRESETS:
        kwargs = {**_CNN_PRESETS[preset], **overrides}
        if kwargs["num_channels"] != 1 or int(kwargs["window_frames"]) < 32 or int(kwargs["num_mel_bins"]) < 32:
            raise ValueError("the log-mel CNN reads one channel of at least 32 bands and 32 frames "
                             "(its stem and three strided stages divide both by 32)")
        return ResNetConfig(**kwargs, **labels)
    return Wav2Vec2ConformerConfig(**{**_CONFORMER_COMMON, **_CONFORMER_PRESETS[preset], **overrides}, **labels)


def build_emotion_classifier(preset: str = "cnn-small", **overrides) -> PreTrainedModel:
    """A randomly initialised classifier from `emotion_classifier_config(preset, **overrides)`."""
    config = emotion_classifier_config(preset, **overrides)
    if isinstance(config, WhisperConfig):
        return WhisperForAudioClassification(config)
    if isinstance(config, ASTConfig):
        return ASTForAudioClassification(config)
    if isinstance(config, ResNetConfig):
        return ResNetForImageClassification(config)
    return Wav2Vec2ConformerForSequenceClassification(config)


_LOGMEL_MODEL_TYPES = ("whisper", "audio-spectrogram-transformer", "resnet", "emotion-classifier-ensemble")


class EmotionEnsembleConfig(PretrainedConfig):
    """The config of `EmotionClassifierEnsemble`: its members' configs (each a `to_dict()`, with its
    `model_type`), the 8 emotion labels, and `logit_offsets`: one number per label added to the averaged
    log-probabilities (None: no offsets), fitted where no test speaker is (docs/results/emotion-classifier/, stop 33)."""

    model_type = "emotion-classifier-ensemble"

    def __init__(self, members: list | None = None, logit_offsets: list | None = None, **kwargs):
        id2label, label2id = _emotion_labels()
        for key, value in (("id2label", id2label), ("label2id", label2id)):
            kwargs.setdefault(key, value)
        super().__init__(**kwargs)
        self.members = [dict(member) for member in (members or [])]
        if logit_offsets is not None:
            logit_offsets = [float(value) for value in logit_offsets]
            if len(logit_offsets) != len(self.id2label) or not all(math.isfinite(v) for v in logit_offsets):
                raise ValueError(f"logit_offsets must be {len(self.id2label)} finite numbers (one per emotion: "
                                 f"{', '.join(self.id2label[i] for i in range(len(self.id2label)))}), "
                                 f"got {logit_offsets}")
        self.logit_offsets = logit_offsets

    def member_configs(self) -> list:
        return [AutoConfig.for_model(**member) for member in self.members]


class EmotionClassifierEnsemble(PreTrainedModel):
    """Several emotion classifiers of one kind, read by one feature extractor, averaged: the logits are the
    members' mean log-probabilities (a geometric mean of their predictions, renormalised by the softmax), plus
    the config's `logit_offsets` if it has them, so `predict_emotion` and the pipeline use it like any single
    classifier.

    Why: runs of one recipe that differ only in their seed make different errors on voices none of them heard,
    and their average makes fewer than its members (docs/results/emotion-classifier/, stop 32: chosen by
    cross-validation over the training speakers). Saved and loaded with `save_pretrained` / `from_pretrained`
    (one config.json holding the members' configs, one model.safetensors); `from_members` builds one from
    trained classifiers.
    """

    config_class = EmotionEnsembleConfig
    base_model_prefix = "ensemble"
    main_input_name = "pixel_values"

    def __init__(self, config: EmotionEnsembleConfig):
        super().__init__(config)
        members = config.member_configs()
        if not members:
            raise ValueError("an EmotionClassifierEnsemble needs at least one member config")
        kinds = {member.model_type for member in members}
        if len(kinds) != 1 or not kinds <= set(_LOGMEL_MODEL_TYPES) - {self.config_class.model_type}:
            raise ValueError(f"ensemble members must be log-mel classifiers of one kind, got {sorted(kinds)}")
        auto = AutoModelForImageClassification if kinds == {"resnet"} else AutoModelForAudioClassification
        self.members = torch.nn.ModuleList(auto.from_config(member) for member in members)
        self.main_input_name = self.members[0].main_input_name
        self.post_init()

    def _init_weights(self, module):  # each member initialises its own layers
        pass

    def forward(self, labels=None, **inputs) -> SequenceClassifierOutput:
        log_probs = [torch.log_softmax(member(**inputs).logits.float(), dim=-1) for member in self.members]
        logits = torch.stack(log_probs).mean(0)
        if self.config.logit_offsets is not None:
            logits = logits + logits.new_tensor(self.config.logit_offsets)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_members(cls, folders, logit_offsets=None) -> tuple["EmotionClassifierEnsemble", object]:
        """(ensemble, feature extractor) of the trained classifiers saved in `folders` (local directories, each
        with the same feature extractor), with `logit_offsets` (one per emotion) if given."""
        folders = [str(folder) for folder in folders]
        if not folders:
            raise ValueError("from_members needs at least one classifier folder")
        models = [load_emotion_classifier(folder) for folder in folders]
        extractors = [load_emotion_feature_extractor(folder, model) for folder, model in zip(folders, models)]
        for folder, extractor in zip(folders[1:], extractors[1:]):
            if extractor.to_dict() != extractors[0].to_dict():
                raise ValueError(f"{folder} reads other features than {folders[0]}; ensemble members share one "
                                 "feature extractor")
        ensemble = cls(EmotionEnsembleConfig(members=[model.config.to_dict() for model in models],
                                             logit_offsets=logit_offsets))
        for member, model in zip(ensemble.members, models):
            member.load_state_dict(model.state_dict())
        return ensemble.eval(), extractors[0]


AutoConfig.register(EmotionEnsembleConfig.model_type, EmotionEnsembleConfig)
AutoModelForAudioClassification.register(EmotionEnsembleConfig, EmotionClassifierEnsemble)


def _is_logmel(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) in _LOGMEL_MODEL_TYPES


class EmotionFeatureExtractor(SequenceFeatureExtractor):
    r"""Log-mel features for the log-mel emotion classifiers: one fixed window of `window_frames` frames.

    Per waveform (16 kHz mono float): power mel spectrogram (`feature_size` bands between `min_frequency`
    and `max_frequency`, `n_fft`-sample Hann frames every `hop_length` samples) in dB; the silent edges
    trimmed (frames quieter than the loudest by more than `trim_db`); every bin raised to at least `floor_db`
    under the loudest (so recordings with different noise floors look alike); normalised to zero mean and unit
    variance over the utterance as a whole (a standard deviation under 1 dB counts as 1 dB, so silence or a
    pure tone stays finite and small); then fitted to the window: a longer utterance is centre-cropped (training
    crops at random, see `fit_window`), a shorter one is repeated until it fills it, so the mean-pooling
    classifier never averages over padding.

    `test_time_speeds` (default `(1.0,)`: none): `windows`, which `predict_emotion` scores, also reads the
    waveform resampled to each of these speeds (pitch and tempo together, as the trainer's speed augmentation
    does), so a clip's logits are averaged over its speeds as well as over its windows. `__call__` (one window
    per waveform, the training input) ignores it.

    Saved and loaded with `save_pretrained` / `from_pretrained` (preprocessor_config.json).
    """

    model_input_names = ["input_features"]

    def __init__(self, feature_size: int = 64, sampling_rate: int = SAMPLE_RATE, n_fft: int = 400,
                 hop_length: int = 160, min_frequency: float = 50.0, max_frequency: float = 4000.0,
                 window_frames: int = 300, trim_db: float = 40.0, floor_db: float = 60.0, padding_value: float = 0.0,
                 time_first: bool = False, as_image: bool = False, test_time_speeds=(1.0,), **kwargs):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         **kwargs)
        if not 0 <= min_frequency < max_frequency <= sampling_rate / 2:
            raise ValueError(f"need 0 <= min_frequency < max_frequency <= sampling_rate / 2, got "
                             f"{min_frequency}, {max_frequency} at {sampling_rate} Hz")
        if window_frames < 1 or hop_length < 1 or n_fft < 2:
            raise ValueError("window_frames, hop_length and n_fft must be positive")
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)
        self.min_frequency, self.max_frequency = float(min_frequency), float(max_frequency)
        self.window_frames, self.trim_db, self.floor_db = int(window_frames), float(trim_db), float(floor_db)
        # Whisper reads `input_features` (B, bands, frames); the patch Transformer `input_values` (B, frames, bands);
        # the CNN `pixel_values` (B, 1, bands, frames), a one-channel image.
        if time_first and as_image:
            raise ValueError("time_first and as_image are different layouts; choose one")
        self.time_first, self.as_image = bool(time_first), bool(as_image)
        self.test_time_speeds = _check_speeds(test_time_speeds)
        self.model_input_names = ["input_values" if self.time_first else "pixel_values" if self.as_image
                                  else "input_features"]
        # (n_fft // 2 + 1, feature_size); not saved (FeatureExtractionMixin.to_dict drops "mel_filters").
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=feature_size, min_frequency=min_frequency,
            max_frequency=max_frequency, sampling_rate=sampling_rate, norm="slaney", mel_scale="slaney",
        ).astype(np.float32)

    @property
    def window_seconds(self) -> float:
        return self.window_frames * self.hop_length / self.sampling_rate

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """(feature_size, T) trimmed, per-band normalised log-mel of one waveform (T >= 1)."""
        w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if w.numel() < self.n_fft:
            w = torch.nn.functional.pad(w, (0, self.n_fft - w.numel()))
        spec = torch.stft(w, self.n_fft, self.hop_length, window=torch.hann_window(self.n_fft), center=True,
                          return_complex=True).abs().pow(2)
        mel = 10.0 * torch.log10(torch.from_numpy(self.mel_filters).T @ spec + 1e-10)
        # Nothing quieter than `floor_db` under the loudest bin: a studio's silence and a phone line's hiss
        # look alike (measured: cross-corpus accuracy on CREMA-D 12 % -> 25 % with a linear probe).
        mel = mel.clamp_min(mel.max() - self.floor_db)
        loudness = mel.max(dim=0).values
        voiced = torch.nonzero(loudness > loudness.max() - self.trim_db).flatten()
        if voiced.numel():
            mel = mel[:, int(voiced[0]): int(voiced[-1]) + 1]
        # One mean and one spread for the whole utterance: gain and loudness go, the spectral shape and its
        # movement (what emotion changes) stay. Per-band normalisation was measured to erase them (27 % vs
        # 45 % on unseen RAVDESS actors with the same linear probe; docs/results/emotion-classifier).
        return ((mel - mel.mean()) / mel.std(unbiased=False).clamp_min(1.0)).numpy()

    def fit_window(self, features: np.ndarray, start: int | None = None) -> np.ndarray:
        """(feature_size, window_frames): `features` repeated to fill the window when shorter, else the
        window at `start` (default: centred)."""
        frames = features.shape[1]
        if frames < self.window_frames:
            features = np.tile(features, (1, math.ceil(self.window_frames / frames)))
            frames = features.shape[1]
        start = (frames - self.window_frames) // 2 if start is None else int(start)
        if not 0 <= start <= frames - self.window_frames:
            raise ValueError(f"start {start} outside [0, {frames - self.window_frames}]")
        return np.ascontiguousarray(features[:, start: start + self.window_frames])

    def with_test_time_speeds(self, speeds) -> "EmotionFeatureExtractor":
        """A copy of this extractor that reads every clip at `speeds` (checked as in `__init__`)."""
        return type(self)(**{**self.to_dict(), "test_time_speeds": speeds})

    def windows(self, wave: np.ndarray, max_windows: int = 3) -> np.ndarray:
        """(k, feature_size, window_frames), k <= max_windows x len(test_time_speeds): for each test-time speed,
        evenly spaced windows that cover the utterance (one when it fits)."""
        return np.concatenate([self._windows_at(change_speed(wave, speed), max_windows)
                               for speed in self.test_time_speeds])

    def _windows_at(self, wave: np.ndarray, max_windows: int) -> np.ndarray:
        features = self.log_mel(wave)
        frames = features.shape[1]
        count = min(max_windows, math.ceil(frames / self.window_frames))
        if count <= 1:
            return self.fit_window(features)[None]
        starts = np.linspace(0, frames - self.window_frames, count).round().astype(int)
        return np.stack([self.fit_window(features, s) for s in starts])

    def model_inputs(self, windows):
        """{name: windows} for the model: `windows` (B, feature_size, window_frames) numpy or torch, transposed to
        (B, window_frames, feature_size) for a time-first model, or (B, 1, feature_size, window_frames) for an image one."""
        if self.time_first:
            windows = windows.swapaxes(1, 2)  # numpy or torch
        elif self.as_image:
            windows = windows[:, None]
        return {self.model_input_names[0]: windows}

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors=None, **kwargs) -> BatchFeature:
        """`input_features` (B, feature_size, window_frames), or `input_values` (B, window_frames, feature_size) when
        `time_first`, or `pixel_values` (B, 1, feature_size, window_frames) when `as_image`: one centred window per
        waveform."""
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"this feature extractor expects {self.sampling_rate} Hz audio, got {sampling_rate} Hz")
        waves = [raw_speech] if isinstance(raw_speech, np.ndarray) and raw_speech.ndim == 1 else list(raw_speech)
        features = np.stack([self.fit_window(self.log_mel(_check_wave(w, i))) for i, w in enumerate(waves)])
        features = self.model_inputs(features)[self.model_input_names[0]]
        return BatchFeature({self.model_input_names[0]: features}, tensor_type=return_tensors)


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """`wave` played `factor` times faster (linear resampling: pitch and tempo together); itself when 1."""
    if factor == 1.0:
        return wave
    n = max(2, int(round(len(wave) / factor)))
    return np.interp(np.linspace(0, len(wave) - 1, n), np.arange(len(wave)), wave).astype(np.float32)


def _check_speeds(speeds) -> tuple:
    if isinstance(speeds, (int, float)) or not isinstance(speeds, (list, tuple)) or not speeds:
        raise ValueError(f"test_time_speeds must be a non-empty list of speed factors, got {speeds!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.5 <= v <= 2.0
               for v in speeds):
        raise ValueError(f"test_time_speeds must be numbers in [0.5, 2], got {list(speeds)}")
    return tuple(float(v) for v in speeds)


def _check_wave(wave, index: int) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"waveforms[{index}] must be 1-D mono audio, got shape {wave.shape}")
    if wave.size == 0:
        raise ValueError(f"waveforms[{index}] is empty")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"waveforms[{index}] must be float audio in [-1, 1], got dtype {wave.dtype}")
    if not np.isfinite(wave).all():
        raise ValueError(f"waveforms[{index}] contains NaN or infinite values")
    return wave.astype(np.float32, copy=False)


def build_emotion_feature_extractor(model=None, **overrides):
    """The feature extractor a classifier was built for: `EmotionFeatureExtractor` for a log-mel model (its
    mel bands and window from the model's config; the default without a model; `overrides` such as
    `min_frequency` on top), `Wav2Vec2FeatureExtractor` (16 kHz, per-clip zero mean / unit variance, zero
    padding with an attention mask) for a waveform one."""
    known = set(inspect.signature(EmotionFeatureExtractor.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown feature extractor settings {unknown}; known: {sorted(known)}")
    if model is None or _is_logmel(model):
        if model is None:
            return EmotionFeatureExtractor(**overrides)
        config = model.config
        if config.model_type == EmotionEnsembleConfig.model_type:  # its members' inputs
            config = config.member_configs()[0]
        if config.model_type == "whisper":
            layout = dict(feature_size=config.num_mel_bins, window_frames=2 * config.max_source_positions)
        elif config.model_type == "resnet":
            layout = dict(feature_size=config.num_mel_bins, window_frames=config.window_frames, as_image=True)
        else:
            layout = dict(feature_size=config.num_mel_bins, window_frames=config.max_length, time_first=True)
        clash = sorted(set(layout) & set(overrides))
        if clash:
            raise ValueError(f"feature extractor overrides {clash} are set by the model's config; change the model")
        return EmotionFeatureExtractor(**layout, **overrides)
    if overrides:
        raise ValueError(f"feature extractor overrides {sorted(overrides)} apply to log-mel classifiers; "
                         f"{type(model).__name__} reads the waveform")
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


def load_emotion_feature_extractor(path: str | os.PathLike, model=None):
    """The feature extractor saved beside a classifier (preprocessor_config.json); for a pipeline's
    `emotion_classifier` folder, the pipeline's `feature_extractor` beside it (it can carry settings such as
    `test_time_speeds` that the classifier's config does not); when there is neither,
    `build_emotion_feature_extractor(model)`."""
    config_file = Path(path) / "preprocessor_config.json"
    in_pipeline = Path(path).parent / "feature_extractor"
    if not config_file.is_file() and (Path(path).parent / "model_index.json").is_file() \
            and (in_pipeline / "preprocessor_config.json").is_file():
        path, config_file = in_pipeline, in_pipeline / "preprocessor_config.json"
    if not config_file.is_file():
        return build_emotion_feature_extractor(model)
    kind = json.loads(config_file.read_text()).get("feature_extractor_type")
    if kind == EmotionFeatureExtractor.__name__:
        return EmotionFeatureExtractor.from_pretrained(path, local_files_only=True)
    if kind == Wav2Vec2FeatureExtractor.__name__:
        return Wav2Vec2FeatureExtractor.from_pretrained(path, local_files_only=True)
    raise ValueError(f"{config_file} holds a {kind!r} feature extractor; expected {EmotionFeatureExtractor.__name__} "
                     f"or {Wav2Vec2FeatureExtractor.__name__}")


def load_emotion_classifier(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """Load an audio classifier from a local directory (nothing is downloaded).

    - A checkpoint already labelled with EMOTIONS (e.g. one saved by this project) loads as is.
    - A backbone or a checkpoint with generic labels ("LABEL_0", ...), e.g. a pretrained
      wav2vec2-conformer, gets the 8 emotion labels and a new, randomly initialised head to fine-tune.
    - A classifier trained on other labels raises ValueError rather than silently mislabelling.

    Any architecture `AutoModelForAudioClassification` knows (wav2vec2, wav2vec2-conformer, HuBERT, ...)
    works. `kwargs` go to `from_pretrained` (e.g. `dtype=torch.bfloat16`).
    """
    if not os.path.isdir(path):
        raise ValueError(f"path must be a local directory with a saved model; {str(path)!r} is not a directory")
    label_overrides = sorted(set(kwargs) & set(_LABEL_KEYS))
    if label_overrides:
        raise ValueError(f"{label_overrides} cannot be overridden: the labels are talking_head.constants.EMOTIONS")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    id2label, label2id = _emotion_labels()
    labels = {int(i): str(name) for i, name in config.id2label.items()}
    # The log-mel CNN is a transformers image classifier (its input is the log-mel window as an image).
    auto = AutoModelForImageClassification if config.model_type == "resnet" else AutoModelForAudioClassification
    if labels == id2label:
        return auto.from_pretrained(path, local_files_only=True, **kwargs)
    if set(labels.values()) != {f"LABEL_{i}" for i in labels}:
        raise ValueError(
            f"the checkpoint in {str(path)!r} classifies {list(labels.values())}, not the project's emotions "
            f"{list(EMOTIONS)} in that order; map its classes before using it here"
        )
    return auto.from_pretrained(
        path,
        local_files_only=True,
        num_labels=len(EMOTIONS),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,  # a generic head of another size is replaced
        **kwargs,
    )


def _receptive_field(config) -> int:
    """Samples the conv feature encoder needs to produce one output step (400 for the standard encoder)."""
    field, stride = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        field += (kernel - 1) * stride
        stride *= step
    return field


def _segments(wave: np.ndarray, length: int, max_segments: int) -> list[np.ndarray]:
    """The whole wave when it fits in `length` samples, else at most `max_segments` evenly spaced pieces of
    `length` samples (views): a bounded amount of work whatever the recording's length."""
    if wave.size <= length:
        return [wave]
    count = min(max_segments, math.ceil(wave.size / length))
    starts = np.linspace(0, wave.size - length, count).round().astype(int)
    return [wave[s: s + length] for s in starts]


@torch.no_grad()
def predict_emotion(model: PreTrainedModel, feature_extractor, waveforms, window_seconds: float | None = None,
                    batch_size: int = 8, max_windows: int = 8) -> torch.Tensor:
    """Emotion probabilities for each clip: (len(waveforms), num_labels) float32 on the CPU.

    Args:
        model: an audio classifier (`build_emotion_classifier` / `load_emotion_classifier`).
        feature_extractor: its feature extractor (`build_emotion_feature_extractor(model)` /
            `load_emotion_feature_extractor(path)`).
        waveforms: a list of 1-D float arrays (numpy or torch), mono at `feature_extractor.sampling_rate`
            (16 kHz); lengths may differ.
        window_seconds: a clip longer than this is scored on at most `max_windows` evenly spaced pieces of
            this length, and their logits averaged, so time and memory are bounded whatever the length
            (default: 2 x the log-mel window, i.e. 6 s, each piece giving up to 3 windows per test-time
            speed of the feature extractor; 10 s for a waveform model).
        batch_size: at most this many windows per forward pass.
        max_windows: pieces scored per clip at most.

    Very short clips are repeated to the log-mel window, or zero-padded to the waveform encoder's receptive
    field (400 samples, 25 ms). The model runs in eval mode (its previous mode is restored) on its own device
    and dtype.
    """
    if isinstance(waveforms, (np.ndarray, torch.Tensor)) or not isinstance(waveforms, (list, tuple)):
        raise ValueError("waveforms must be a list of 1-D arrays (one per clip), e.g. [wave] for a single clip")
    if not waveforms:
        raise ValueError("waveforms is empty")
    logmel = isinstance(feature_extractor, EmotionFeatureExtractor)
    if logmel != _is_logmel(model):
        raise ValueError(f"feature extractor {type(feature_extractor).__name__} does not fit the classifier "
                         f"{type(model).__name__}; use build_emotion_feature_extractor(model)")
    if window_seconds is None:
        window_seconds = 2 * feature_extractor.window_seconds if logmel else 10.0
    if not (isinstance(window_seconds, (int, float)) and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
    for name, value in (("batch_size", batch_size), ("max_windows", max_windows)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    sampling_rate = feature_extractor.sampling_rate
    min_length = 1 if logmel else _receptive_field(model.config)
    piece = max(int(round(window_seconds * sampling_rate)), min_length)
    inputs, owners = [], []
    for index, wave in enumerate(waveforms):
        for segment in _segments(_check_wave(wave, index), piece, max_windows):
            if logmel:
                windows = list(torch.from_numpy(feature_extractor.windows(segment)))
            else:
                segment = np.pad(segment, (0, max(0, min_length - segment.size)))
                windows = [segment]
            inputs += windows
            owners += [index] * len(windows)

    device, dtype = model.device, model.dtype
    logit_sums = torch.zeros(len(waveforms), model.config.num_labels, dtype=torch.float64)
    counts = torch.zeros(len(waveforms), 1, dtype=torch.float64)
    # Waveform pieces of different lengths never share a forward pass: padding is not exactly neutral for
    # the Conformer's depthwise convolutions, so a clip's prediction stays independent of its batch.
    by_length = {}
    for i, item in enumerate(inputs):
        by_length.setdefault(item.shape[-1], []).append(i)
    batches = [same[s: s + batch_size] for same in by_length.values() for s in range(0, len(same), batch_size)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            if logmel:
                features = torch.stack([inputs[i] for i in batch]).to(device=device, dtype=dtype)
                logits = model(**feature_extractor.model_inputs(features)).logits
            else:
                features = feature_extractor([inputs[i] for i in batch], sampling_rate=sampling_rate,
                                             return_attention_mask=True, return_tensors="pt")
                logits = model(features.input_values.to(device=device, dtype=dtype),
                               attention_mask=features.attention_mask.to(device)).logits
            for row, i in zip(logits.double().cpu(), batch):
                logit_sums[owners[i]] += row
                counts[owners[i]] += 1
    finally:
        model.train(was_training)
    return torch.softmax(logit_sums / counts, dim=-1).float()
