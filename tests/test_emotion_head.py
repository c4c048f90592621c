"""The emotion classifier as a head on the shared Whisper `audio_encoder` (issue 38): shapes, bad audio, save/load,
the drawing rule (drawn only as strongly as it is sure), the pipeline carrying it, the calm-speech check and the
trainer. A tiny random Whisper config stands in for the real encoder (1 s windows, so long audio runs in windows)."""

import json
import math
import time

import numpy as np
import pytest
import torch
from transformers import WhisperConfig

from talking_head.constants import EMOTIONS, NULL_EMOTION
from talking_head.models.emotion_head import (DRAWN_STRENGTH, WhisperEmotionHead, WhisperEmotionHeadConfig,
                                              active_frames, draw_strength, pool_states)
from talking_head.models.whisper_encoder import WhisperSpeechEncoder
from tests.conftest import synthetic_face_landmarks, voice_like

SR = 16000
D = 16  # the tiny encoder's d_model


def tiny_encoder():
    cfg = WhisperConfig(d_model=D, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80,
                        max_source_positions=100, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                        vocab_size=64)
    cfg.output_layers, cfg.window_seconds, cfg.window_overlap_seconds = [1, 2], 1.0, 0.2
    torch.manual_seed(0)
    return WhisperSpeechEncoder(cfg)


def tiny_head(**kw):
    torch.manual_seed(1)
    return WhisperEmotionHead(WhisperEmotionHeadConfig(**{"encoder_layer": 2, "d_model": D, **kw})).eval()


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


def bad_audio():
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    chords = sum(np.sin(2 * np.pi * f * t) for f in (220, 277, 330, 440)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return {
        "silence": np.zeros(SR, np.float32),
        "0.1 s": voice_like(0.1),
        "one sample": np.full(1, 0.1, np.float32),
        "pure tone": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "music-like": (0.2 * chords + 0.05 * rng.standard_normal(len(t))).astype(np.float32),
        "clipped noise": np.clip(rng.standard_normal(SR), -1, 1).astype(np.float32),
    }


# ------------------------------------------------------------------------------------------------ the model
def test_config_labels_and_forward_shapes():
    head = tiny_head()
    assert [head.config.id2label[i] for i in range(8)] == list(EMOTIONS)
    assert head.config.feature_size == 2 * D
    states = torch.randn(3, 40, D)
    logits = head(states)
    assert logits.shape == (3, 8) and torch.isfinite(logits).all()
    mask = torch.zeros(3, 40)
    mask[:, :10] = 1
    assert torch.allclose(head(states, mask), head(states[:, :10]), atol=1e-5)  # only the active states count
    assert torch.allclose(head(states, torch.zeros(3, 40)), head(states), atol=1e-5)  # none active: all of them
    mlp = tiny_head(hidden_size=8, pooling="mean")
    assert mlp(states).shape == (3, 8) and mlp.config.feature_size == D
    with pytest.raises(ValueError, match="states must be"):
        head(torch.randn(3, 40, D + 1))
    with pytest.raises(ValueError, match="attention_mask"):
        head(states, torch.ones(3, 39))
    for bad in (dict(pooling="max"), dict(calibration_temperature=0.0), dict(draw_threshold=1.0),
                dict(encoder_layer=-1), dict(logit_offsets=[0.0] * 7)):
        with pytest.raises(ValueError):
            WhisperEmotionHeadConfig(**bad)


def test_temperature_and_offsets_act_on_the_logits():
    head = tiny_head()
    states = torch.randn(2, 30, D)
    raw = head(states)
    head.config.calibration_temperature = 2.0
    assert torch.allclose(head(states), raw / 2, atol=1e-6)
    head.config.logit_offsets = [1.0] + [0.0] * 7  # a prior, on the calibrated logits
    assert torch.allclose(head(states)[:, 0], raw[:, 0] / 2 + 1, atol=1e-6)


def test_pooling_and_active_frames():
    states = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)
    pooled = pool_states(states, torch.tensor([[1, 1, 0, 0, 0, 0]]))
    assert torch.allclose(pooled, torch.tensor([[1.0, 2.0, 1.0, 1.0]]))
    wave = torch.zeros(SR)
    wave[SR // 2:] = torch.from_numpy(voice_like(0.5))
    active = active_frames(wave, 50, 40.0)
    assert active.shape == (50,) and not active[:20].any() and active[30:].all()
    assert active_frames(torch.zeros(SR), 50, 40.0).all()  # silence: nothing is louder than the rest
    assert active_frames(wave, 50, 0.0).all()


@pytest.mark.parametrize("kind", list(bad_audio()))
def test_bad_audio_gives_a_finite_probability_vector(encoder, kind):
    probs = tiny_head().classify(encoder, [bad_audio()[kind]])
    assert probs.shape == (1, 8) and torch.isfinite(probs).all()
    assert abs(float(probs.sum()) - 1) < 1e-5 and (probs >= 0).all()


def test_ten_minutes_cost_a_bounded_number_of_pieces(encoder, monkeypatch):
    head = tiny_head(piece_seconds=2.0, max_pieces=3)
    seen = []
    original = encoder.encode

    def counting(wave, layers=None):
        seen.append(wave.shape[1])
        return original(wave, layers=layers)

    monkeypatch.setattr(encoder, "encode", counting)
    started = time.perf_counter()
    probs = head.classify(encoder, [voice_like(600.0)])
    assert time.perf_counter() - started < 30
    assert torch.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-5
    assert seen == [2 * SR] * 3  # three evenly spaced 2 s pieces of the 10 minutes, no more


def test_batch_items_are_independent_and_bad_waveforms_raise(encoder):
    head = tiny_head()
    a, b = voice_like(1.3, seed=1), voice_like(0.7, seed=2)
    both = head.classify(encoder, [a, b])
    assert torch.allclose(both[0], head.classify(encoder, [a])[0], atol=1e-6)
    for bad, match in ((np.full(100, np.nan, np.float32), "NaN"), (np.zeros(0, np.float32), "empty"),
                       (np.zeros((2, 100), np.float32), "1-D"), (np.zeros(100, np.int16), "float")):
        with pytest.raises(ValueError, match=match):
            head.classify(encoder, [bad])
    with pytest.raises(ValueError, match="list"):
        head.classify(encoder, a)
    with pytest.raises(ValueError, match="audio_encoder"):
        head.classify(None, [a])
    with pytest.raises(ValueError, match="does not give the states"):
        tiny_head(encoder_layer=3).classify(encoder, [a])


def test_save_load_round_trip(tmp_path, encoder):
    head = tiny_head(hidden_size=8, calibration_temperature=1.7, draw_threshold=0.55, logit_offsets=[0.5] + [0.0] * 7)
    head.feature_mean.normal_()
    head.feature_std.uniform_(0.5, 2.0)
    head.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = WhisperEmotionHead.from_pretrained(tmp_path).eval()
    assert loaded.config.calibration_temperature == 1.7 and loaded.config.draw_threshold == 0.55
    assert loaded.config.encoder_layer == 2 and loaded.config.hidden_size == 8
    assert torch.equal(loaded.feature_mean, head.feature_mean) and torch.equal(loaded.feature_std, head.feature_std)
    wave = voice_like(1.5)
    assert torch.allclose(loaded.classify(encoder, [wave]), head.classify(encoder, [wave]), atol=1e-6)
    from transformers import AutoModel

    assert isinstance(AutoModel.from_pretrained(tmp_path), WhisperEmotionHead)


# ------------------------------------------------------------------------------------------------ drawing rule
def test_drawn_only_as_strongly_as_it_is_sure():
    unsure = np.array([[0.05, 0.4, 0.0, 0.2, 0.15, 0.1, 0.05, 0.05]])
    neutral = np.array([[0.9, 0.05, 0, 0.05, 0, 0, 0, 0]])
    sure = np.array([[0.02, 0.0, 0.0, 0.0, 0.0, 0.95, 0.03, 0.0]])
    assert draw_strength(unsure, 0.5)[1][0] == 0.0
    assert draw_strength(neutral, 0.5)[1][0] == 0.0
    index, strength = draw_strength(sure, 0.5)
    assert EMOTIONS[index[0]] == "happy" and strength[0] > DRAWN_STRENGTH and math.isclose(strength[0], 0.9, rel_tol=1e-5)
    assert draw_strength(np.array([[0.0, 0.0, 0, 0, 0, 1.0, 0, 0]]), 0.5)[1][0] == 1.0
    with pytest.raises(ValueError):
        draw_strength(sure, 1.0)


# ------------------------------------------------------------------------------------------------ pipeline
def pipeline_with_head(head, encoder):
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
    from talking_head.presets import build_pipeline

    base = build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=False)
    pipe = TalkingHeadPipeline(unet=base.unet, scheduler=base.scheduler, landmark_model=base.landmark_model,
                               mask_noise=base.mask_noise, emotion_classifier=head, audio_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kw):
    rng = np.random.default_rng(3)
    image = (rng.random((80, 80, 3)) * 200).astype(np.uint8)
    return pipe(voice_like(0.4), image, sample_rate=SR, identity_landmarks=synthetic_face_landmarks(80),
                t_start=300, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type=None, **kw)


def sure_of(head, emotion: str, margin: float = 20.0):
    """The head made sure of `emotion` whatever it hears (a large bias)."""
    with torch.no_grad():
        head.classifier.bias.zero_()
        head.classifier.bias[EMOTIONS.index(emotion)] = margin
    return head


def test_pipeline_with_the_head_saves_loads_and_draws_only_when_sure(tmp_path, encoder):
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    pipe = pipeline_with_head(sure_of(tiny_head(), "happy"), encoder)
    assert pipe.feature_extractor is None  # the head reads the audio encoder, no feature extractor
    out = generate(pipe)
    assert out.emotion == ["happy"] and out.emotion_strength[0] > 0.99 and out.emotion_probs.shape == (1, 8)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["emotion_classifier"] == ["talking_head.models.emotion_head", "WhisperEmotionHead"]
    loaded = TalkingHeadPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.emotion_classifier, WhisperEmotionHead) and loaded.audio_encoder is not None
    wave = voice_like(1.0)
    np.testing.assert_allclose(loaded.classify_emotion([wave]), pipe.classify_emotion([wave]), atol=1e-6)
    assert generate(loaded).emotion == ["happy"]

    # Unsure (a flat head): neutral, strength 0; sure of neutral: neutral, strength 0.
    with torch.no_grad():
        pipe.emotion_classifier.classifier.weight.zero_()
        pipe.emotion_classifier.classifier.bias.zero_()
    out = generate(pipe)
    assert out.emotion == ["neutral"] and out.emotion_strength == [0.0]
    sure_of(pipe.emotion_classifier, "neutral")
    assert generate(pipe).emotion_strength == [0.0]
    # The caller's emotion and scale still win; what the classifier heard is still reported.
    out = generate(pipe, emotion="angry", emotion_scale=0.5)
    assert out.emotion == ["angry"] and out.emotion_strength == [0.5] and out.emotion_probs is not None
    from talking_head.cli_common import emotion_line

    assert emotion_line(out, given=True) == "heard neutral (1.00); drawn: angry (given, strength 0.50)"


def test_pipeline_refuses_a_head_without_its_encoder_and_bad_emotions(encoder):
    with pytest.raises(ValueError, match="no audio_encoder"):
        pipeline_with_head(tiny_head(), None)
    with pytest.raises(ValueError, match="does not give the states"):
        pipeline_with_head(tiny_head(encoder_layer=4), encoder)
    pipe = pipeline_with_head(tiny_head(), encoder)
    with pytest.raises(ValueError, match="unknown emotion 'furious'"):
        generate(pipe, emotion="furious")
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="emotion_scale must be a finite number >= 0"):
            generate(pipe, emotion_scale=bad)


# ------------------------------------------------------------------------------------------------ calm speech
def test_calm_speech_summary_counts_what_is_drawn():
    from talking_head.evaluation.calm_speech import parse_data_spec, report_lines, summarise

    def probs(k, p):
        row = np.full(8, (1 - p) / 7)
        row[k] = p
        return row

    items = [{"data": "grid", "clip_id": "a", "label": NULL_EMOTION, "probs": probs(0, 0.9)},  # neutral
             {"data": "grid", "clip_id": "b", "label": NULL_EMOTION, "probs": probs(4, 0.55)},  # fear, unsure
             {"data": "grid", "clip_id": "c", "label": NULL_EMOTION, "probs": probs(4, 0.95)},  # fear, sure
             {"data": "cremad:test", "clip_id": "d", "label": 0, "probs": probs(3, 0.6)},  # NEU, mild disgust
             {"data": "cremad:test", "clip_id": "e", "label": 5, "probs": probs(5, 0.9)},  # happy, drawn
             {"data": "cremad:test", "clip_id": "f", "label": 6, "probs": probs(6, 0.6)}]  # sad, too unsure
    c = summarise(items, threshold=0.5)
    assert c["clips"] == 4 and c["neutral_share"] == 0.75
    assert c["sets"]["grid"]["share"] == pytest.approx(2 / 3) and c["sets"]["cremad:test"]["share"] == 1.0
    assert c["emotional"]["clips"] == 2 and c["emotional"]["right_drawn_share"] == 0.5
    assert c["emotional"]["right_heard_share"] == 1.0
    assert [it["drawn"] for it in c["items"]] == ["neutral", "neutral", "fear", "neutral", "happy", "neutral"]
    assert any("75.0 %" in line for line in report_lines(c))
    assert parse_data_spec("out/data/cremad:test") == ("out/data/cremad", "test")
    assert parse_data_spec("out/data/grid") == ("out/data/grid", None)


# ------------------------------------------------------------------------------------------------ trainer
def test_trainer_cross_validates_calibrates_and_saves(tmp_path, encoder):
    from talking_head.data.synthetic import make_synthetic_emotion_audio
    from talking_head.trainers.emotion_head import main

    data = make_synthetic_emotion_audio(tmp_path / "data", num_speakers=4, utterances_per_emotion=1, seconds=0.6,
                                        emotions=("neutral", "angry", "happy", "sad"))
    encoder.save_pretrained(tmp_path / "encoder")
    out = tmp_path / "run"
    assert main(["--encoder", str(tmp_path / "encoder"), "--train_data", f"{data}:train", "--output_dir", str(out),
                 "--cache_dir", str(tmp_path / "cache"), "--layer", "2", "--epochs", "3", "--folds", "2",
                 "--augment_copies", "1", "--report_data", f"{data}:test"]) == 0
    head = WhisperEmotionHead.from_pretrained(out / "emotion_classifier")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["temperature"] > 0 and head.config.calibration_temperature == pytest.approx(summary["temperature"])
    assert 1 <= summary["best_epoch"] <= 3 and head.config.encoder_layer == 2
    assert summary["train_clips"] == 2 * 3 * 4  # three training speakers' clips and one augmented copy of each
    assert f"{data}:test" in summary["report"]
    probs = head.classify(encoder, [voice_like(0.8)])
    assert abs(float(probs.sum()) - 1) < 1e-5
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # the clips and their augmented copy, once


def test_evaluate_runs_the_calm_speech_check(tmp_path, encoder):
    """`talking-head evaluate --calm-speech`: the head's calm / emotional shares in metrics.json and report.md, and
    the head scored on labelled speech with its audio encoder (no feature extractor)."""
    from talking_head.data.synthetic import make_synthetic_dataset, make_synthetic_emotion_audio
    from talking_head.evaluation.runner import EvalConfig, evaluate
    from talking_head.utils import save_pipeline_atomic

    data = make_synthetic_dataset(tmp_path / "data", emotions=("neutral",), clips_per_emotion=0,
                                  test_clips_per_emotion=1, seconds=0.32, size=64)
    emo = make_synthetic_emotion_audio(tmp_path / "emo", num_speakers=2, utterances_per_emotion=1, seconds=0.5,
                                       emotions=("neutral", "angry", "happy"), test_speakers=1)
    save_pipeline_atomic(pipeline_with_head(sure_of(tiny_head(), "happy"), encoder), tmp_path / "pipe")
    m = evaluate(EvalConfig(data=str(data), pipeline=str(tmp_path / "pipe"), output=str(tmp_path / "report"),
                            methods=("static",), landmarks=False, samples=0, quiet=True, emotion_data=str(emo),
                            emotion_cross_corpus=f"{emo}:train", calm_speech=(f"{emo}:test", f"{emo}:train")))
    c = m["calm_speech"]
    # The head is sure of happy: no calm (neutral) clip is rendered neutral; every happy clip is drawn right.
    assert c["clips"] == 2 and c["neutral_share"] == 0.0 and c["threshold"] == 0.5
    assert c["emotional"]["clips"] == 4 and c["emotional"]["right_drawn_share"] == 0.5
    assert set(c["sets"]) == {"emo:test", "emo:train"}
    assert m["emotion_classifier"]["n"] == 3 and m["emotion_classifier"]["cross_corpus"]["split"] == "train"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Calm speech" in text and "Calm clips rendered neutral or nearly so: 0.0 %" in text
    assert "`train` split" in text
