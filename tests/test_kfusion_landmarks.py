"""KFusionLandmarkModel and landmark_loss: shapes for any length / fps, identity and emotion conditioning,
float32 pinning, save / load, the wav2vec2 context path, pykan side effects, and input errors."""

import copy
import math
import os
import random

import numpy as np
import pytest
import torch
from conftest import TINY_WAV2VEC2, synthetic_face_landmarks, voice_like

from talking_head.constants import MOUTH_SLICE, NUM_EMOTIONS
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel, KFusionLandmarkOutput, landmark_loss


SR = 16000
# Small enough that every test runs in well under a second on 2 CPU cores.
TINY = dict(
    n_mels=16,
    global_window_length=128,
    global_channels=16,
    context_channels=16,
    identity_dim=8,
    emotion_dim=8,
    num_temporal_blocks=1,
    kan_hidden_dims=(8,),
    kan_grid=3,
)


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return KFusionLandmarkModel(**{**TINY, **overrides}).eval()


def audio(seconds, batch=2):
    return torch.stack([torch.from_numpy(voice_like(seconds, seed=i)) for i in range(batch)])


def identity(batch=2):
    face = torch.from_numpy(synthetic_face_landmarks(1))  # normalised: a size-1 crop
    return face.expand(batch, -1, -1).clone() + 0.01 * torch.arange(batch)[:, None, None]


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.mark.parametrize(
    "num_frames, fps, seconds",
    [
        (1, 25.0, 0.3),  # one frame
        (16, 25.0, 0.05),  # audio much shorter than 16 / 25 s: zero-padded
        (12, 30.0, 3.0),  # audio much longer than 12 / 30 s: ignored past the end
        (16, 25.0, 16 / 25),  # exact
        (16, 30.0, 16 / 30),
        (7, 29.97, 0.3),  # non-integer samples per frame
        (1, 60.0, 0.001),  # 16 samples of audio, a frame shorter than an STFT window
    ],
)
def test_output_shapes_any_length_and_fps(model, num_frames, fps, seconds):
    with torch.no_grad():
        out = model(audio(seconds), identity(), num_frames, fps)
    assert isinstance(out, KFusionLandmarkOutput)
    for tensor in (out.landmarks, out.displacements):
        assert tensor.shape == (2, num_frames, 68, 2)
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()


def test_audio_past_the_end_is_ignored_and_short_audio_is_zero_padded(model):
    frames, fps = 10, 25.0
    needed = int(frames * SR / fps)
    wave = audio(1.0)[:, :needed]
    with torch.no_grad():
        exact = model(wave, identity(), frames, fps).landmarks
        longer = model(torch.cat([wave, torch.randn(2, 8000)], dim=1), identity(), frames, fps).landmarks
        short = model(wave[:, : needed // 2], identity(), frames, fps).landmarks
        zero_padded = torch.nn.functional.pad(wave[:, : needed // 2], (0, needed - needed // 2))
        padded = model(zero_padded, identity(), frames, fps)
    torch.testing.assert_close(longer, exact)
    torch.testing.assert_close(short, padded.landmarks)


def test_frame_rate_changes_frame_count_not_coverage(model):
    # The same second of audio at 25 and 30 fps: 25 vs 30 frames, both cover it all.
    wave = audio(1.0)
    with torch.no_grad():
        at_25 = model(wave, identity(), 25, 25.0).landmarks
        at_30 = model(wave, identity(), 30, 30.0).landmarks
    assert at_25.shape[1] == 25 and at_30.shape[1] == 30


def test_output_is_identity_plus_displacements(model):
    ids = identity()
    with torch.no_grad():
        out = model(audio(0.4), ids, 10, 25.0)
    assert torch.equal(out.landmarks, ids[:, None] + out.displacements)
    # Untrained, the face still lands on the person: displacements are small.
    assert out.displacements.abs().max() < 0.5


def test_zero_displacement_returns_identity():
    model = build()
    model.fusion_kan.act_fun[-1].mask.data.zero_()  # the KAN's output layer now contributes nothing
    ids = identity()
    with torch.no_grad():
        out = model(audio(0.4), ids, 10, 25.0)
    assert torch.equal(out.displacements, torch.zeros_like(out.displacements))
    assert torch.equal(out.landmarks, ids[:, None].expand(-1, 10, -1, -1))


def test_emotion_label_changes_output(model):
    wave, ids = audio(0.4), identity()
    with torch.no_grad():
        happy = model(wave, ids, 8, emotion_labels=torch.tensor([5, 5])).landmarks
        sad = model(wave, ids, 8, emotion_labels=torch.tensor([6, 6])).landmarks
        unknown = model(wave, ids, 8, emotion_labels=torch.tensor([NUM_EMOTIONS, NUM_EMOTIONS])).landmarks
        none = model(wave, ids, 8).landmarks
    assert not torch.allclose(happy, sad)
    assert torch.equal(unknown, none)  # None is the null row


def test_deterministic_and_does_not_disturb_global_rngs(model):
    wave, ids = audio(0.4), identity()
    with torch.no_grad():
        assert torch.equal(model(wave, ids, 8).landmarks, model(wave, ids, 8).landmarks)
    # Same torch seed, same model (pykan's own seeding follows torch's generator). Only up to ~1e-8:
    # pykan fits its initial spline coefficients with torch.linalg.lstsq, which is not bit-reproducible.
    a, b = build(seed=3), build(seed=3)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    assert not torch.equal(a.fusion_kan.act_fun[0].coef, build(seed=4).fusion_kan.act_fun[0].coef)
    # pykan's constructor reseeds numpy / random / torch; the model must put them back.
    np.random.seed(123)
    random.seed(123)
    build()
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())


def test_save_load_round_trip(model, tmp_path):
    wave, ids, labels = audio(0.4), identity(), torch.tensor([1, 7])
    with torch.no_grad():
        before = model(wave, ids, 9, 30.0, emotion_labels=labels).landmarks
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = KFusionLandmarkModel.from_pretrained(tmp_path)  # default args: low_cpu_mem_usage is forced off
    assert not loaded.training
    def public(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert "fusion_kan.act_fun.0.coef" in state and "fusion_kan.act_fun.0.grid" in state
    assert state.keys() == reloaded.keys()
    assert all(torch.equal(state[k], reloaded[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(loaded(wave, ids, 9, 30.0, emotion_labels=labels).landmarks, before)


def test_stays_float32_under_half_casts(model, tmp_path):
    m = copy.deepcopy(model)
    for cast in (lambda x: x.to(torch.float16), lambda x: x.half(), lambda x: x.to("cpu", torch.bfloat16)):
        assert cast(m) is m
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert all(b.dtype == torch.float32 for b in m.buffers())
    assert m.fusion_kan.device == torch.device("cpu")
    with torch.no_grad():
        out = m(audio(0.4).half(), identity().half(), 8).landmarks
        reference = model(audio(0.4).half().float(), identity().half().float(), 8).landmarks
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference)
    with torch.no_grad():
        full = m(audio(0.4), identity(), 8).landmarks
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as under a mixed-precision trainer
            torch.testing.assert_close(m(audio(0.4), identity(), 8).landmarks, full)
    model.save_pretrained(tmp_path)
    loaded = KFusionLandmarkModel.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_deepcopy_after_a_training_forward():
    # pykan caches its input with the autograd graph, which made copy.deepcopy (EMA copies) fail.
    model = build().train()
    model(audio(0.2), identity(), 5).landmarks.sum().backward()
    copy.deepcopy(model)


def test_wav2vec2_context_shapes_and_round_trip(tmp_path):
    model = build(context_encoder="wav2vec2", wav2vec2_config=TINY_WAV2VEC2)
    assert any(k.startswith("context_frontend.wav2vec2.") for k in model.state_dict())
    # Frozen by default: no gradients, and it stays in eval mode when the model trains.
    assert not any(p.requires_grad for p in model.context_frontend.wav2vec2.parameters())
    model.train()
    assert not model.context_frontend.wav2vec2.training
    model.eval()
    wave, ids = audio(0.5), identity()
    with torch.no_grad():
        for frames, fps, seconds in [(12, 25.0, 0.5), (15, 30.0, 0.1), (1, 60.0, 0.001)]:
            out = model(audio(seconds), ids, frames, fps)
            assert out.landmarks.shape == (2, frames, 68, 2)
            assert torch.isfinite(out.landmarks).all()
        before = model(wave, ids, 12).landmarks
    model.save_pretrained(tmp_path)
    loaded = KFusionLandmarkModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(wave, ids, 12).landmarks, before)


def test_wav2vec2_from_local_pretrained_directory(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(1)
    pretrained = Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2))
    pretrained.save_pretrained(tmp_path / "w2v")
    model = KFusionLandmarkModel.from_wav2vec2_pretrained(tmp_path / "w2v", **TINY).eval()
    assert model.config.context_encoder == "wav2vec2"
    assert model.config.wav2vec2_config["hidden_size"] == 16
    ours = model.context_frontend.wav2vec2.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in pretrained.state_dict().items())
    with torch.no_grad():
        assert model(audio(0.3), identity(), 6).landmarks.shape == (2, 6, 68, 2)
    with pytest.raises(ValueError, match="not a directory"):
        KFusionLandmarkModel.from_wav2vec2_pretrained(tmp_path / "missing")


def test_config_errors():
    with pytest.raises(ValueError, match="context_encoder"):
        KFusionLandmarkModel(context_encoder="mfcc")
    with pytest.raises(ValueError, match="wav2vec2_config"):
        KFusionLandmarkModel(context_encoder="wav2vec2")
    with pytest.raises(ValueError, match="unknown Wav2Vec2Config keys"):
        KFusionLandmarkModel(context_encoder="wav2vec2", wav2vec2_config={**TINY_WAV2VEC2, "hiden_size": 8})


def test_new_config_errors():
    with pytest.raises(ValueError, match="loudness_floor"):
        KFusionLandmarkModel(**TINY, loudness_floor=0.0)
    with pytest.raises(ValueError, match="loudness_reference"):
        KFusionLandmarkModel(**TINY, loudness_reference="peak")
    with pytest.raises(ValueError, match="mel_deltas"):
        KFusionLandmarkModel(context_encoder="wav2vec2", wav2vec2_config=TINY_WAV2VEC2, mel_deltas=True)


# -- issue 12 options: they default to the first models' behaviour ----------------------------------------------------


def test_a_config_without_the_new_keys_loads_with_the_old_behaviour(model, tmp_path):
    """assets/pipeline/landmark_model predates loudness_floor / loudness_reference / mel_deltas."""
    import json

    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("loudness_floor", "loudness_reference", "mel_deltas", "identity_frame"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    loaded = KFusionLandmarkModel.from_pretrained(tmp_path)
    assert (loaded.config.loudness_floor, loaded.config.loudness_reference, loaded.config.mel_deltas,
            loaded.config.identity_frame) == (1e-3, "clip", False, "crop")
    wave, ids = audio(0.5), identity()
    with torch.no_grad():
        assert torch.equal(loaded(wave, ids, 12).landmarks, model(wave, ids, 12).landmarks)


def test_mel_deltas_triple_the_context_features_and_round_trip(tmp_path):
    plain, with_deltas = build(), build(mel_deltas=True)
    wave = audio(0.6)
    assert with_deltas.context_in.in_features == 3 * plain.context_in.in_features
    feats = with_deltas.context_frontend(wave)
    base = plain.context_frontend(wave)
    assert torch.allclose(feats[..., :16], base)
    # The delta of a constant is 0; of a ramp, its slope.
    from talking_head.models.kfusion_frontends import deltas as _deltas

    ramp = torch.arange(10.0)[None, :, None].expand(1, 10, 3)
    assert torch.allclose(_deltas(ramp)[:, 2:-2], torch.ones(1, 6, 3))
    assert torch.equal(_deltas(torch.ones(1, 7, 2)), torch.zeros(1, 7, 2))
    with_deltas.save_pretrained(tmp_path)
    loaded = KFusionLandmarkModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(wave, identity(), 15).landmarks, with_deltas(wave, identity(), 15).landmarks)


def test_context_dilations_widen_what_a_frame_hears_and_round_trip(tmp_path):
    """Two undilated blocks on 10 ms log-mel steps hear +-40 ms; context_dilations [1, 2, 4, 8] hear
    +-300 ms: a change 200 ms after frame 5 reaches that frame's Context features only with the dilations."""
    plain, dilated = build(), build(context_dilations=[1, 2, 4, 8])
    assert len(dilated.context_temporal) == 4 and len(plain.context_temporal) == TINY["num_temporal_blocks"]
    wave = audio(1.0)
    changed = wave.clone()
    start = int((5.5 / 25 + 0.2) * SR)  # frame 5's centre + 200 ms
    changed[:, start: start + 160] += 0.5
    with torch.no_grad():
        for m, reaches in ((plain, False), (dilated, True)):
            a, b = m._context_domain(wave, 25, 25.0), m._context_domain(changed, 25, 25.0)
            assert (not torch.allclose(a[:, 5], b[:, 5], atol=1e-6)) == reaches
            assert not torch.allclose(a[:, 10:12], b[:, 10:12])  # around the change itself, both hear it
        dilated.save_pretrained(tmp_path)
        loaded = KFusionLandmarkModel.from_pretrained(tmp_path)
        assert loaded.config.context_dilations == [1, 2, 4, 8]
        assert torch.equal(loaded(wave, identity(), 20).landmarks, dilated(wave, identity(), 20).landmarks)
    for bad in ([], [0, 1], [1.5]):
        with pytest.raises(ValueError, match="context_dilations"):
            build(context_dilations=bad)


def test_context_band_conv_shares_its_filters_across_bands_and_round_trips(tmp_path):
    """context_band_conv: two 3x3 convolutions over (time, band) before the Context projection, each halving the
    bands. The same filters read every band: a pattern 4 log-mel bands higher (all three feature planes) comes
    out one output band higher, unchanged."""
    model = build(context_band_conv=4, mel_deltas=True)
    stem = model.context_stem
    assert stem.output_dim == 4 * 4 and model.context_in.in_features == 16  # 16 bands -> 4
    pattern = torch.zeros(1, 20, 3, 16)
    pattern[:, 5:15, :, 4:8] = torch.randn(1, 10, 3, 4, generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(pattern, 4, dims=-1)
    with torch.no_grad():
        a = stem(pattern.flatten(2)).reshape(1, 20, 4, 4)  # (B, T, channels, bands)
        b = stem(shifted.flatten(2)).reshape(1, 20, 4, 4)
        torch.testing.assert_close(b[..., 2], a[..., 1])
        assert not torch.allclose(a[..., 1], a[..., 2])
        wave = audio(1.0)
        out = model(wave, identity(), 20).landmarks
        assert out.shape == (2, 20, 68, 2) and torch.isfinite(out).all()
        model.save_pretrained(tmp_path)
        loaded = KFusionLandmarkModel.from_pretrained(tmp_path)
        assert loaded.config.context_band_conv == 4
        assert torch.equal(loaded(wave, identity(), 20).landmarks, out)
    for bad in (dict(context_band_conv=-1), dict(context_band_conv=4, context_encoder="wav2vec2")):
        with pytest.raises(ValueError, match="context_band_conv"):
            build(**bad)


def test_mel_band_mean_removes_a_fixed_filter_and_round_trips(tmp_path):
    """mel_band_mean: a fixed filter on the recording (a microphone's or a voice's spectral balance: here a
    first-order tilt, -6 dB at 0 Hz to +3.5 dB at 8 kHz) is a constant per log-mel band, and the band mean removes it; the
    plain front end passes it on. Silence around the speech does not change the mean."""
    plain, normed = build(), build(mel_band_mean=True)
    wave = audio(1.0, batch=1)
    filtered = torch.cat([wave[:, :1], wave[:, 1:] - 0.5 * wave[:, :-1]], dim=1)
    with torch.no_grad():
        for m, removed in ((plain, False), (normed, True)):
            change = (m.context_frontend(wave) - m.context_frontend(filtered)).abs().mean()
            assert (change < 0.02) == removed, float(change)
        padded = torch.cat([wave, torch.zeros(1, SR)], dim=1)
        steps = normed.context_frontend(wave).shape[1] - 2  # the last steps hear the padding's start
        assert torch.allclose(normed.context_frontend(padded)[:, :steps], normed.context_frontend(wave)[:, :steps],
                              atol=1e-4)
        normed.save_pretrained(tmp_path)
        loaded = KFusionLandmarkModel.from_pretrained(tmp_path)
        assert loaded.config.mel_band_mean is True
        assert torch.equal(loaded(wave, identity(1), 20).landmarks, normed(wave, identity(1), 20).landmarks)


def test_mel_max_frequency_hears_only_the_band_below_it():
    """mel_max_frequency=4000: a 6 kHz tone is not heard (telephone speech then sounds like any other);
    the full-band front end hears it. Bad edges are refused."""
    full, phone = build(), build(mel_max_frequency=4000.0)
    t = torch.arange(SR, dtype=torch.float32) / SR
    quiet = audio(1.0, batch=1)
    tone = quiet + 0.3 * torch.sin(2 * math.pi * 6000 * t)[None]
    with torch.no_grad():
        for m, hears in ((full, True), (phone, False)):
            change = (m.context_frontend(tone) - m.context_frontend(quiet)).abs().amax(dim=-1).mean()
            assert (change > 0.5) == hears, float(change)
    for bad in (0.0, -100.0, SR):
        with pytest.raises(ValueError, match="mel_max_frequency"):
            build(mel_max_frequency=bad)


def test_freq_warp_moves_a_tone_in_training_only():
    """The training-time vocal-tract length perturbation (train_landmarks.py --aug_freq_warp): in train mode
    a 1 kHz tone is heard in a band scaled by up to the factor, at the same time steps; in eval mode never."""
    m = build(n_mels=64, dropout=0.0)
    t = torch.arange(SR, dtype=torch.float32) / SR
    tone = (0.3 * torch.sin(2 * math.pi * 1000 * t))[None].expand(8, -1).clone()
    frontend = m.context_frontend
    with torch.no_grad():
        plain = frontend(tone).argmax(-1)
        frontend.freq_warp = 0.3
        assert torch.equal(frontend(tone).argmax(-1), plain)  # eval mode: off
        m.train()
        torch.manual_seed(0)
        warped = frontend(tone).argmax(-1)
        m.eval()
    assert warped.shape == plain.shape
    assert (warped[:, 5:-5] != plain[:, 5:-5]).any()  # some of the 8 clips heard another frequency
    # ... each at one frequency throughout (a scaled spectrum, not a time shift)
    assert (warped[:, 5:-5] == warped[:, 5:6]).all()


def test_face_identity_frame_moves_any_face_alike():
    """identity_frame="face": the same face shifted in the crop gets the same displacements; scaled by k
    about its centre, displacements k times as large. The old "crop" frame does neither."""
    face_model, crop_model = build(identity_frame="face"), build()
    wave, ids = audio(0.5), identity()
    moved = ids + torch.tensor([0.07, -0.04])
    centre = ids.mean(dim=1, keepdim=True)
    bigger = centre + 1.2 * (ids - centre)
    with torch.no_grad():
        base = face_model(wave, ids, 12).displacements
        assert torch.allclose(face_model(wave, moved, 12).displacements, base, atol=1e-6)
        assert torch.allclose(face_model(wave, bigger, 12).displacements, 1.2 * base, atol=1e-6)
        assert not torch.allclose(crop_model(wave, moved, 12).displacements, crop_model(wave, ids, 12).displacements,
                                  atol=1e-6)
    with pytest.raises(ValueError, match="identity_frame"):
        build(identity_frame="world")


def test_active_loudness_is_not_diluted_by_silence():
    speech = audio(1.0, batch=1)
    padded = torch.cat([torch.zeros(1, 4 * SR), speech], dim=1)
    active = build(loudness_reference="active")
    clip = build()

    def gain(m, wave):
        frames = round(wave.shape[1] / SR * 25)
        out = m._prepare_waveform(wave, frames, 25.0)
        return float(out[0, -SR:].abs().max() / wave[0, -SR:].abs().max())

    assert gain(active, padded) == pytest.approx(gain(active, speech), rel=0.02)
    assert gain(clip, padded) > 2.0 * gain(clip, speech)  # the old reference: 4 s of silence more than doubles it
    # The floor bounds the gain: room noise is not raised to speech level.
    noise = 0.003 * torch.randn(1, SR)
    quiet = build(loudness_reference="active", loudness_floor=0.02)
    assert gain(quiet, noise) == pytest.approx(0.1 / 0.02, rel=1e-4)
    assert torch.equal(quiet._prepare_waveform(torch.zeros(1, SR), 25, 25.0), torch.zeros(1, SR))


# -- loss ------------------------------------------------------------------------------------------------------------


def test_loss_zero_for_identical_inputs():
    x = torch.rand(2, 5, 68, 2)
    assert landmark_loss(x, x.clone()).item() == 0.0


def test_loss_weights_the_mouth():
    target = torch.rand(1, 4, 68, 2)
    mouth_error, jaw_error = target.clone(), target.clone()
    mouth_error[:, :, MOUTH_SLICE.start + 3] += 0.05
    jaw_error[:, :, 3] += 0.05
    assert landmark_loss(mouth_error, target) > 3 * landmark_loss(jaw_error, target)


def test_loss_velocity_term_penalises_jitter():
    target = torch.rand(1, 8, 68, 2)
    offset = 0.02 * torch.ones(1, 8, 68, 2)
    jitter = offset * torch.tensor([1.0, -1.0] * 4)[None, :, None, None]  # same per-frame error, flipping sign
    no_velocity = dict(velocity_weight=0.0)
    torch.testing.assert_close(
        landmark_loss(target + offset, target, **no_velocity), landmark_loss(target + jitter, target, **no_velocity)
    )
    assert landmark_loss(target + jitter, target) > 2 * landmark_loss(target + offset, target)


def test_centered_loss_ignores_translation_and_silent_term_weighs_silent_mouths():
    target = torch.rand(2, 6, 68, 2)
    shifted = target + torch.tensor([0.05, -0.02])  # the whole face moved: same shape
    assert landmark_loss(shifted, target, centered=True).item() == pytest.approx(0.0, abs=1e-10)
    assert landmark_loss(shifted, target).item() > 1e-4
    with_abs = landmark_loss(shifted, target, centered=True, absolute_weight=1.0).item()
    assert with_abs == pytest.approx(float(((shifted - target) ** 2).mean()), rel=1e-5)
    # The silent term: an error on the mouth of silent frames only costs with silent_weight.
    pred = target.clone()
    pred[:, :3, MOUTH_SLICE] += 0.1
    silent = torch.zeros(2, 6, dtype=torch.bool)
    silent[:, :3] = True
    base = landmark_loss(pred, target).item()
    extra = landmark_loss(pred, target, silent_frames=silent, silent_weight=1.0).item() - base
    assert extra == pytest.approx(0.01, rel=1e-4)  # MSE over silent mouth points = 0.1 ** 2
    talking = landmark_loss(pred, target, silent_frames=~silent, silent_weight=1.0).item()
    assert talking == pytest.approx(base, rel=1e-6)
    with pytest.raises(ValueError, match="silent_frames"):
        landmark_loss(pred, target, silent_frames=silent[:, :4], silent_weight=1.0)


def test_euclidean_distance_loss_is_the_mean_point_distance():
    torch.manual_seed(0)
    target = torch.rand(2, 6, 68, 2)
    pred = target.clone()
    pred[..., MOUTH_SLICE, 0] += 0.03  # every mouth point 0.05 away (a 3-4-5 triangle)
    pred[..., MOUTH_SLICE, 1] += 0.04
    mouth_only = dict(all_weight=0.0, velocity_weight=0.0, mouth_weight=1.0)
    assert landmark_loss(pred, target, distance="euclidean", **mouth_only).item() == pytest.approx(0.05, rel=1e-5)
    assert landmark_loss(pred, target, **mouth_only).item() == pytest.approx((0.03**2 + 0.04**2) / 2, rel=1e-4)
    # the silent term is a distance too, on silent frames only
    silent = torch.zeros(2, 6, dtype=torch.bool)
    silent[:, :2] = True
    extra = landmark_loss(pred, target, distance="euclidean", silent_frames=silent, silent_weight=1.0, **mouth_only)
    assert extra.item() - 0.05 == pytest.approx(0.05, rel=1e-4)
    # an exact prediction has a finite gradient (no 0 / 0 at distance 0)
    exact = target.clone().requires_grad_(True)
    landmark_loss(exact, target, distance="euclidean").backward()
    assert torch.isfinite(exact.grad).all()
    with pytest.raises(ValueError, match="distance"):
        landmark_loss(pred, target, distance="l1")


def test_loss_errors():
    with pytest.raises(ValueError, match="same shape"):
        landmark_loss(torch.zeros(1, 2, 68, 2), torch.zeros(1, 3, 68, 2))
    with pytest.raises(ValueError, match="68"):
        landmark_loss(torch.zeros(1, 2, 20, 2), torch.zeros(1, 2, 20, 2))


def test_a_few_adam_steps_reduce_the_loss():
    model = build().train()
    wave, ids = audio(0.4, batch=1), identity(batch=1)
    frames = 10
    # A target with real lip motion: the mouth opens and closes.
    opening = torch.sin(torch.linspace(0, math.pi, frames))[None, :, None] * 0.05
    target = ids[:, None].repeat(1, frames, 1, 1)
    target[:, :, MOUTH_SLICE, 1] += opening
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss = landmark_loss(model(wave, ids, frames).landmarks, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -- pykan side effects and input errors -----------------------------------------------------------------------------


def test_pykan_writes_no_files_and_prints_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = build().train()
    model(audio(0.2), identity(), 5).landmarks.sum().backward()
    with torch.no_grad():
        model.eval()(audio(0.2), identity(), 5)
    assert os.listdir(tmp_path) == []
    captured = capsys.readouterr()
    assert captured.out == ""


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(waveform=torch.zeros(16000)), "2-D"),
        (dict(waveform=np.zeros((2, 16000), np.float32)), "torch.Tensor"),
        (dict(waveform=torch.zeros(2, 16000, dtype=torch.int16)), "float"),
        (dict(waveform=torch.zeros(2, 0)), "at least one"),
        (dict(waveform=torch.full((2, 100), float("nan"))), "NaN"),
        (dict(identity_landmarks=torch.zeros(2, 68)), "identity_landmarks"),
        (dict(identity_landmarks=torch.zeros(3, 68, 2)), "identity_landmarks"),
        (dict(num_frames=0), "num_frames"),
        (dict(num_frames=2.5), "num_frames"),
        (dict(fps=0.0), "fps"),
        (dict(fps=-25), "fps"),
        (dict(fps=float("inf")), "fps"),
        (dict(emotion_labels=torch.tensor([0, 9])), "emotion_labels"),
        (dict(emotion_labels=torch.tensor([-1, 0])), "emotion_labels"),
        (dict(emotion_labels=torch.tensor([0.0, 1.0])), "emotion_labels"),
        (dict(emotion_labels=torch.tensor([1])), "emotion_labels"),
    ],
)
def test_bad_inputs_raise_value_error(model, change, message):
    args = dict(waveform=audio(0.2), identity_landmarks=identity(), num_frames=5, fps=25.0, emotion_labels=None)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        model(**args)
