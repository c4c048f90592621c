"""Bad audio into the landmark model (issues 12, 36): silence only, a pure tone, audio clipped at full scale,
white noise, a 1 kHz tone at full scale, music, 8 kHz telephone speech, 0.1 s, and speech after 10 s of
silence. The model must return finite landmarks inside the face crop for every one: tiny untrained models (any
weights; log-mel and Whisper-state Context domains), and the bundled pipeline's trained one (with its Whisper
audio_encoder) when the checkout has it. 10 minutes of audio go through the pipeline's chunked landmark stage in
bounded time."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_face_landmarks, voice_like

from talking_head.models.kfusion_landmarks import KFusionLandmarkModel

SR, FPS = 16000, 25.0
BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "pipeline" / "landmark_model"
BUNDLED_ENCODER = BUNDLED.parent / "audio_encoder"


def _tone(freq, seconds, amp):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _music(seconds):
    """Chords of three tones changing every half second, with a kick drum on each beat."""
    t = np.arange(int(seconds * SR)) / SR
    roots = 220.0 * 2 ** (np.floor(t * 2) % 4 / 12 * 3)
    chord = sum(np.sin(2 * np.pi * roots * r * t) for r in (1.0, 1.26, 1.5)) / 3
    kick = np.exp(-((t * 2) % 1) * 30) * np.sin(2 * np.pi * 60 * t)
    return (0.4 * chord + 0.5 * kick).astype(np.float32)


def _telephone(speech):
    """Speech band-limited to 8 kHz sampling (300-3400 Hz) and back to 16 kHz, as CREMA-D's is."""
    from scipy.signal import butter, resample_poly, sosfilt

    narrow = resample_poly(speech, 1, 2)
    narrow = sosfilt(butter(4, [300, 3400], btype="band", fs=8000, output="sos"), narrow)
    return resample_poly(narrow, 2, 1).astype(np.float32)


def _bad_inputs():
    rng = np.random.default_rng(0)
    speech = voice_like(3.0)
    return {
        "music": _music(3.0),
        "telephone_8khz": _telephone(speech),
        "tenth_of_a_second": voice_like(0.1, seed=4),
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
    models = [pytest.param("tiny", id="tiny-untrained"), pytest.param("tiny_whisper", id="tiny-whisper-untrained")]
    models.append(pytest.param("bundled", id="bundled-trained", marks=pytest.mark.skipif(
        not (BUNDLED / "config.json").is_file(), reason="no bundled landmark model in this checkout")))
    return models


_CACHE = {}


def _tiny_whisper():
    """(a tiny random Whisper encoder, a tiny landmark model reading its layers 1 and 2)."""
    from test_whisper_encoder import states_model, tiny_encoder

    return tiny_encoder(window_seconds=2.0), states_model()


def _model(kind):
    """(landmark model, its audio encoder or None)."""
    if kind not in _CACHE:
        if kind == "tiny":
            _CACHE[kind] = _tiny(), None
        elif kind == "tiny_whisper":
            encoder, model = _tiny_whisper()
            _CACHE[kind] = model, encoder
        else:
            from talking_head.models.whisper_encoder import WhisperSpeechEncoder

            model = KFusionLandmarkModel.from_pretrained(BUNDLED).eval()
            encoder = WhisperSpeechEncoder.from_pretrained(BUNDLED_ENCODER) if model.reads_encoder_states else None
            _CACHE[kind] = model, encoder
    return _CACHE[kind]


def _run(kind, wave, ident, frames):
    model, encoder = _model(kind)
    states = encoder.encode(wave, layers=model.config.encoder_layers) if encoder is not None else None
    return model(wave, ident, num_frames=frames, fps=FPS, context_states=states)


@pytest.mark.parametrize("kind", _models())
@pytest.mark.parametrize("name", list(BAD))
def test_bad_audio_gives_finite_landmarks_inside_the_crop(kind, name):
    wave = torch.from_numpy(BAD[name])[None]
    frames = max(1, int(round(len(BAD[name]) / SR * FPS)))
    ident = torch.from_numpy(synthetic_face_landmarks(1)).float()[None]
    with torch.no_grad():
        out = _run(kind, wave, ident, frames)
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
    speech = voice_like(2.0, seed=3)
    ident = torch.from_numpy(synthetic_face_landmarks(1)).float()[None]
    with torch.no_grad():
        alone = _run(kind, torch.from_numpy(speech)[None], ident, 50).landmarks[0]
        late = _run(kind, torch.from_numpy(BAD["speech_after_10s_silence"])[None], ident, 300).landmarks[0, 250:]
    assert torch.isfinite(late).all()
    # Frames well inside the speech (away from the onset, where the silence is in the context window).
    assert (late[10:] - alone[10:]).abs().max() < 0.05


def test_ten_minutes_of_audio_through_the_chunked_landmark_stage():
    """10 minutes of speech-like audio through the pipeline's landmark stage (Whisper encoder and landmark model
    chunk by chunk): finite landmarks inside the crop for every frame, in bounded time."""
    import time

    from talking_head.evaluation.landmark_stage import LandmarkStage

    encoder, model = _tiny_whisper()
    stage = LandmarkStage(model, audio_encoder=encoder)
    minutes = np.tile(voice_like(5.0, seed=5), 120)
    ident = torch.from_numpy(synthetic_face_landmarks(1)).float()[None]
    start = time.perf_counter()
    lm = stage.predict_landmarks(torch.from_numpy(minutes)[None], ident, 15000, FPS, torch.tensor([8]))
    assert time.perf_counter() - start < 120
    assert lm.shape == (1, 15000, 68, 2) and torch.isfinite(lm).all()
    assert lm.min() >= 0.0 and lm.max() <= 1.0
