"""Emotion in the face (issue 16): emotion_scale, the renderer-unconditional flag, emotion aliases, the CREMA-D
source and the landmark expression classifier. Tiny random models and synthetic data only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_face_landmarks, voice_like
from talking_head.constants import EMOTIONS, NULL_EMOTION
from talking_head.data.sources import cremad_jobs, parse_cremad_name
from talking_head.evaluation.expression import (
    ExpressionClassifier, apply_offset, clip_features, emotion_offsets, normalise_shape,
)
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.presets import build_pipeline

SR = 16000
STEPS = dict(t_start=300, num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", sample_size=32, seed=0)
    p.set_progress_bar_config(disable=True)
    p.emotion_classifier = None  # the emotion is given in these tests
    p.feature_extractor = None
    p.landmark_model.eval()  # predict_landmarks is called directly here (the pipeline's __call__ sets eval)
    # Make every emotion row of the landmark model clearly different (a random tiny model's rows barely move
    # the output after the LayerNorm).
    with torch.no_grad():
        emb = p.landmark_model.emotion_embedding.weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(1)) * 5)
    return p


@pytest.fixture
def identity():
    rng = np.random.default_rng(3)
    return (rng.random((80, 80, 3)) * 200).astype(np.uint8), synthetic_face_landmarks(80)


def run(pipe, identity, seconds=0.32, **kw):
    image, lmk = identity
    args = dict(sample_rate=SR, identity_landmarks=lmk, generator=torch.Generator().manual_seed(0), **STEPS)
    args.update(kw)
    return pipe(voice_like(seconds), image, **args)


def predict(pipe, emotion, scale=1.0, frames=8):
    wave = torch.from_numpy(voice_like(frames / 25))[None]
    ident = torch.from_numpy(synthetic_face_landmarks(256) / 256.0)[None].float()
    labels = torch.tensor([EMOTIONS.index(emotion) if emotion != "none" else NULL_EMOTION])
    return pipe.predict_landmarks(wave, ident, frames, 25.0, labels, emotion_scale=scale)


# -------------------------------------------------------------------- emotion_scale


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), -float("inf"), "1", None, True])
def test_emotion_scale_bad_values_raise_one_clear_error(pipe, identity, bad):
    with pytest.raises(ValueError, match="emotion_scale"):
        run(pipe, identity, emotion="happy", emotion_scale=bad)


def test_unknown_emotion_raises(pipe, identity):
    with pytest.raises(ValueError, match="unknown emotion"):
        run(pipe, identity, emotion="furious")


def test_scale_zero_is_neutral_and_one_is_the_emotion(pipe):
    neutral = predict(pipe, "neutral")
    happy = predict(pipe, "happy")
    torch.testing.assert_close(predict(pipe, "happy", 0.0), neutral)
    torch.testing.assert_close(predict(pipe, "happy", 1.0), happy)
    # linear in the scale: 2 = twice as far from neutral
    torch.testing.assert_close(predict(pipe, "happy", 2.0), neutral + 2 * (happy - neutral), rtol=1e-5, atol=1e-6)
    # no emotion (null class) and neutral are not scaled
    torch.testing.assert_close(predict(pipe, "none", 3.0), predict(pipe, "none"))
    torch.testing.assert_close(predict(pipe, "neutral", 3.0), neutral)


def test_different_emotions_give_different_landmarks(pipe, identity):
    a = run(pipe, identity, emotion="happy").landmarks
    b = run(pipe, identity, emotion="sad").landmarks
    assert np.abs(a - b).max() > 1e-3
    z = run(pipe, identity, emotion="happy", emotion_scale=0.0).landmarks
    n = run(pipe, identity, emotion="neutral").landmarks
    np.testing.assert_allclose(z, n, atol=1e-5)


# -------------------------------------------------------------------- renderer flag


def test_unconditional_renderer_gets_the_null_class_only(pipe, identity):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["class_labels"].clone()),
                                                 with_kwargs=True)
    try:
        pipe.register_to_config(unet_emotion_conditioning=False)
        run(pipe, identity, emotion="happy")
        assert seen and all((c == NULL_EMOTION).all() for c in seen)
        seen.clear()
        pipe.register_to_config(unet_emotion_conditioning=True)
        run(pipe, identity, emotion="happy")
        assert seen and all((c == EMOTIONS.index("happy")).all() for c in seen)
    finally:
        handle.remove()
        pipe.register_to_config(unet_emotion_conditioning=True)


def test_bundled_pipeline_declares_an_unconditional_renderer():
    import json

    index = Path(__file__).resolve().parents[1] / "assets" / "pipeline" / "model_index.json"
    assert json.loads(index.read_text())["unet_emotion_conditioning"] is False


def test_unconditional_flag_survives_save_and_load(pipe, tmp_path):
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    pipe.register_to_config(unet_emotion_conditioning=False)
    try:
        pipe.save_pretrained(tmp_path / "p")
        loaded = TalkingHeadPipeline.from_pretrained(tmp_path / "p")
        assert loaded.config.unet_emotion_conditioning is False
    finally:
        pipe.register_to_config(unet_emotion_conditioning=True)


# -------------------------------------------------------------------- aliases


def test_emotion_aliases_read_the_aliased_row():
    torch.manual_seed(0)
    model = KFusionLandmarkModel(global_channels=8, context_channels=8, identity_dim=8, emotion_dim=4,
                                 kan_hidden_dims=(8,), num_temporal_blocks=1,
                                 emotion_aliases={"contempt": "disgusted", "surprised": "fear"}).eval()
    with torch.no_grad():
        model.emotion_embedding.weight.copy_(torch.randn(model.emotion_embedding.weight.shape) * 5)
    wave = torch.from_numpy(voice_like(0.2))[None]
    ident = torch.from_numpy(synthetic_face_landmarks(256) / 256.0)[None].float()

    def out(name):
        return model(wave, ident, 5, emotion_labels=torch.tensor([EMOTIONS.index(name)])).landmarks

    torch.testing.assert_close(out("contempt"), out("disgusted"))
    torch.testing.assert_close(out("surprised"), out("fear"))
    assert (out("happy") - out("sad")).abs().max() > 1e-4
    assert model.resolved_emotion("contempt") == "disgusted" and model.resolved_emotion("happy") == "happy"
    with pytest.raises(ValueError, match="emotion_aliases"):
        KFusionLandmarkModel(emotion_aliases={"contempt": "smug"})


# -------------------------------------------------------------------- CREMA-D source


def test_cremad_names_and_actor_split(tmp_path):
    assert parse_cremad_name("1005_IEO_ANG_HI.mp4") == {"actor": "1005", "sentence": "IEO", "emotion": "angry",
                                                        "level": 3}
    assert parse_cremad_name("1005_TIE_NEU_XX")["level"] is None
    assert parse_cremad_name("1005_TIE_XYZ_XX") is None and parse_cremad_name("clip.mp4") is None
    for i, name in enumerate(["1001_IEO_HAP_XX", "1001_TIE_NEU_XX", "1002_IEO_SAD_LO", "1003_IEO_FEA_MD",
                              "1004_IEO_DIS_HI", "1005_IEO_ANG_XX", "notcremad"]):
        (tmp_path / f"{name}.mp4").write_bytes(b"")
        (tmp_path / f"{name}.wav").write_bytes(b"")
    jobs, skipped = cremad_jobs(tmp_path)
    assert len(jobs) == 6 and len(skipped) == 1
    split = {j["speaker"]: j["parts"][0]["split"] for j in jobs}
    assert split == {"1001": "train", "1002": "train", "1003": "train", "1004": "train", "1005": "test"}
    job = next(j for j in jobs if j["parts"][0]["clip_id"] == "cremad_1001_IEO_HAP_XX")
    assert job["emotion"] == "happy" and job["audio"].endswith(".wav")
    jobs, _ = cremad_jobs(tmp_path, test_speakers="1001,1002")
    assert {j["speaker"] for j in jobs if j["parts"][0]["split"] == "test"} == {"1001", "1002"}
    with pytest.raises(ValueError, match="not found"):
        cremad_jobs(tmp_path, test_speakers="2000")


# -------------------------------------------------------------------- expression classifier


def _face(rng, pose=True):
    base = synthetic_face_landmarks(256).astype(np.float64)
    base = base + rng.normal(0, 1.5, base.shape)  # another identity
    if pose:
        angle = rng.uniform(-0.2, 0.2)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        base = (base - 128) @ rot.T * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-20, 20, 2)
    return base


def test_normalisation_removes_pose_and_offsets_follow_the_face():
    rng = np.random.default_rng(0)
    face = synthetic_face_landmarks(256).astype(np.float64)
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -7.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = (face - 128) @ rot.T * scale + 128 + shift
    np.testing.assert_allclose(normalise_shape(moved), normalise_shape(face), atol=1e-9)
    offset = np.zeros((68, 2))
    offset[48:68] = rng.normal(0, 0.01, (20, 2))  # the mouth only: the face's frame (nose, jaw ends) stays
    np.testing.assert_allclose(normalise_shape(apply_offset(moved, offset)) - normalise_shape(moved), offset,
                               atol=1e-9)
    np.testing.assert_allclose(apply_offset(moved, np.zeros((68, 2))), moved)


def test_expression_classifier_reads_synthetic_expressions():
    rng = np.random.default_rng(0)
    # Three "emotions": lip corners up (smile), mouth open, neutral; 12 actors x 3 clips each.
    def clip(emotion):
        face = _face(rng)
        frames = np.repeat(face[None], 10, axis=0)
        width = np.linalg.norm(face[16] - face[0])
        if emotion == "happy":
            frames[:, [48, 54, 60, 64], 1] -= 0.04 * width
            frames[:, 48, 0] -= 0.03 * width
            frames[:, 54, 0] += 0.03 * width
        elif emotion == "angry":
            frames[:, 55:60, 1] += 0.06 * width
            frames[:, 5:12, 1] += 0.04 * width
        return frames + rng.normal(0, 0.3, frames.shape)

    emotions = ["neutral", "happy", "angry"]
    feats, labels, groups = [], [], []
    for actor in range(12):
        for e in emotions:
            feats.append(clip_features(clip(e)))
            labels.append(e)
            groups.append(actor)
    clf = ExpressionClassifier().fit(feats, labels, groups)
    assert clf.C in ExpressionClassifier.C_GRID and clf.cv_accuracy > 0.8
    test = [(e, clip_features(clip(e))) for e in emotions for _ in range(4)]
    pred = clf.predict([f for _, f in test])
    assert np.mean(pred == np.array([e for e, _ in test])) >= 0.9
    offs = emotion_offsets(np.array(feats).reshape(-1, 68, 2), labels)
    assert np.abs(offs["neutral"]).max() == 0
    assert offs["happy"][48, 1] < -0.02 and offs["angry"][57, 1] > 0.03


def test_clip_features_skip_frames_without_a_face():
    lm = np.repeat(synthetic_face_landmarks(256)[None].astype(np.float64), 4, axis=0)
    lm[1] = np.nan
    assert np.isfinite(clip_features(lm)).all()
    with pytest.raises(ValueError, match="no.*face|without"):
        clip_features(np.full((3, 68, 2), np.nan))


def test_neutral_reference_takes_the_emotion_out_of_the_identity():
    from talking_head.trainers.landmarks import neutralise_reference

    face = torch.from_numpy(synthetic_face_landmarks(256) / 256.0).float()[None].repeat(3, 1, 1)
    table = torch.zeros(NULL_EMOTION + 1, 68, 2, dtype=torch.float64)
    table[EMOTIONS.index("happy"), 48, 1] = -0.05  # the corner up by 0.05 face widths
    out = neutralise_reference(face, torch.tensor([EMOTIONS.index("happy"), 0, NULL_EMOTION]), table)
    width = float((face[0, 16] - face[0, 0]).norm())
    assert float(out[0, 48, 1] - face[0, 48, 1]) == pytest.approx(0.05 * width, rel=1e-3)  # moved back down
    torch.testing.assert_close(out[1:], face[1:])


# -------------------------------------------------------------------- emotion residual branch


def _tiny_model(**kw):
    return KFusionLandmarkModel(global_channels=8, context_channels=8, identity_dim=8, emotion_dim=4,
                                kan_hidden_dims=(8,), num_temporal_blocks=1, dropout=0.0, **kw).eval()


def test_emotion_head_leaves_the_null_class_exactly_as_it_was():
    torch.manual_seed(0)
    base = _tiny_model()
    head = _tiny_model(emotion_head=True, emotion_head_dim=8)
    missing, unexpected = head.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("emotion_residual.") for k in missing)
    with torch.no_grad():
        for p in head.emotion_residual.parameters():
            p.copy_(torch.randn(p.shape))
    wave = torch.from_numpy(voice_like(0.2))[None]
    ident = torch.from_numpy(synthetic_face_landmarks(256) / 256.0)[None].float()
    with torch.no_grad():
        torch.testing.assert_close(head(wave, ident, 5).landmarks, base(wave, ident, 5).landmarks)
        happy = torch.tensor([EMOTIONS.index("happy")])
        assert (head(wave, ident, 5, emotion_labels=happy).landmarks
                - base(wave, ident, 5, emotion_labels=happy).landmarks).abs().max() > 1e-4


def test_train_only_and_frozen_null_row():
    from talking_head.trainers.landmarks import freeze_parameters

    model = _tiny_model(emotion_head=True, emotion_head_dim=8).train()
    freeze_parameters(model, "emotion_embedding,emotion_residual", freeze_null_emotion=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("emotion_embedding", "emotion_residual")) for n in trainable)
    before = model.emotion_embedding.weight.detach().clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    wave = torch.from_numpy(voice_like(0.2))[None].repeat(2, 1)
    ident = torch.from_numpy(synthetic_face_landmarks(256) / 256.0)[None].float().repeat(2, 1, 1)
    for _ in range(3):
        out = model(wave, ident, 5, emotion_labels=torch.tensor([EMOTIONS.index("happy"), NULL_EMOTION])).landmarks
        out.pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    after = model.emotion_embedding.weight.detach()
    torch.testing.assert_close(after[NULL_EMOTION], before[NULL_EMOTION])
    assert (after[EMOTIONS.index("happy")] - before[EMOTIONS.index("happy")]).abs().max() > 0
    with pytest.raises(ValueError, match="train_only"):
        freeze_parameters(model, "no_such_module")
    # Training only the speech part with the null row "frozen": the whole table is frozen, nothing to hook.
    speech_only = _tiny_model(emotion_head=True, emotion_head_dim=8).train()
    freeze_parameters(speech_only, "fusion_kan", freeze_null_emotion=True)
    assert not speech_only.emotion_embedding.weight.requires_grad


# -------------------------------------------------------------------- evaluate --expression-data, CLI


def test_expression_evaluation_end_to_end_on_synthetic_faces(pipe, tmp_path):
    from talking_head.data.synthetic import make_synthetic_dataset
    from talking_head.evaluation.expression import expression_evaluation, report_lines
    from talking_head.evaluation.runner import evaluate

    root = make_synthetic_dataset(tmp_path / "data", num_speakers=3, clips_per_emotion=2, seconds=0.6, size=32,
                                  emotions=("neutral", "happy", "sad"))
    res = expression_evaluation(root, pipe.predict_landmarks, emotions=("neutral", "happy", "sad"))
    assert 0 <= res["reference"]["accuracy"] <= 1 and res["classifier"]["classes"] == ["happy", "neutral", "sad"]
    gen = res["generated"]
    assert len(gen["clips"]) == 3 * len(gen["source_clips"]) and 0 <= gen["accuracy"] <= 1
    assert any("Emotion in the face" in line for line in report_lines(res))
    m = evaluate(data=str(root), pipe=pipe, methods=(), expression_data=str(root), expression_sheet=False,
                 output=str(tmp_path / "report"), quiet=True, device="cpu")
    assert m["expression"]["reference"]["accuracy"] == res["reference"]["accuracy"]
    assert "Emotion in the face" in (tmp_path / "report" / "report.md").read_text()
    assert "--expression-data" in m["command"]


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "x"])
def test_cli_emotion_scale_rejects_bad_values(bad, capsys):
    from talking_head.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--audio", "a.wav", "--identity", "p.jpg", "--output", "o.mp4",
                                   "--emotion-scale", bad])
    assert "emotion_scale" in capsys.readouterr().err
    args = build_parser().parse_args(["generate", "--audio", "a.wav", "--identity", "p.jpg", "--output", "o.mp4",
                                      "--emotion-scale", "1.5"])
    assert args.emotion_scale == 1.5
