# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""The audio emotion classifier (DESIGN.md section 2.1).

Not a custom class: a stock transformers audio-classification model,
`Wav2Vec2ConformerForSequenceClassification` (the paper uses a Conformer),
built from a config whose labels are the project's 8 MEAD emotions in the one
canonical order (`talking_head.constants.EMOTIONS`). Because it is a stock
model it saves, loads and sits in a diffusers pipeline as-is (model_index.json
records it as ["transformers", "Wav2Vec2ConformerForSequenceClassification"]).

    model = build_emotion_classifier("tiny")          # random init, train from scratch
    model = load_emotion_classifier("path/to/ckpt")   # a local checkpoint (no downloads here)
    extractor = build_emotion_feature_extractor()
    probs = predict_emotion(model, extractor, [wave_a, wave_b])   # (2, 8), rows sum to 1
    EMOTIONS[probs.argmax(-1)[0]]

Presets (`emotion_classifier_config`):
- "tiny":  ~0.06M parameters, seconds per step on a CPU; for tests and smoke runs.
- "small": ~11M parameters; a from-scratch model for one speaker's few minutes.
- "paper": the wav2vec2-conformer-rel-pos-large architecture (~0.62B), the size of
  the paper's ConformerXL; use it to fine-tune a pretrained checkpoint of that shape.
All use a layer-normalised conv feature encoder (`feat_extract_norm="layer"`):
the "group" variant normalises over the padded sequence, so its predictions
change with the padding of the batch, and it cannot use an attention mask.
"""

import math
import os

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForAudioClassification,
    PreTrainedModel,
    Wav2Vec2ConformerConfig,
    Wav2Vec2ConformerForSequenceClassification,
    Wav2Vec2FeatureExtractor,
)

from talking_head.constants import EMOTIONS, SAMPLE_RATE

__all__ = [
    "EMOTION_CLASSIFIER_PRESETS",
    "build_emotion_classifier",
    "build_emotion_feature_extractor",
    "emotion_classifier_config",
    "load_emotion_classifier",
    "predict_emotion",
]

EMOTION_CLASSIFIER_PRESETS = {
    "tiny": dict(
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
    "small": dict(
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

# Shared by all presets; see the module docstring for feat_extract_norm.
_COMMON = dict(feat_extract_norm="layer", conv_bias=True, position_embeddings_type="relative")
_LABEL_KEYS = ("id2label", "label2id", "num_labels")


def _emotion_labels():
    id2label = {i: name for i, name in enumerate(EMOTIONS)}
    return id2label, {name: i for i, name in id2label.items()}


def emotion_classifier_config(preset: str = "tiny", **overrides) -> Wav2Vec2ConformerConfig:
    """The config of a preset ("tiny", "small", "paper") with the 8 emotion labels set.

    `overrides` are `Wav2Vec2ConformerConfig` arguments (e.g. `num_hidden_layers=4`); unknown names raise
    (the config class would silently accept a typo). The labels are fixed: they are the project's EMOTIONS.
    """
    if preset not in EMOTION_CLASSIFIER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(EMOTION_CLASSIFIER_PRESETS)}")
    label_overrides = sorted(set(overrides) & set(_LABEL_KEYS))
    if label_overrides:
        raise ValueError(f"{label_overrides} cannot be overridden: the labels are talking_head.constants.EMOTIONS")
    known = set(Wav2Vec2ConformerConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown Wav2Vec2ConformerConfig arguments: {unknown}")
    id2label, label2id = _emotion_labels()
    kwargs = {**_COMMON, **EMOTION_CLASSIFIER_PRESETS[preset], **overrides}
    return Wav2Vec2ConformerConfig(**kwargs, num_labels=len(EMOTIONS), id2label=id2label, label2id=label2id)


def build_emotion_classifier(preset: str = "tiny", **overrides) -> Wav2Vec2ConformerForSequenceClassification:
    """A randomly initialised classifier from `emotion_classifier_config(preset, **overrides)`."""
    return Wav2Vec2ConformerForSequenceClassification(emotion_classifier_config(preset, **overrides))


def build_emotion_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """16 kHz, per-clip zero-mean / unit-variance normalisation, zero padding with an attention mask."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


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
    if labels == id2label:
        return AutoModelForAudioClassification.from_pretrained(path, local_files_only=True, **kwargs)
    if set(labels.values()) != {f"LABEL_{i}" for i in labels}:
        raise ValueError(
            f"the checkpoint in {str(path)!r} classifies {list(labels.values())}, not the project's emotions "
            f"{list(EMOTIONS)} in that order; map its classes before using it here"
        )
    return AutoModelForAudioClassification.from_pretrained(
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


@torch.no_grad()
def predict_emotion(
    model: PreTrainedModel,
    feature_extractor: Wav2Vec2FeatureExtractor,
    waveforms,
    window_seconds: float = 10.0,
    batch_size: int = 8,
) -> torch.Tensor:
    """Emotion probabilities for each clip: (len(waveforms), num_labels) float32 on the CPU.

    Args:
        model: an audio classifier (from `build_emotion_classifier` / `load_emotion_classifier`).
        feature_extractor: from `build_emotion_feature_extractor`.
        waveforms: a list of 1-D float arrays (numpy or torch), mono at `feature_extractor.sampling_rate`
            (16 kHz); lengths may differ.
        window_seconds: a long clip is cut into equal windows of at most this length, each scored on its
            own, and the logits averaged, so memory stays bounded whatever the length.
        batch_size: at most this many windows (of equal length) per forward pass.

    Clips shorter than the conv encoder's receptive field (400 samples, 25 ms) are zero-padded to it.
    The model runs in eval mode (its previous mode is restored) on its own device and dtype.
    """
    if isinstance(waveforms, (np.ndarray, torch.Tensor)) or not isinstance(waveforms, (list, tuple)):
        raise ValueError("waveforms must be a list of 1-D arrays (one per clip), e.g. [wave] for a single clip")
    if not waveforms:
        raise ValueError("waveforms is empty")
    if not (isinstance(window_seconds, (int, float)) and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    sampling_rate = feature_extractor.sampling_rate
    min_length = _receptive_field(model.config)
    window = max(int(round(window_seconds * sampling_rate)), min_length)

    chunks, owners = [], []
    for index, wave in enumerate(waveforms):
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
        wave = wave.astype(np.float32)
        # Equal windows (lengths differ by at most one sample) rather than full ones plus a tail:
        # no window is a useless few milliseconds.
        for chunk in np.array_split(wave, math.ceil(wave.size / window)):
            if chunk.size < min_length:
                chunk = np.pad(chunk, (0, min_length - chunk.size))
            chunks.append(chunk)
            owners.append(index)

    device, dtype = model.device, model.dtype
    logit_sums = torch.zeros(len(waveforms), model.config.num_labels, dtype=torch.float64)
    counts = torch.zeros(len(waveforms), 1, dtype=torch.float64)
    # Only windows of the same length share a forward pass. Padding is not exactly neutral (the
    # Conformer's depthwise convolutions see padded steps), so this keeps a clip's prediction
    # independent of what it is batched with.
    by_length = {}
    for i, chunk in enumerate(chunks):
        by_length.setdefault(chunk.size, []).append(i)
    batches = [same[s : s + batch_size] for same in by_length.values() for s in range(0, len(same), batch_size)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            features = feature_extractor(
                [chunks[i] for i in batch],
                sampling_rate=sampling_rate,
                return_attention_mask=True,
                return_tensors="pt",
            )
            logits = model(
                features.input_values.to(device=device, dtype=dtype),
                attention_mask=features.attention_mask.to(device),
            ).logits
            for row, i in zip(logits.double().cpu(), batch):
                logit_sums[owners[i]] += row
                counts[owners[i]] += 1
    finally:
        model.train(was_training)
    return torch.softmax(logit_sums / counts, dim=-1).float()
