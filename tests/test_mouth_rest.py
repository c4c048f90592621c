"""Silence closes the mouth (talking_head.mouth_rest): rest weights from the audio level, and the pipeline's
predicted mouth returning to the identity's own on silence."""

import numpy as np
import pytest
import torch
from conftest import voice_like

from talking_head.mouth_rest import REST_POINTS, peak_level_db, rest_mouth, rest_weights
from talking_head.presets import build_pipeline

SR, FPS = 16000, 25


def test_weights_are_one_on_silence_zero_on_speech_and_ramp_between():
    speech = voice_like(1.0, seed=1) + 0.05 * np.sin(2 * np.pi * 150 * np.arange(SR) / SR).astype(np.float32)
    wave = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(SR, np.float32)])
    w = rest_weights(wave, SR, FPS, 75)
    assert w.shape == (75,) and w.dtype == np.float32 and (0 <= w).all() and (w <= 1).all()
    assert (w[:18] == 1).all() and (w[57:] == 1).all()  # the silences, away from the speech (6-frame ramps)
    assert w[30:45].max() < 0.05  # inside the speech
    assert 0 < w[24] < 1 or 0 < w[26] < 1  # a ramp, not a jump
    # Room noise well under the speech is silence too; the same noise alone is judged against the recording.
    noisy = wave + np.random.default_rng(0).normal(0, 10 ** (-65 / 20), wave.shape).astype(np.float32)
    assert (rest_weights(noisy, SR, FPS, 75)[:18] == 1).all()
    peak = peak_level_db(noisy, SR, FPS, block_frames=7)
    assert peak == pytest.approx(float(rest_weights.__globals__["frame_levels_db"](noisy, SR, FPS, 75).max()))
    alone = noisy[:SR]
    assert (rest_weights(alone, SR, FPS, 25, peak_db=peak) == 1).all()


def test_rest_moves_only_the_mouth_and_jaw_towards_the_identity():
    rng = np.random.default_rng(2)
    identity = torch.from_numpy(rng.random((1, 68, 2))).float()
    pred = identity[:, None].repeat(1, 4, 1, 1) + 0.1
    weights = torch.tensor([[0.0, 0.5, 1.0, 1.0]])
    out = rest_mouth(pred, identity, weights)
    idx = list(REST_POINTS)
    others = [i for i in range(68) if i not in idx]
    torch.testing.assert_close(out[:, :, others], pred[:, :, others])
    torch.testing.assert_close(out[0, 0, idx], pred[0, 0, idx])
    torch.testing.assert_close(out[0, 1, idx], identity[0, idx] + 0.05)
    torch.testing.assert_close(out[0, 2, idx], identity[0, idx])


def test_pipeline_rests_the_mouth_on_silence_and_can_be_told_not_to():
    pipe = build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=False)
    pipe.landmark_model.eval()
    identity = torch.from_numpy(np.random.default_rng(3).uniform(0.3, 0.7, (1, 68, 2))).float()
    wave = torch.from_numpy(np.concatenate([np.zeros(SR, np.float32), voice_like(1.0, seed=4)]))[None]
    labels = torch.tensor([8])
    rested = pipe.predict_landmarks(wave, identity, 50, FPS, labels)
    assert pipe.config.rest_mouth_on_silence is True
    idx = list(REST_POINTS)
    torch.testing.assert_close(rested[0, :15, idx], identity[0, idx].expand(15, -1, -1))
    pipe.register_to_config(rest_mouth_on_silence=False)
    free = pipe.predict_landmarks(wave, identity, 50, FPS, labels)
    assert not torch.allclose(free[0, :15, idx], identity[0, idx].expand(15, -1, -1))
    others = [i for i in range(68) if i not in idx]
    torch.testing.assert_close(free[0, :, others], rested[0, :, others])  # the rest of the face unchanged


def test_a_detected_emotion_is_shown_only_as_strongly_as_the_classifier_is_sure():
    """Issue 38: strength = clip((p_max - t) / (1 - t), 0, 1), and 0 for a predicted neutral."""
    from talking_head.pipelines.pipeline_talking_head import detected_emotion_scale

    probs = np.array([[0.1, 0.6, 0.0, 0.1, 0.1, 0.05, 0.05, 0.0], [0.9, 0.1, 0, 0, 0, 0, 0, 0],
                      [0.05, 0.9, 0, 0.05, 0, 0, 0, 0], [0.2, 0.4, 0, 0.2, 0.2, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(detected_emotion_scale(1.5, probs, 4), [0.3, 0.0, 1.2, 0.0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(detected_emotion_scale(1.5, None, 2), [1.5, 1.5])  # an emotion the caller gave
