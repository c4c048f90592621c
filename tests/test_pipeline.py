"""End-to-end tests of TalkingHeadPipeline with tiny random components."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import SPEECH, synthetic_face_landmarks, voice_like
from talking_head.constants import EMOTIONS
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline, TalkingHeadPipelineOutput
from talking_head.presets import build_pipeline
from talking_head.schedulers import scheduler_from_name
from talking_head.utils import save_pipeline_atomic

SIZE = 32
PHOTO = 80  # the identity fixture's side: the output is the photo at its own resolution
SR = 16000
STEPS = dict(t_start=300, num_inference_steps=3)


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", sample_size=SIZE, seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def identity():
    rng = np.random.default_rng(3)
    return (rng.random((80, 80, 3)) * 200).astype(np.uint8), synthetic_face_landmarks(80)


def run(pipe, identity, seconds=0.4, seed=0, **kw):
    image, lmk = identity
    args = dict(sample_rate=SR, identity_landmarks=lmk, generator=torch.Generator().manual_seed(seed), **STEPS)
    args.update(kw)
    return pipe(voice_like(seconds), image, **args)


class UNetCallCounter:
    def __init__(self, pipe):
        self.calls = 0
        self.handle = pipe.unet.register_forward_hook(self._hook)

    def _hook(self, *a):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.handle.remove()


def test_output_types_shapes_and_ranges(pipe, identity):
    out = run(pipe, identity, seconds=0.4)
    assert isinstance(out, TalkingHeadPipelineOutput)
    frames = out.frames
    assert frames.shape == (1, 10, PHOTO, PHOTO, 3)  # 0.4 s at 25 fps
    assert frames.dtype == np.float32 and frames.min() >= 0 and frames.max() <= 1
    assert out.landmarks.shape == (1, 10, 68, 2)
    assert out.emotion[0] in EMOTIONS
    assert out.emotion_probs.shape == (1, 8) and np.isclose(out.emotion_probs.sum(), 1, atol=1e-4)
    assert out.fps == 25.0 and out.sample_rate == SR and out.audio.shape == (1, int(0.4 * SR))

    pt = run(pipe, identity, output_type="pt").frames
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 10, 3, PHOTO, PHOTO)
    np.testing.assert_allclose(pt.permute(0, 1, 3, 4, 2).numpy(), frames, atol=1e-6)
    pil = run(pipe, identity, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 10 and isinstance(pil[0][0], PIL.Image.Image)
    assert pil[0][0].size == (PHOTO, PHOTO)

    frames_t, lmk_t, emo_t = run(pipe, identity, return_dict=False)
    np.testing.assert_array_equal(frames_t, frames)


def test_same_seed_same_video_other_seed_other_video(pipe, identity):
    a = run(pipe, identity, seed=5).frames
    b = run(pipe, identity, seed=5).frames
    c = run(pipe, identity, seed=6).frames
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_save_load_round_trip_gives_identical_output(pipe, identity, tmp_path):
    out_dir = save_pipeline_atomic(pipe, tmp_path / "pipe")
    index = json.loads((out_dir / "model_index.json").read_text())
    assert index["unet"] == ["talking_head.models.unet_3d_class", "ClassConditionedUNet3DModel"]
    assert index["landmark_model"][1] == "KFusionLandmarkModel"
    assert index["clip_frames"] == 16
    assert list(out_dir.glob("unet/*.safetensors")) and not list(out_dir.rglob("*.bin"))
    umask = os.umask(0)
    os.umask(umask)
    assert out_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # not the temp folder's private 0700
    loaded = TalkingHeadPipeline.from_pretrained(out_dir)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(loaded, identity).frames, run(pipe, identity).frames)
    # Saving again over the same directory replaces it and leaves no temp folders behind.
    save_pipeline_atomic(loaded, out_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_emotion_override_and_guidance(pipe, identity):
    out = run(pipe, identity, emotion="happy")
    # The caller's emotion is rendered; what the classifier heard is still reported.
    assert out.emotion == ["happy"] and out.emotion_probs.shape == (1, 8)
    np.testing.assert_allclose(out.emotion_probs.sum(), 1, rtol=1e-5)
    out = run(pipe, identity, emotion="Sad", guidance_scale=3.0)
    assert out.emotion == ["sad"]


def test_emotion_label_reaches_the_unet(pipe, identity):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["class_labels"].tolist()),
                                                 with_kwargs=True)
    try:
        run(pipe, identity, emotion="fear", guidance_scale=2.0, num_inference_steps=1)
    finally:
        handle.remove()
    assert seen == [[EMOTIONS.index("fear"), len(EMOTIONS)]]  # conditional + null row for guidance


def test_long_audio_is_made_clip_by_clip_and_streamed(pipe, identity):
    chunks = []
    out = run(pipe, identity, seconds=1.9, frames_callback=chunks.append, num_inference_steps=1)
    frames = out.frames
    assert frames.shape[1] == round(1.9 * 25) == 48
    assert len(pipe.clip_starts(48)) > 2
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), frames)
    # output_type=None keeps nothing in memory, but streams the same frames.
    streamed = []
    none = run(pipe, identity, seconds=1.9, frames_callback=streamed.append, output_type=None, num_inference_steps=1)
    assert none.frames is None
    np.testing.assert_array_equal(np.concatenate(streamed, axis=1), frames)
    # The uint8 callback (what an MP4 writer takes) gets the same frames without the float copy.
    raw = []
    run(pipe, identity, seconds=1.9, frames_callback=raw.append, output_type=None, num_inference_steps=1,
        frames_callback_dtype="uint8")
    raw = np.concatenate(raw, axis=1)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, np.round(frames * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="frames_callback_dtype"):
        run(pipe, identity, frames_callback=print, frames_callback_dtype="float16")


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 28, 29, 100])
def test_clip_starts_cover_every_frame_with_the_configured_overlap(pipe, frames):
    starts = pipe.clip_starts(frames)
    length = min(pipe.config.clip_frames, frames)
    covered = np.zeros(frames, int)
    for s in starts:
        covered[s: s + length] += 1
    assert covered.min() >= 1 and starts[-1] + length == frames
    for a, b in zip(starts, starts[1:]):
        assert b - a <= pipe.config.clip_frames - pipe.config.clip_overlap


def test_first_denoising_step_is_t_start_minus_one(pipe, identity):
    seen = []

    def record(p, i, t, kwargs):
        seen.append(int(t))
        return kwargs

    run(pipe, identity, seconds=0.2, t_start=12, num_inference_steps=None, callback_on_step_end=record)
    assert seen == list(range(11, -1, -1))  # one clip (5 frames), one step per timestep


@pytest.mark.parametrize("name,steps", [("ddim", 4), ("dpm", 4)])
def test_other_schedulers_work_through_the_same_call(identity, name, steps):
    p = build_pipeline("tiny", sample_size=SIZE, seed=0)
    p.set_progress_bar_config(disable=True)
    p.scheduler = scheduler_from_name(name, p.scheduler)
    seen = []
    out = run(p, identity, num_inference_steps=steps,
              callback_on_step_end=lambda pp, i, t, kw: (seen.append(int(t)), kw)[1])
    assert out.frames.shape == (1, 10, PHOTO, PHOTO, 3) and np.isfinite(out.frames).all()
    assert len(seen) == steps and seen[0] < 300


def test_batch_of_two_with_one_identity(pipe, identity):
    image, lmk = identity
    out = pipe([voice_like(0.4, seed=1), voice_like(0.4, seed=2)], image, sample_rate=SR, identity_landmarks=lmk,
               emotion=["angry", "happy"], generator=torch.Generator().manual_seed(0), **STEPS)
    assert out.frames.shape == (2, 10, PHOTO, PHOTO, 3) and out.emotion == ["angry", "happy"]


def test_landmarks_are_in_output_pixels_and_follow_the_identity(pipe, identity):
    out = run(pipe, identity)
    lm = out.landmarks[0]
    # An untrained landmark model adds small displacements to the identity's own (cropped) landmarks.
    assert np.isfinite(lm).all()
    centre = lm.reshape(-1, 2).mean(0)
    assert 0.2 * PHOTO < centre[0] < 0.8 * PHOTO and 0.2 * PHOTO < centre[1] < 0.8 * PHOTO


def test_dtype_move_keeps_landmark_model_fp32(identity):
    p = build_pipeline("tiny", sample_size=SIZE, seed=0)
    p.set_progress_bar_config(disable=True)
    p.to(torch.bfloat16)
    assert p.unet.dtype == torch.bfloat16
    assert next(p.landmark_model.parameters()).dtype == torch.float32
    out = run(p, identity, seconds=0.2, emotion="neutral", num_inference_steps=2)
    assert out.frames.dtype == np.float32 and np.isfinite(out.frames).all()


def test_real_speech_file_and_real_photo_with_detected_face():
    pytest.importorskip("dlib")
    from skimage import data

    p = build_pipeline("tiny", sample_size=SIZE, seed=0)
    p.set_progress_bar_config(disable=True)
    out = p(str(SPEECH), data.astronaut(), t_start=300, num_inference_steps=1,
            generator=torch.Generator().manual_seed(0))
    import soundfile

    info = soundfile.info(str(SPEECH))
    assert out.frames.shape[1] == round(info.duration * 25)
    assert out.frames.shape[2:] == (512, 512, 3)  # the astronaut photo at its own size


# --------------------------------------------------------------- bad input
BAD_CALLS = [
    (dict(audio=np.zeros(0, np.float32)), "audio is empty"),
    (dict(audio=np.full(8000, np.nan, np.float32)), "NaN"),
    (dict(audio=np.zeros(300, np.float32)), "shorter than one frame"),
    (dict(emotion="grumpy"), "unknown emotion"),
    (dict(image=np.zeros((1, 1), np.uint8), identity_landmarks=None), "identity_frame"),
    (dict(fps=0), "fps"),
    (dict(t_start=0), "t_start"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(output_type="gif"), "output_type"),
    (dict(identity_landmarks=np.zeros((5, 2))), "identity_landmarks"),
]


@pytest.mark.parametrize("change,message", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_input_raises_before_any_model_runs(pipe, identity, change, message):
    image, lmk = identity
    args = dict(audio=voice_like(0.4), image=image, sample_rate=SR, identity_landmarks=lmk, **STEPS)
    args.update(change)
    audio, image = args.pop("audio"), args.pop("image")
    with UNetCallCounter(pipe) as counter, pytest.raises(ValueError, match=message):
        pipe(audio, image, **args)
    assert counter.calls == 0


def test_non_audio_file_and_non_image_file(pipe, identity, tmp_path):
    image, lmk = identity
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(ValueError, match="could not be decoded"):
        pipe(str(text), image, identity_landmarks=lmk, **STEPS)
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    with pytest.raises(ValueError, match="identity_frame"):
        pipe(voice_like(0.4), str(fake), sample_rate=SR, **STEPS)
    with pytest.raises(FileNotFoundError):
        pipe(str(tmp_path / "missing.wav"), image, identity_landmarks=lmk, **STEPS)


def test_directory_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TalkingHeadPipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="model_index.json"):
        TalkingHeadPipeline.from_pretrained(tmp_path)


def test_pipeline_with_mismatched_or_broken_components(pipe, tmp_path):
    good = save_pipeline_atomic(pipe, tmp_path / "good")

    def copy(name):
        import shutil

        return shutil.copytree(good, tmp_path / name)

    # A UNet config whose shapes no longer match its weights.
    bad = copy("bad_shapes")
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [8, 16, 32]
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        TalkingHeadPipeline.from_pretrained(bad)

    # Components that each load but do not fit together.
    bad = copy("bad_labels")
    cfg = json.loads((bad / "emotion_classifier" / "config.json").read_text())
    cfg["id2label"] = {str(i): f"class_{i}" for i in range(8)}
    cfg["label2id"] = {f"class_{i}": i for i in range(8)}
    (bad / "emotion_classifier" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="labels"):
        TalkingHeadPipeline.from_pretrained(bad)
    from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel

    with pytest.raises(ValueError, match="in_channels"):
        TalkingHeadPipeline(unet=ClassConditionedUNet3DModel(sample_size=32, in_channels=5, block_out_channels=(8, 16),
                                                             norm_num_groups=4),
                            scheduler=pipe.scheduler, landmark_model=pipe.landmark_model, mask_noise=pipe.mask_noise,
                            emotion_classifier=pipe.emotion_classifier, feature_extractor=pipe.feature_extractor)

    # A weights file cut in the middle.
    bad = copy("truncated")
    weights = next((bad / "unet").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        TalkingHeadPipeline.from_pretrained(bad)

    # A missing component folder.
    bad = copy("missing")
    import shutil

    shutil.rmtree(bad / "landmark_model")
    with pytest.raises(ValueError, match="landmark_model"):
        TalkingHeadPipeline.from_pretrained(bad)


def test_pipeline_without_classifier_uses_the_null_class(identity, tmp_path):
    p = build_pipeline("tiny", sample_size=SIZE, with_emotion_classifier=False)
    p.set_progress_bar_config(disable=True)
    torch.nn.init.normal_(p.unet.conv_out.weight, std=0.1)  # so the class changes the output
    default = run(p, identity, output_type="np")
    assert default.emotion == ["none"] and default.emotion_probs is None
    np.testing.assert_array_equal(default.frames, run(p, identity, emotion="none", output_type="np").frames)
    assert not np.array_equal(default.frames, run(p, identity, emotion="neutral", output_type="np").frames)
    with pytest.raises(ValueError, match="unknown emotion 'calm'.*'none'"):
        run(p, identity, emotion="calm")
    loaded = TalkingHeadPipeline.from_pretrained(save_pipeline_atomic(p, tmp_path / "noclf"))
    assert loaded.emotion_classifier is None


def test_pipeline_whose_classifier_folder_was_removed_loads_without_it(pipe, identity, tmp_path):
    import shutil

    folder = save_pipeline_atomic(pipe, tmp_path / "p")
    shutil.rmtree(folder / "emotion_classifier")
    loaded = TalkingHeadPipeline.from_pretrained(folder)
    assert loaded.emotion_classifier is None and loaded.feature_extractor is None
    loaded.set_progress_bar_config(disable=True)
    assert run(loaded, identity).emotion == ["none"]


def test_given_landmarks_drive_the_video(pipe, identity):
    rng = np.random.default_rng(0)
    given = (synthetic_face_landmarks(SIZE)[None] + rng.normal(0, 0.5, (10, 68, 2))).astype(np.float32)
    out = run(pipe, identity, landmarks=given, num_inference_steps=1)
    np.testing.assert_allclose(out.landmarks[0], given, atol=1e-4)
    with pytest.raises(ValueError, match="frames"):
        run(pipe, identity, landmarks=given[:7])
    with pytest.raises(ValueError, match="landmarks must be"):
        run(pipe, identity, landmarks=given[:, :20])


def test_identity_that_already_is_a_face_crop(pipe, identity):
    image, lmk = identity  # 80×80
    photo = pipe.prepare_identity(image, lmk, crop_face=False)
    np.testing.assert_array_equal(photo.image, image)
    assert photo.face_box == (40.0, 40.0, 80.0)  # the whole frame is the face crop
    np.testing.assert_allclose(photo.landmarks, lmk)
    # A wider frame: its centre square is the photo, the landmarks move with it.
    wide = np.concatenate([image[:, :10], image, image[:, :10]], axis=1)  # 80×100
    photo = pipe.prepare_identity(wide, lmk + np.float32([10, 0]), crop_face=False)
    np.testing.assert_array_equal(photo.image, image)
    np.testing.assert_allclose(photo.landmarks, lmk, atol=1e-5)
    out = run(pipe, identity, crop_face=False, num_inference_steps=1)
    assert out.frames.shape == (1, 10, PHOTO, PHOTO, 3)


def test_pipeline_carries_an_averaged_classifier(identity, tmp_path):
    """An `EmotionClassifierEnsemble` (several classifiers averaged, as the bundle may ship) sits in the pipeline
    like one classifier: it detects the emotion, saves under its own class name and loads back the same."""
    from talking_head.models.emotion_classifier import EmotionClassifierEnsemble, build_emotion_classifier
    from talking_head.presets import PRESETS

    p = build_pipeline("tiny", sample_size=SIZE, seed=0)
    p.set_progress_bar_config(disable=True)
    for seed in (1, 2):  # two members of the preset's kind, other weights
        torch.manual_seed(seed)
        build_emotion_classifier(PRESETS["tiny"]["emotion"]).save_pretrained(tmp_path / f"m{seed}")
        p.feature_extractor.save_pretrained(tmp_path / f"m{seed}")
    ensemble, extractor = EmotionClassifierEnsemble.from_members([tmp_path / "m1", tmp_path / "m2"])
    p.register_modules(emotion_classifier=ensemble, feature_extractor=extractor)
    out = run(p, identity)
    assert out.emotion[0] in EMOTIONS and np.allclose(np.asarray(out.emotion_probs).sum(-1), 1.0, atol=1e-5)
    folder = save_pipeline_atomic(p, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["emotion_classifier"] == ["talking_head.models.emotion_classifier", "EmotionClassifierEnsemble"]
    loaded = TalkingHeadPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.emotion_classifier, EmotionClassifierEnsemble)
    again = run(loaded, identity)
    assert again.emotion == out.emotion
    np.testing.assert_allclose(again.emotion_probs, out.emotion_probs, rtol=1e-6)
