"""The log-mel emotion classifier (the shipped family): its feature extractor (trim, per-band normalisation,
fixed window), save / load, bounded prediction on any length, the bad audio the issue names, and the
training helpers (balanced sampling, augmentation, soft targets)."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import voice_like
from transformers import WhisperForAudioClassification

from talking_head.constants import EMOTIONS
from talking_head.models.emotion_classifier import (
    EmotionFeatureExtractor,
    build_emotion_classifier,
    build_emotion_feature_extractor,
    emotion_classifier_config,
    load_emotion_classifier,
    load_emotion_feature_extractor,
    predict_emotion,
)

SR = 16000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_emotion_classifier("tiny").eval()


@pytest.fixture(scope="module")
def extractor(model):
    return build_emotion_feature_extractor(model)


def test_presets_are_whisper_classifiers_with_the_project_labels(model, extractor):
    assert isinstance(model, WhisperForAudioClassification)
    assert model.config.id2label == {i: name for i, name in enumerate(EMOTIONS)}
    assert isinstance(extractor, EmotionFeatureExtractor)
    assert extractor.feature_size == model.config.num_mel_bins
    assert extractor.window_frames == 2 * model.config.max_source_positions
    small = emotion_classifier_config("small")
    assert (small.num_mel_bins, small.max_source_positions) == (64, 150)
    with pytest.raises(ValueError, match="unknown WhisperConfig"):
        emotion_classifier_config("small", hidden_size=8)
    with pytest.raises(ValueError, match="window_frames"):
        emotion_classifier_config("small", window_frames=7)


def test_features_are_trimmed_normalised_and_fill_the_window(extractor):
    speech = voice_like(0.5, seed=1)
    padded = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(SR, np.float32)])
    trimmed = extractor.log_mel(padded)
    # The second of silence on each side is gone (within a frame or two of the speech's length).
    assert abs(trimmed.shape[1] - extractor.log_mel(speech).shape[1]) <= 3
    assert abs(trimmed.mean()) < 1e-4 and abs(trimmed.std() - 1) < 1e-3
    # Gain does not matter (per-utterance normalisation).
    np.testing.assert_allclose(extractor.log_mel(speech * 0.05), extractor.log_mel(speech), atol=1e-2)
    features = extractor([speech, voice_like(2.0, seed=2)], sampling_rate=SR, return_tensors="pt").input_features
    assert features.shape == (2, extractor.feature_size, extractor.window_frames)
    # A short utterance is repeated, not padded with a constant.
    short = extractor.log_mel(voice_like(0.3, seed=3))
    window = extractor.fit_window(short)
    offset = int(np.argmin(np.abs(short - window[:, :1]).sum(axis=0)))
    cyclic = (offset + np.arange(window.shape[1])) % short.shape[1]
    np.testing.assert_allclose(window, short[:, cyclic])
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        extractor([speech], sampling_rate=8000)


def test_save_load_round_trip(model, extractor, tmp_path):
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["feature_extractor_type"] == \
        "EmotionFeatureExtractor"
    loaded, loaded_extractor = load_emotion_classifier(tmp_path), load_emotion_feature_extractor(tmp_path)
    assert loaded_extractor.to_dict() == extractor.to_dict()
    waves = [voice_like(0.7, seed=4), voice_like(2.5, seed=5)]
    torch.testing.assert_close(predict_emotion(loaded, loaded_extractor, waves), predict_emotion(model, extractor, waves))
    # A folder without a preprocessor config gets the extractor the model was built for.
    (tmp_path / "preprocessor_config.json").unlink()
    assert load_emotion_feature_extractor(tmp_path, loaded).to_dict() == extractor.to_dict()


def _bad_audio():
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    speech = voice_like(3.0, seed=6)
    return {
        "silence": np.zeros(3 * SR, np.float32),
        "0.1 s": voice_like(0.1, seed=7),
        "one sample": np.array([0.1], np.float32),
        "pure tone": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "1 kHz": (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32),
        "clipped at full scale": np.clip(speech * 50, -1, 1),
        "white noise": rng.uniform(-1, 1, 3 * SR).astype(np.float32),
        "music-like chord": sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392)).astype(np.float32) / 3,
    }


@pytest.mark.parametrize("name", list(_bad_audio()))
def test_bad_audio_gives_a_probability_vector(model, extractor, name):
    probs = predict_emotion(model, extractor, [_bad_audio()[name]])
    assert probs.shape == (1, 8) and torch.isfinite(probs).all() and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))


def test_ten_minutes_are_scored_on_a_bounded_number_of_windows(model, extractor, monkeypatch):
    seen = []
    forward = model.forward

    def counting(*args, **kwargs):
        seen.append(kwargs["input_features"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    long = np.tile(voice_like(10.0, seed=8), 60)  # 10 minutes
    started = time.perf_counter()
    probs = predict_emotion(model, extractor, [long], max_windows=8)
    assert time.perf_counter() - started < 30  # generous: it is a handful of windows, not 10 minutes of them
    assert torch.isfinite(probs).all()
    assert 1 <= sum(seen) <= 8 * 3


def test_extractor_must_fit_the_model(model):
    conformer = build_emotion_classifier("conformer-tiny")
    with pytest.raises(ValueError, match="does not fit"):
        predict_emotion(conformer, build_emotion_feature_extractor(model), [voice_like(0.3)])
    with pytest.raises(ValueError, match="does not fit"):
        predict_emotion(model, build_emotion_feature_extractor(conformer), [voice_like(0.3)])


def test_training_helpers():
    from talking_head.trainers.emotion import BalancedView, augment_waveform, collate_emotion, mix, soft_targets

    class Labelled:
        labels = np.array([0, 0, 5, 5, 5, 5, 1])

        def set_epoch(self, epoch):
            pass

        def __getitem__(self, i):
            return {"label": torch.tensor(int(self.labels[i])), "audio": torch.from_numpy(voice_like(0.4, seed=i)),
                    "clip_id": str(i), "speaker": "a"}

    view = BalancedView(Labelled())
    assert len(view) == 12 and np.bincount([int(view[i]["label"]) for i in range(len(view))]).tolist()[:6] == \
        [4, 4, 0, 0, 0, 4]
    # Smoothing goes to the classes present only, and rows sum to 1.
    present = torch.zeros(8, dtype=torch.bool)
    present[[0, 1, 5]] = True
    targets = soft_targets(torch.tensor([0, 5]), present, 0.1)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))
    assert targets[0, 2] == 0 and targets[0, 0] == pytest.approx(0.9) and targets[0, 1] == pytest.approx(0.05)
    inputs, mixed = mix({"input_features": torch.randn(2, 3, 4)}, targets, 0.4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mixed.sum(-1), torch.ones(2))
    # Augmented audio stays audio; training batches are fixed windows.
    args = SimpleNamespace(aug_speed=0.1, aug_band_limit_prob=1.0, aug_gain_db=6.0, aug_noise_prob=1.0,
                           spec_augment=2)
    wave = augment_waveform(voice_like(0.5), np.random.default_rng(0), args)
    assert wave.dtype == np.float32 and np.abs(wave).max() <= 1 and 0.4 * SR < wave.size < 0.6 * SR
    # Band-limiting alone: nothing left above 4 kHz (the upper half of the spectrum).
    only_band = SimpleNamespace(**(vars(args) | dict(aug_noise_prob=0.0, aug_speed=0.0, aug_gain_db=0.0)))
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, SR)
    spectrum = np.abs(np.fft.rfft(augment_waveform(noise, np.random.default_rng(0), only_band)))
    assert spectrum[int(len(spectrum) * 0.55):].max() < 1e-3 * spectrum[: len(spectrum) // 4].max()
    extractor = EmotionFeatureExtractor(feature_size=16, window_frames=40)
    batch = collate_emotion([Labelled()[i] | {"index": i} for i in range(3)], extractor, args=args)
    assert batch["input_features"].shape == (3, 16, 40) and batch["labels"].tolist() == [0, 0, 5]
