"""Dubbing mode (DESIGN.md 7.4): a video as the identity. Each output frame is the video's frame with the lower
face redrawn; the video plays forward then backward for longer audio; awkward videos work or fail clearly."""

from __future__ import annotations

import subprocess

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import REPO, voice_like
from talking_head.audio import ffmpeg_exe
from talking_head.cli import main as cli
from talking_head.face import dlib_available
from talking_head.identity import VideoIdentity, is_video
from talking_head.utils import save_pipeline_atomic
from talking_head.video import write_video

pytestmark = pytest.mark.skipif(not dlib_available(), reason="dubbing tracks the face with dlib")

SR = 16000
FACE = np.asarray(PIL.Image.open(REPO / "assets" / "demo_identity.jpg").convert("RGB"))[80:400, 440:760]  # 320²


@pytest.fixture(scope="module")
def pipe(tiny_dpm_pipe):
    return tiny_dpm_pipe


def moving_face(frames: int, size: int = 160) -> np.ndarray:
    """(T, size, size, 3): the demo face sliding right a few pixels per frame."""
    small = np.asarray(PIL.Image.fromarray(FACE).resize((size, size)))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        out[t] = np.roll(small, 2 * t, axis=1)
    return out


def dub(pipe, video, seconds=0.4, **kw):
    return pipe(voice_like(seconds), video, sample_rate=SR, num_inference_steps=1, fps=25,
                generator=torch.Generator().manual_seed(0), **kw)


def test_identity_kind_is_told_by_type():
    assert is_video("clip.MP4") and is_video("a/b.mkv") and not is_video("photo.jpg")
    assert is_video(np.zeros((3, 8, 8, 3), np.uint8)) and not is_video(np.zeros((8, 8, 3), np.uint8))
    assert is_video([np.zeros((8, 8, 3))] * 2) and not is_video([np.zeros((8, 8, 3))] * 2, batch=2)


def test_every_frame_is_the_videos_with_only_the_mouth_redrawn(pipe):
    video = moving_face(10)
    out = dub(pipe, video)
    assert out.frames.shape == (1, 10, 160, 160, 3) and out.frames_without_face == [0]
    frames = np.round(out.frames[0] * 255).astype(np.int16)
    for t in (0, 5, 9):
        diff = np.abs(frames[t] - video[t]).max(axis=2) > 2
        assert diff.any()
        ys, xs = np.nonzero(diff)
        assert ys.min() > 60  # eyes and forehead (the top of the face) are the video's own pixels
    # The box follows the face: the changed region moves right with the head.
    first = np.nonzero((np.abs(frames[0] - video[0]).max(axis=2) > 2))[1].mean()
    last = np.nonzero((np.abs(frames[9] - video[9]).max(axis=2) > 2))[1].mean()
    assert last - first > 10


def test_longer_audio_plays_the_video_forward_then_backward(pipe):
    source = VideoIdentity(moving_face(4), fps=25)
    assert [source.index(i) for i in range(9)] == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    source.close()
    out = dub(pipe, moving_face(4), seconds=0.36)  # 9 frames from 4
    assert out.frames.shape[1] == 9
    shorter = dub(pipe, moving_face(20), seconds=0.2)  # stops with the audio
    assert shorter.frames.shape[1] == 5


def test_frames_without_a_face_pass_through_and_are_counted(pipe):
    video = moving_face(10)
    video[3:6] = 128  # three grey frames: no face
    out = dub(pipe, video)
    assert out.frames_without_face == [3]
    np.testing.assert_array_equal(np.round(out.frames[0, 3:6] * 255).astype(np.uint8), video[3:6])


def test_reference_frame_is_chosen_or_given(pipe):
    video = moving_face(6)
    source = VideoIdentity(video, fps=25, reference=4)
    assert source.reference == 4
    source.close()
    with pytest.raises(ValueError, match="reference_frame"):
        dub(pipe, video, reference_frame=99)
    with pytest.raises(ValueError, match="reference_frame is for a video"):
        pipe(voice_like(0.2), video[0], sample_rate=SR, reference_frame=0)


def test_video_without_any_face_is_refused(pipe):
    with pytest.raises(ValueError, match="no face found in any frame"):
        dub(pipe, np.full((5, 96, 96, 3), 100, np.uint8))


def test_one_frame_and_large_videos(pipe, tmp_path):
    one = tmp_path / "one.mp4"
    write_video(one, moving_face(1), fps=25)
    assert dub(pipe, str(one)).frames.shape == (1, 10, 160, 160, 3)
    big = np.asarray(PIL.Image.fromarray(FACE).resize((2160, 2160)))
    out = dub(pipe, [big, big], seconds=0.08, max_size=512)
    assert out.frames.shape == (1, 2, 512, 512, 3)


def test_bad_video_files_fail_clearly_and_leave_no_mp4(pipe, tmp_path, capsys):
    audio_only = tmp_path / "audio_only.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=f=220:sample_rate=16000", "-t", "1",
                    "-c:a", "aac", str(audio_only)], check=True)
    good = tmp_path / "good.mp4"
    write_video(good, moving_face(10), fps=25)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for bad in (audio_only, cut, tmp_path / "missing.mp4"):
        with pytest.raises((ValueError, FileNotFoundError)):
            dub(pipe, str(bad))
    pipe_dir = save_pipeline_atomic(pipe, tmp_path / "p")
    speech = tmp_path / "speech.wav"
    import soundfile as sf

    sf.write(speech, voice_like(0.4), SR)
    out = tmp_path / "dubbed.mp4"
    assert cli(["generate", "--pipeline", str(pipe_dir), "--audio", str(speech), "--identity", str(audio_only),
                "--output", str(out), "--scheduler", "dpm", "--steps", "1"]) == 2
    assert "identity_video" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".dubbed.mp4*"))
    # A real file through the command line: the MP4 has the video's size and the new audio's length.
    assert cli(["generate", "--pipeline", str(pipe_dir), "--audio", str(speech), "--identity", str(good),
                "--output", str(out), "--scheduler", "dpm", "--steps", "1", "--min-size", "1",
                "--reference-frame", "2"]) == 0
    assert out.is_file() and "10 frames of 160x160" in capsys.readouterr().out


def test_a_rotated_phone_video_is_dubbed_upright(pipe, tmp_path):
    """A phone video stored sideways with a display rotation: decoded upright, tracked, dubbed at that size."""
    upright = moving_face(10, size=160)[:, :, 20:140]  # 160 high x 120 wide
    stored = tmp_path / "stored.mp4"
    write_video(stored, np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2))), fps=25)  # sideways 120x160
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i", str(stored), "-c", "copy",
                    str(rotated)], check=True)
    out = dub(pipe, str(rotated))
    assert out.frames.shape[2:4] == (160, 120) and out.frames_without_face == [0]


def test_a_variable_frame_rate_video_is_resampled_to_the_output_rate(pipe, tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, moving_face(10), fps=25)
    vfr = tmp_path / "vfr.mp4"  # frames 5-9 shown 0.2 s late: a gap in the middle, as phones write them
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(good), "-vf",
                    "setpts=N/(25*TB)+gte(N\\,5)*0.2/TB", "-fps_mode", "vfr", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(vfr)], check=True)
    source = VideoIdentity(str(vfr), fps=25)
    assert source.num_frames == 15 and source.has_face.all()  # 0.6 s at 25 fps: the gap is held, not dropped
    source.close()
    assert dub(pipe, str(vfr), seconds=0.6).frames.shape[1] == 15


def test_a_video_keeps_its_own_expression_unless_an_emotion_is_named():
    """A detected emotion is reported for a video but drawn only when asked (detected_emotion_in_video)."""
    from talking_head.constants import EMOTIONS
    from talking_head.presets import build_pipeline
    from talking_head.schedulers import scheduler_from_name

    p = build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=True)
    p.scheduler = scheduler_from_name("dpm", p.scheduler)
    p.set_progress_bar_config(disable=True)
    # Drawn as strongly as the classifier is sure (issue 38): a threshold of 0 draws whatever it hears.
    p.emotion_classifier.config.draw_threshold = 0.0
    video = moving_face(6)
    auto = dub(p, video, seconds=0.24)
    heard = EMOTIONS[int(np.argmax(auto.emotion_probs[0]))]
    assert heard != "neutral"  # (seed 0's random classifier hears "fear": the test tells the two apart)
    assert auto.emotion == ["neutral"] and auto.emotion_probs.shape == (1, 8)
    neutral = dub(p, video, seconds=0.24, emotion="neutral")
    np.testing.assert_allclose(auto.landmarks, neutral.landmarks, atol=1e-5)
    assert dub(p, video, seconds=0.24, emotion="happy").emotion == ["happy"]
    p.register_to_config(detected_emotion_in_video=True)
    assert dub(p, video, seconds=0.24).emotion == [heard]
    # A photo still shows what the classifier heard.
    p.register_to_config(detected_emotion_in_video=False)
    assert dub(p, video[0], seconds=0.24).emotion == [heard]
