"""Photo mode of the lower-face renderer (DESIGN.md 7.2-7.3, issue 11): the output is the user's photo at its
own resolution with only the lower face regenerated; awkward photos either work or fail with one clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO, synthetic_face_landmarks, voice_like
from talking_head.face import dlib_available
from talking_head.mouth_box import MouthBox
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.presets import build_pipeline
from talking_head.utils import save_pipeline_atomic

SR = 16000
DEMO_PHOTO = REPO / "assets" / "demo_identity.jpg"


@pytest.fixture(scope="module")
def pipe(tiny_dpm_pipe):
    return tiny_dpm_pipe


def run(pipe, image, landmarks=None, seconds=0.2, **kw):
    return pipe(voice_like(seconds), image, sample_rate=SR, identity_landmarks=landmarks, num_inference_steps=1,
                generator=torch.Generator().manual_seed(0), **kw)


def photo_with_face(height, width, face_side, x0, y0, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return image, synthetic_face_landmarks(face_side) + np.float32([x0, y0])


def changed(out, image) -> np.ndarray:
    """(H, W) bool: pixels that differ from the photo in any frame."""
    frames = np.round(out.frames[0] * 255).astype(np.int16)
    return (np.abs(frames - image[None].astype(np.int16)) > 1).any(axis=(0, 3))


def test_only_the_lower_face_changes_and_the_photo_keeps_its_size(pipe):
    image, lmk = photo_with_face(120, 160, 80, 40, 20)
    out = run(pipe, image, lmk)
    assert out.frames.shape == (1, 5, 120, 160, 3)
    diff = changed(out, image)
    assert diff.any()
    ys, xs = np.nonzero(diff)
    box = MouthBox.from_landmarks(np.concatenate([lmk[None], out.landmarks[0]]))
    assert xs.min() >= box.x0 and xs.max() < box.x0 + box.side
    assert ys.min() >= box.y0 and ys.max() < box.y0 + box.side
    eyes_and_brows = lmk[17:27].tolist() + lmk[36:48].tolist()
    for x, y in eyes_and_brows:
        assert not diff[int(y), int(x)], "eyes and brows are never regenerated"


def test_output_crop_gives_the_face_crop(pipe):
    image, lmk = photo_with_face(120, 160, 80, 40, 20)
    out = run(pipe, image, lmk, output_crop=True)
    side = out.frames.shape[2]
    assert out.frames.shape[3] == side and side % 2 == 0 and side > 60
    assert (out.landmarks[0] >= 0).all() and (out.landmarks[0] <= side).all()


def test_odd_sized_photo_loses_one_row_not_resolution(pipe):
    image, lmk = photo_with_face(121, 163, 80, 40, 20)
    out = run(pipe, image, lmk)
    assert out.frames.shape[2:4] == (120, 162)  # even sides for H.264, no resampling
    untouched = ~changed(out, image[:120, :162])
    assert untouched.mean() > 0.8


def test_face_at_the_border_works(pipe):
    image, lmk = photo_with_face(100, 100, 90, -30, 40)  # the jaw and mouth run off the left and bottom
    out = run(pipe, image, lmk)
    assert out.frames.shape == (1, 5, 100, 100, 3) and np.isfinite(out.frames).all()


def test_very_small_face_is_refused_clearly(pipe):
    image, lmk = photo_with_face(80, 80, 10, 30, 30)
    with pytest.raises(ValueError, match="face is too small"):
        run(pipe, image, lmk)


def test_huge_photo_is_scaled_to_max_size(pipe):
    image = np.full((6000, 8000, 3), 128, np.uint8)
    lmk = synthetic_face_landmarks(2000) + np.float32([3000, 2000])
    out = run(pipe, image, lmk, seconds=0.12)
    assert out.frames.shape == (1, 3, 768, 1024, 3)
    assert (out.landmarks[0, :, :, 0] < 1024).all()
    out = run(pipe, image, lmk, seconds=0.12, max_size=640)
    assert out.frames.shape[2:4] == (480, 640)
    with pytest.raises(ValueError, match="max_size"):
        run(pipe, image, lmk, max_size=10)


@pytest.mark.skipif(not dlib_available(), reason="face detection needs dlib")
def test_two_faces_animate_the_larger_one(pipe):
    import PIL.Image

    photo = np.asarray(PIL.Image.open(DEMO_PHOTO).convert("RGB"))[100:460, 420:780]  # one face, 360 px
    small = np.asarray(PIL.Image.fromarray(photo).resize((240, 240)))
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[:, :360] = photo
    canvas[60:300, 380:620] = small
    out = run(pipe, canvas)
    assert out.frames.shape == (1, 5, 360, 640, 3)
    ys, xs = np.nonzero(changed(out, canvas))
    assert xs.max() < 360  # only the larger face's mouth moved


@pytest.mark.skipif(not dlib_available(), reason="face detection needs dlib")
def test_photo_without_a_face(pipe):
    with pytest.raises(ValueError, match="no face found in identity_frame"):
        run(pipe, np.full((200, 200, 3), 128, np.uint8))


def test_old_whole_face_pipeline_fails_with_a_clear_error(pipe, tmp_path):
    path = save_pipeline_atomic(pipe, tmp_path / "p")
    config = json.loads((path / "unet" / "config.json").read_text())
    config["in_channels"] = 7  # what talking-head 0.1 saved
    (path / "unet" / "config.json").write_text(json.dumps(config))
    shutil.rmtree(path / "unet")
    old = build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=False).unet
    from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel

    ClassConditionedUNet3DModel(**{**dict(old.config), "in_channels": 7}).save_pretrained(path / "unet")
    with pytest.raises(ValueError, match="whole-face renderer .* replaced"):
        TalkingHeadPipeline.from_pretrained(path)


@pytest.mark.skipif(not dlib_available(), reason="the CLI finds the face with dlib")
def test_generate_stream_prints_the_live_real_time_factor(pipe, tmp_path, capsys):
    import soundfile as sf

    from talking_head.cli import main as cli

    sf.write(tmp_path / "speech.wav", voice_like(0.6), SR)
    pipe_dir = save_pipeline_atomic(pipe, tmp_path / "p")
    out = tmp_path / "out.mp4"
    assert cli(["generate", "--pipeline", str(pipe_dir), "--audio", str(tmp_path / "speech.wav"), "--identity",
                str(DEMO_PHOTO), "--output", str(out), "--scheduler", "dpm", "--steps", "1", "--stream",
                "--max-size", "320"]) == 0
    captured = capsys.readouterr()
    assert "streaming: 15 frames" in captured.err and "real-time factor" in captured.err
    assert "15 frames of 320x180" in captured.out and out.is_file()
