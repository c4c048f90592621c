"""Bad audio into the landmark model (issue 12): silence only, a pure tone, audio clipped at full scale,
white noise, a 1 kHz tone at full scale, and speech after 10 s of silence. The model must return finite
landmarks inside the face crop for every one: a tiny untrained model (any weights), and the bundled
pipeline's trained one when the checkout has it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_face_landmarks, voice_like

from talking_head.models.kfusion_landmarks import KFusionLandmarkModel

SR, FPS = 16000, 25.0
BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "pipeline" / "landmark_model"


def _tone(freq, seconds, amp):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _bad_inputs():
    rng = np.random.default_rng(0)
    speech = voice_like(3.0)
    return {
        "silence": np.zeros(3 * SR, np.float32),
        "pure_tone_220hz": _tone(220.0, 3.0, 0.5),
        "clipped_full_scale": np.clip(speech * 30.0, -1.0, 1.0).astype(np.float32),
        "white_noise": rng.uniform(-1.0, 1.0, 3 * SR).astype(np.float32),
        "tone_1khz_full_scale": _tone(1000.0, 3.0, 1.0),
        "speech_after_10s_silence": np.concatenate([np.zeros(10 * SR, np.float32), voice_like(2.0, seed=3)]),
    }


BAD = _bad_inputs()


def _tiny():
    torch.manual_seed(0)
    return KFusionLandmarkModel(n_mels=16, global_window_length=128, global_channels=16, context_channels=16,
                                identity_dim=8, emotion_dim=8, num_temporal_blocks=1, kan_hidden_dims=(8,),
                                kan_grid=3, mel_deltas=True, loudness_floor=0.02).eval()


def _models():
    models = [pytest.param("tiny", id="tiny-untrained")]
    models.append(pytest.param("bundled", id="bundled-trained", marks=pytest.mark.skipif(
        not (BUNDLED / "config.json").is_file(), reason="no bundled landmark model in this checkout")))
    return models


_CACHE = {}


def _model(kind):
    if kind not in _CACHE:
        _CACHE[kind] = _tiny() if kind == "tiny" else KFusionLandmarkModel.from_pretrained(BUNDLED).eval()
    return _CACHE[kind]


@pytest.mark.parametrize("kind", _models())
@pytest.mark.parametrize("name", list(BAD))
def test_bad_audio_gives_finite_landmarks_inside_the_crop(kind, name):
    model = _model(kind)
    wave = torch.from_numpy(BAD[name])[None]
    frames = int(round(len(BAD[name]) / SR * FPS))
    ident = torch.from_numpy(synthetic_face_landmarks(1)).float()[None]
    with torch.no_grad():
        out = model(wave, ident, num_frames=frames, fps=FPS)
    lm = out.landmarks
    assert lm.shape == (1, frames, 68, 2) and lm.dtype == torch.float32
    assert torch.isfinite(lm).all(), name
    assert lm.min() >= 0.0 and lm.max() <= 1.0, (name, float(lm.min()), float(lm.max()))
    # Not blown up either: no point moves more than a fifth of the crop from the identity.
    assert out.displacements.abs().max() < 0.2, (name, float(out.displacements.abs().max()))


@pytest.mark.parametrize("kind", _models())
def test_leading_silence_does_not_change_what_the_speech_gets(kind):
    """The speech after 10 s of silence drives the same landmarks as the speech alone (give or take the
    loudness normalisation, which sees the silence too) : the silence neither poisons nor delays it."""
    model = _model(kind)
    speech = voice_like(2.0, seed=3)
    ident = torch.from_numpy(synthetic_face_landmarks(1)).float()[None]
    with torch.no_grad():
        alone = model(torch.from_numpy(speech)[None], ident, num_frames=50, fps=FPS).landmarks[0]
        late = model(torch.from_numpy(BAD["speech_after_10s_silence"])[None], ident, num_frames=300,
                     fps=FPS).landmarks[0, 250:]
    assert torch.isfinite(late).all()
    # Frames well inside the speech (away from the onset, where the silence is in the context window).
    assert (late[10:] - alone[10:]).abs().max() < 0.05
