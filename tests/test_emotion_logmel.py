"""The log-mel emotion classifier (the shipped family): its feature extractor (trim, per-band normalisation,
fixed window), save / load, bounded prediction on any length, the bad audio the issue names, and the
training helpers (balanced sampling, augmentation, soft targets)."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import voice_like
from transformers import WhisperForAudioClassification

from talking_head.constants import EMOTIONS
from talking_head.models.emotion_classifier import (
    EmotionFeatureExtractor,
    build_emotion_classifier,
    build_emotion_feature_extractor,
    change_speed,
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


def test_test_time_speeds_average_the_clip_read_at_each_speed(model, extractor, tmp_path):
    """`test_time_speeds`: predict_emotion averages the windows of the clip resampled to each speed; the setting
    survives save / load, and a bad one is refused by name."""
    wave = voice_like(0.8, seed=11)  # under the tiny preset's 1 s window at every speed
    assert change_speed(wave, 1.0) is wave and len(change_speed(wave, 1.25)) == round(len(wave) / 1.25)
    reader = build_emotion_feature_extractor(model, test_time_speeds=[0.9, 1.0, 1.1])
    assert extractor.with_test_time_speeds([0.9, 1.0, 1.1]).to_dict() == reader.to_dict()
    windows = reader.windows(wave)
    assert windows.shape[0] == 3  # one window per speed
    np.testing.assert_allclose(windows[1], extractor.windows(wave)[0])
    np.testing.assert_allclose(windows[2], extractor.windows(change_speed(wave, 1.1))[0])
    with torch.no_grad():
        logits = model(**extractor.model_inputs(torch.from_numpy(windows))).logits.double().mean(0)
    torch.testing.assert_close(predict_emotion(model, reader, [wave])[0], torch.softmax(logits, -1).float())
    # A long clip: at most 3 windows per piece and speed, so still a bounded number.
    assert reader.windows(voice_like(20.0, seed=12), max_windows=3).shape[0] <= 9
    reader.save_pretrained(tmp_path)
    assert load_emotion_feature_extractor(tmp_path, model).test_time_speeds == (0.9, 1.0, 1.1)
    # A pipeline keeps the extractor in its own folder: the classifier's folder then reads that one.
    model.save_pretrained(tmp_path / "pipe" / "emotion_classifier")
    reader.save_pretrained(tmp_path / "pipe" / "feature_extractor")
    assert load_emotion_feature_extractor(tmp_path / "pipe" / "emotion_classifier", model).test_time_speeds == (1.0,)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    assert load_emotion_feature_extractor(tmp_path / "pipe" / "emotion_classifier", model).test_time_speeds == (
        0.9, 1.0, 1.1)
    for bad in ([], 1.0, [0.9, float("nan")], [3.0], [True]):
        with pytest.raises(ValueError, match="test_time_speeds"):
            EmotionFeatureExtractor(test_time_speeds=bad)


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
                           aug_eq_prob=1.0, aug_freq_warp=0.1, spec_augment=2)
    wave = augment_waveform(voice_like(0.5), np.random.default_rng(0), args)
    assert wave.dtype == np.float32 and np.abs(wave).max() <= 1 and 0.4 * SR < wave.size < 0.6 * SR
    # Band-limiting alone: nothing left above 4 kHz (the upper half of the spectrum).
    only_band = SimpleNamespace(**(vars(args) | dict(aug_noise_prob=0.0, aug_speed=0.0, aug_gain_db=0.0,
                                                     aug_eq_prob=0.0)))
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, SR)
    spectrum = np.abs(np.fft.rfft(augment_waveform(noise, np.random.default_rng(0), only_band)))
    assert spectrum[int(len(spectrum) * 0.55):].max() < 1e-3 * spectrum[: len(spectrum) // 4].max()
    extractor = EmotionFeatureExtractor(feature_size=16, window_frames=40)
    batch = collate_emotion([Labelled()[i] | {"index": i} for i in range(3)], extractor, args=args)
    assert batch["input_features"].shape == (3, 16, 40) and batch["labels"].tolist() == [0, 0, 5]


def test_equaliser_and_frequency_warp():
    from talking_head.trainers.emotion import band_centres_hz, frequency_warp, random_equaliser_db

    # The equaliser is smooth and bounded: at most 12 dB of shelf plus 3 dB per octave away from 500 Hz.
    freqs = np.linspace(0, SR / 2, 513)
    for seed in range(20):
        gain = random_equaliser_db(freqs, np.random.default_rng(seed))
        octaves = np.abs(np.log2(np.maximum(freqs, 50.0) / 500.0))
        assert np.isfinite(gain).all() and (np.abs(gain) <= 12 + 3 * octaves + 1e-6).all()
        assert np.abs(np.diff(gain)).max() < 3.0
    # The warp moves a spectral peak up (factor > 1) or down (< 1) by about the factor, and 1 is the identity.
    extractor = EmotionFeatureExtractor()
    centres = band_centres_hz(extractor)
    assert np.all(np.diff(centres) > 0) and 40 < centres[0] < 120 and 3600 < centres[-1] < 4000
    peak = int(np.argmin(np.abs(centres - 1000)))
    features = np.zeros((64, 5), np.float32)
    features[peak] = 1.0
    for factor in (0.9, 1.1):
        moved = frequency_warp(features, centres, factor)
        assert moved.shape == features.shape and moved.dtype == features.dtype
        assert abs(centres[moved[:, 0].argmax()] / 1000 - factor) < 0.05
    assert frequency_warp(features, centres, 1.0) is features


def test_speaker_adversary_reverses_its_gradient_into_the_encoder():
    from talking_head.trainers.emotion import SpeakerAdversary, collate_emotion, train_loss

    torch.manual_seed(0)
    model = build_emotion_classifier("tiny", dropout=0.0)
    extractor = build_emotion_feature_extractor(model)
    items = [{"label": torch.tensor(c), "audio": torch.from_numpy(voice_like(0.4, seed=i)), "clip_id": str(i),
              "speaker": s, "index": i} for i, (c, s) in enumerate([(0, "a"), (5, "b"), (0, "b"), (5, "a")])]
    batch = collate_emotion(items, extractor)
    adversary = SpeakerAdversary(model.classifier, ["a", "b"], weight=0.5)
    assert adversary.targets(["b", "a"], "cpu").tolist() == [[0, 1], [1, 0]]
    adversary.ramp(0.0, 0.5)
    assert adversary.weight == 0.0
    adversary.ramp(1.0, 0.5)
    assert adversary.weight == pytest.approx(0.5, abs=1e-4)
    encoder = model.encoder.conv1.weight

    def gradients(loss_of):
        model.zero_grad()
        adversary.zero_grad()
        model(input_features=batch["input_features"])
        loss_of().backward()
        return encoder.grad.clone(), adversary.head.weight.grad.clone()

    targets = adversary.targets(batch["speaker"], "cpu")
    adversary.weight = 0.5
    reversed_encoder, head = gradients(lambda: adversary.loss(targets))
    # The same loss without reversal: the head learns the same way, the encoder is pushed the other way, x 0.5.
    plain = lambda: -(targets * F.log_softmax(adversary.head(adversary.pooled), -1)).sum(-1).mean()
    plain_encoder, plain_head = gradients(plain)
    torch.testing.assert_close(head, plain_head)
    torch.testing.assert_close(reversed_encoder, -0.5 * plain_encoder)
    # In the training loss (with mixup) the speaker term is added to the emotion term and reaches the head.
    args = SimpleNamespace(label_smoothing=0.1, mixup_alpha=0.4)
    present = torch.zeros(8, dtype=torch.bool)
    present[[0, 5]] = True
    model.zero_grad()
    adversary.zero_grad()
    loss = train_loss(model, batch, present, torch.ones(8), args, torch.Generator().manual_seed(0), adversary)
    loss.backward()
    assert torch.isfinite(loss) and adversary.head.weight.grad.abs().sum() > 0


def test_patch_transformer_preset_reads_time_first_windows(tmp_path):
    """"ast-small": a stock ASTForAudioClassification on the same log-mel windows, transposed to (frames, bands)."""
    from transformers import ASTForAudioClassification

    torch.manual_seed(0)
    model = build_emotion_classifier("ast-small", num_hidden_layers=1).eval()
    extractor = build_emotion_feature_extractor(model)
    assert isinstance(model, ASTForAudioClassification) and model.config.id2label[5] == "happy"
    assert extractor.time_first and extractor.model_input_names == ["input_values"]
    assert (extractor.feature_size, extractor.window_frames) == (model.config.num_mel_bins, model.config.max_length)
    waves = [voice_like(0.7, seed=4), voice_like(4.0, seed=5)]
    values = extractor(waves, sampling_rate=SR, return_tensors="pt").input_values
    assert values.shape == (2, extractor.window_frames, extractor.feature_size)
    # The same numbers as the band-first window, transposed.
    np.testing.assert_allclose(values[0].numpy().T, extractor.fit_window(extractor.log_mel(waves[0])))
    probs = predict_emotion(model, extractor, waves)
    assert probs.shape == (2, 8) and torch.allclose(probs.sum(-1), torch.ones(2))
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    loaded = load_emotion_classifier(tmp_path)
    torch.testing.assert_close(predict_emotion(loaded, load_emotion_feature_extractor(tmp_path, loaded), waves), probs)
    with pytest.raises(ValueError, match="patch_size"):
        emotion_classifier_config("ast-small", window_frames=8)


def test_cnn_preset_reads_the_window_as_a_one_channel_image(tmp_path):
    """"cnn-small": a stock ResNetForImageClassification on the same log-mel windows as (B, 1, bands, frames)."""
    from transformers import ResNetForImageClassification

    torch.manual_seed(0)
    model = build_emotion_classifier("cnn-small", hidden_sizes=[8, 8, 16, 16], embedding_size=8).eval()
    extractor = build_emotion_feature_extractor(model)
    assert isinstance(model, ResNetForImageClassification) and model.config.id2label[6] == "sad"
    assert extractor.as_image and not extractor.time_first and extractor.model_input_names == ["pixel_values"]
    waves = [voice_like(0.7, seed=4), voice_like(4.0, seed=5)]
    pixels = extractor(waves, sampling_rate=SR, return_tensors="pt").pixel_values
    assert pixels.shape == (2, 1, extractor.feature_size, extractor.window_frames)
    np.testing.assert_allclose(pixels[0, 0].numpy(), extractor.fit_window(extractor.log_mel(waves[0])))
    probs = predict_emotion(model, extractor, waves)
    assert probs.shape == (2, 8) and torch.allclose(probs.sum(-1), torch.ones(2))
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    loaded = load_emotion_classifier(tmp_path)
    assert isinstance(loaded, ResNetForImageClassification)
    torch.testing.assert_close(predict_emotion(loaded, load_emotion_feature_extractor(tmp_path, loaded), waves), probs)
    # A CNN backbone with generic labels gets the emotion labels and a fresh head, as an audio backbone does.
    generic = ResNetForImageClassification(type(model.config)(num_channels=1, embedding_size=8,
                                                              hidden_sizes=[8, 8, 16, 16], num_labels=3))
    generic.save_pretrained(tmp_path / "generic")
    relabelled = load_emotion_classifier(tmp_path / "generic")
    assert isinstance(relabelled, ResNetForImageClassification) and relabelled.config.id2label[6] == "sad"
    with pytest.raises(ValueError, match="32 bands"):
        emotion_classifier_config("cnn-small", num_mel_bins=16)
    with pytest.raises(ValueError, match="different layouts"):
        EmotionFeatureExtractor(time_first=True, as_image=True)


def test_trainer_model_kwargs_configure_the_preset(tmp_path):
    """--model_kwargs overrides the preset's config (here two blocks per CNN stage); not JSON, not an object, or
    given with --pretrained_model: a parser error (as a distillation weight outside [0, 1] or a temperature <= 0)."""
    from talking_head.trainers.emotion import build_model, parse_args

    args = parse_args(["--data_dir", str(tmp_path), "--model_kwargs", '{"depths": [2, 2, 2, 2]}'])
    model, extractor = build_model(args)
    assert args.preset == "cnn-small" and list(model.config.depths) == [2, 2, 2, 2]
    assert extractor.as_image
    for flags in (["--model_kwargs", "{depths"], ["--model_kwargs", "[2]"],
                  ["--model_kwargs", '{"depths": [2, 2, 2, 2]}', "--pretrained_model", str(tmp_path)],
                  ["--distill_weight", "1.5"], ["--distill_temperature", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--data_dir", str(tmp_path), *flags])


def test_trainer_feature_kwargs_configure_the_front_end_and_travel_with_the_model(tmp_path):
    """--feature_kwargs sets the log-mel front end (here a 300 Hz lower edge, as telephone speech has); it is
    saved beside the model, so loading reads speech the same way. A misspelt setting, one the model's config
    owns (its band count), or overrides for a waveform model: a clear error, never a silent default."""
    from talking_head.trainers.emotion import build_model, parse_args

    args = parse_args(["--data_dir", str(tmp_path), "--feature_kwargs", '{"min_frequency": 300}'])
    model, extractor = build_model(args)
    assert extractor.min_frequency == 300.0 and extractor.as_image
    default = build_emotion_feature_extractor(model)
    wave = voice_like(seconds=1.0)
    assert not np.allclose(extractor.windows(wave), default.windows(wave))
    extractor.save_pretrained(tmp_path / "clf")
    assert load_emotion_feature_extractor(tmp_path / "clf", model).min_frequency == 300.0
    with pytest.raises(ValueError, match="unknown feature extractor settings"):
        build_emotion_feature_extractor(model, min_freq=300)
    with pytest.raises(ValueError, match="set by the model's config"):
        build_emotion_feature_extractor(model, feature_size=32)
    with pytest.raises(ValueError, match="reads the waveform"):
        build_emotion_feature_extractor(build_emotion_classifier("conformer-tiny"), min_frequency=300)
    for flags in (["--feature_kwargs", "300"],
                  ["--feature_kwargs", '{"min_frequency": 300}', "--pretrained_model", str(tmp_path)]):
        with pytest.raises(SystemExit):
            parse_args(["--data_dir", str(tmp_path), *flags])


def test_distillation_pulls_the_student_toward_its_teachers_average(tmp_path):
    """--distill_from: the teachers' mean prediction on the same (augmented, mixed) batch is a soft target. A
    student identical to its only teacher has nothing to learn from it (the term is 0); other teachers give a
    positive term whose gradient reaches the student only; a teacher with other features is refused."""
    from talking_head.trainers.emotion import collate_emotion, distillation_loss, load_teachers, model_inputs, train_loss

    torch.manual_seed(0)
    small = dict(hidden_sizes=[8, 8, 16, 16], embedding_size=8)
    student = build_emotion_classifier("cnn-small", **small)
    extractor = build_emotion_feature_extractor(student)
    for name, seed in (("same", None), ("other", 1)):
        if seed is not None:
            torch.manual_seed(seed)
        (student if seed is None else build_emotion_classifier("cnn-small", **small)).save_pretrained(tmp_path / name)
        extractor.save_pretrained(tmp_path / name)
    items = [{"label": torch.tensor(c), "audio": torch.from_numpy(voice_like(0.4, seed=i)), "clip_id": str(i),
              "speaker": "a", "index": i} for i, c in enumerate([0, 5, 6])]
    inputs = model_inputs(collate_emotion(items, extractor))
    student.eval()
    same = load_teachers(str(tmp_path / "same"), extractor, "cpu")
    assert distillation_loss(student(**inputs).logits, inputs, same, 2.0).abs() < 1e-5
    teachers = load_teachers(f"{tmp_path / 'same'}, {tmp_path / 'other'}", extractor, "cpu")
    assert len(teachers) == 2 and not any(p.requires_grad for t in teachers for p in t.parameters())
    args = SimpleNamespace(label_smoothing=0.1, mixup_alpha=0.4, distill_weight=1.0, distill_temperature=2.0)
    present = torch.zeros(8, dtype=torch.bool)
    present[[0, 5, 6]] = True
    loss = train_loss(student, collate_emotion(items, extractor), present, torch.ones(8), args,
                      torch.Generator().manual_seed(0), teachers=teachers)
    loss.backward()
    assert loss > 0 and student.classifier[-1].weight.grad.abs().sum() > 0
    other = EmotionFeatureExtractor(feature_size=32, as_image=True)
    with pytest.raises(ValueError, match="feature extractor differs"):
        load_teachers(str(tmp_path / "same"), other, "cpu")
