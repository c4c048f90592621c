"""The emotion classifier: labels in the project's order, save / load, prediction on clips of any length,
trainable from scratch, bfloat16, local checkpoints, and input errors; for the waveform Conformer family
here, the log-mel family (the shipped one) in test_emotion_logmel.py."""

import numpy as np
import pytest
import torch
from conftest import voice_like
from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerForSequenceClassification, Wav2Vec2ConformerModel
from transformers import Wav2Vec2FeatureExtractor

from talking_head.constants import EMOTIONS
from talking_head.models.emotion_classifier import (
    EMOTION_CLASSIFIER_PRESETS,
    build_emotion_classifier,
    build_emotion_feature_extractor,
    emotion_classifier_config,
    load_emotion_classifier,
    predict_emotion,
)


SR = 16000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_emotion_classifier("conformer-tiny").eval()


@pytest.fixture(scope="module")
def extractor(model):
    return build_emotion_feature_extractor(model)


def logits_of(model, extractor, waves):
    features = extractor(waves, sampling_rate=SR, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        return model(features.input_values, attention_mask=features.attention_mask).logits


def test_labels_are_the_project_emotions(model):
    assert isinstance(model, Wav2Vec2ConformerForSequenceClassification)
    assert model.config.id2label == {i: name for i, name in enumerate(EMOTIONS)}
    assert model.config.label2id == {name: i for i, name in enumerate(EMOTIONS)}
    assert model.config.num_labels == 8
    assert model.classifier.out_features == 8
    # The larger presets are configs of the same family (built here as configs only: they are big).
    for preset in ("conformer-small", "paper"):
        config = emotion_classifier_config(preset)
        assert config.hidden_size == EMOTION_CLASSIFIER_PRESETS[preset]["hidden_size"]
        assert config.id2label == model.config.id2label


def test_config_errors():
    with pytest.raises(ValueError, match="preset"):
        emotion_classifier_config("huge")
    with pytest.raises(ValueError, match="unknown"):
        emotion_classifier_config("conformer-tiny", hiden_size=8)
    with pytest.raises(ValueError, match="EMOTIONS"):
        emotion_classifier_config("conformer-tiny", num_labels=3)
    assert emotion_classifier_config("conformer-tiny", num_hidden_layers=1).num_hidden_layers == 1


def test_save_load_round_trip(model, extractor, tmp_path):
    waves = [voice_like(0.5, seed=1), voice_like(0.3, seed=2)]
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = Wav2Vec2ConformerForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == model.config.id2label
    assert torch.equal(logits_of(loaded, extractor, waves), logits_of(model, extractor, waves))
    # The project's loader takes the same directory as is.
    again = load_emotion_classifier(tmp_path).eval()
    assert torch.equal(logits_of(again, extractor, waves), logits_of(model, extractor, waves))


def test_feature_extractor(extractor, tmp_path):
    features = extractor([voice_like(0.2), voice_like(0.1)], sampling_rate=SR, padding=True, return_tensors="pt")
    assert features.input_values.shape == (2, 3200)
    assert features.attention_mask.tolist()[1] == [1] * 1600 + [0] * 1600
    valid = features.input_values[0]
    assert abs(valid.mean().item()) < 1e-4 and abs(valid.std().item() - 1) < 1e-2  # normalised
    extractor.save_pretrained(tmp_path)
    loaded = Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    assert loaded.sampling_rate == SR and loaded.return_attention_mask and loaded.do_normalize


def test_predict_variable_lengths_and_very_short_audio(model, extractor):
    waves = [voice_like(1.0, seed=1), voice_like(0.05, seed=2), voice_like(0.002, seed=3), voice_like(0.4, seed=4)]
    probs = predict_emotion(model, extractor, waves)
    assert probs.shape == (4, 8) and probs.dtype == torch.float32 and probs.device.type == "cpu"
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    assert (probs >= 0).all()
    # A clip's prediction does not depend on what it is batched with.
    alone = torch.cat([predict_emotion(model, extractor, [w]) for w in waves])
    torch.testing.assert_close(probs, alone)
    # Torch tensors work as well as numpy arrays.
    torch.testing.assert_close(predict_emotion(model, extractor, [torch.from_numpy(w) for w in waves]), probs)


def test_long_audio_is_scored_in_windows(model, extractor):
    wave = voice_like(3.0, seed=5)
    probs = predict_emotion(model, extractor, [wave], window_seconds=1.0)
    windows = [wave[i * SR : (i + 1) * SR] for i in range(3)]
    expected = torch.softmax(torch.stack([logits_of(model, extractor, [w])[0] for w in windows]).mean(0), -1)
    torch.testing.assert_close(probs[0], expected)


def test_predict_restores_training_mode(extractor):
    model = build_emotion_classifier("conformer-tiny").train()
    predict_emotion(model, extractor, [voice_like(0.2)])
    assert model.training


def test_trainable_from_scratch():
    # Two classes a Conformer can tell apart: a low hum and a high whistle.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t = np.arange(8000) / SR
    waves = [
        (0.3 * np.sin(2 * np.pi * (220 if i % 2 == 0 else 2000) * t + rng.uniform(0, 6.3))).astype(np.float32)
        + 0.02 * rng.standard_normal(t.size).astype(np.float32)
        for i in range(8)
    ]
    labels = torch.tensor([i % 2 for i in range(8)])
    model = build_emotion_classifier("conformer-tiny")
    features = build_emotion_feature_extractor(model)(waves, sampling_rate=SR, return_tensors="pt")

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return model(features.input_values, labels=labels).loss.item()

    before = eval_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(15):
        model.train()
        loss = model(features.input_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert eval_loss() < 0.7 * before


def test_runs_in_bfloat16(extractor):
    torch.manual_seed(0)
    model = build_emotion_classifier("conformer-tiny").to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    probs = predict_emotion(model, extractor, [voice_like(0.5), voice_like(0.3)])
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_load_from_local_backbone_and_label_checks(extractor, tmp_path):
    # A pretrained backbone with generic labels gets the emotion labels and a fresh head.
    backbone_config = Wav2Vec2ConformerConfig(**EMOTION_CLASSIFIER_PRESETS["conformer-tiny"], feat_extract_norm="layer")
    torch.manual_seed(1)
    backbone = Wav2Vec2ConformerModel(backbone_config)
    backbone.save_pretrained(tmp_path / "backbone")
    model = load_emotion_classifier(tmp_path / "backbone")
    assert isinstance(model, Wav2Vec2ConformerForSequenceClassification)
    assert model.config.id2label == {i: name for i, name in enumerate(EMOTIONS)}
    loaded_backbone = model.wav2vec2_conformer.state_dict()
    assert all(torch.equal(loaded_backbone[k], v) for k, v in backbone.state_dict().items())
    assert predict_emotion(model, extractor, [voice_like(0.3)]).shape == (1, 8)

    # A classifier trained on other labels is refused rather than silently mislabelled.
    other = Wav2Vec2ConformerForSequenceClassification(
        Wav2Vec2ConformerConfig(**EMOTION_CLASSIFIER_PRESETS["conformer-tiny"], id2label={0: "positive", 1: "negative"})
    )
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="positive"):
        load_emotion_classifier(tmp_path / "other")
    with pytest.raises(ValueError, match="not a directory"):
        load_emotion_classifier(tmp_path / "missing")


@pytest.mark.parametrize(
    "waveforms, kwargs, message",
    [
        (np.zeros(1600, np.float32), {}, "list"),
        ([], {}, "empty"),
        ([np.zeros((2, 1600), np.float32)], {}, "1-D"),
        ([np.zeros(0, np.float32)], {}, "empty"),
        ([np.full(1600, np.nan, np.float32)], {}, "NaN"),
        ([np.zeros(1600, np.int16)], {}, "float"),
        ([np.zeros(1600, np.float32)], {"window_seconds": 0}, "window_seconds"),
    ],
)
def test_predict_bad_inputs(model, extractor, waveforms, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict_emotion(model, extractor, waveforms, **kwargs)
