"""The MP4 writer: streaming, durations, audio muxing, atomic replacement, bad inputs."""

import os
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from talking_head.audio import load_audio, probe_media
from talking_head.video import VideoWriter, write_video

SPEECH = Path(__file__).resolve().parents[1] / "assets" / "speech_demo.wav"


def tone(seconds, rate=16000, freq=440.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def colour_frames(n, h=48, w=64):
    """Frame i is a flat colour that encodes i, so decoded frames can be identified."""
    out = np.zeros((n, h, w, 3), np.uint8)
    out[..., 0] = (np.arange(n) * 37 % 200 + 20)[:, None, None]
    out[..., 1] = 128
    return out


def read_back(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader])
    return frames


@pytest.mark.parametrize("fps,n", [(25, 50), (30, 37), (12.5, 9)])
def test_durations_match_audio(tmp_path, fps, n):
    path = write_video(tmp_path / "v.mp4", colour_frames(n), fps, audio=tone(n / fps))
    info = probe_media(path)
    assert info["has_video"] and info["has_audio"]
    assert info["video_size"] == (64, 48) and info["fps"] == pytest.approx(fps)
    assert abs(info["duration"] - n / fps) <= 1 / fps
    assert abs(len(load_audio(path)) / 16000 - n / fps) <= 1 / fps
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]


def test_streaming_writes_frames_in_order(tmp_path):
    frames = colour_frames(20)
    path = tmp_path / "stream.mp4"
    with VideoWriter(path, fps=25) as writer:
        writer.write(frames[:1][0])  # a single (H, W, 3) frame
        # ffmpeg is already encoding into a temporary file next to the target.
        assert [p for p in os.listdir(tmp_path) if p.endswith(".part")]
        assert not path.exists()
        writer.write(frames[1:8])
        writer.write(frames[8:] / 255.0)  # float batches in [0, 1]
        assert writer.frame_count == 20
    assert writer.close() == path  # closing twice is harmless
    back = read_back(path)
    assert back.shape == frames.shape
    assert np.abs(back[..., 0].mean(axis=(1, 2)) - frames[..., 0].mean(axis=(1, 2))).max() < 4
    assert probe_media(path)["has_audio"] is False


def test_odd_sizes_are_padded_by_one_pixel(tmp_path):
    frames = np.zeros((5, 33, 17, 3), np.uint8)
    frames[:, :, -1] = 255  # last column white: the padding repeats it
    path = write_video(tmp_path / "odd.mp4", frames, 10)
    assert probe_media(path)["video_size"] == (18, 34)
    back = read_back(path)
    assert back.shape == (5, 34, 18, 3)
    assert back[:, 5:-5, -1].mean() > 200 and back[:, 5:-5, :8].mean() < 30


def test_audio_from_file_and_generator_of_frames(tmp_path):
    seconds = len(load_audio(SPEECH)) / 16000
    n = round(seconds * 25)
    frames = (colour_frames(1)[0] for _ in range(n))
    path = write_video(tmp_path / "speech.mp4", frames, 25, audio=SPEECH)
    info = probe_media(path)
    assert info["has_audio"] and abs(info["duration"] - seconds) <= 1 / 25


def test_length_mismatch_warns(tmp_path):
    with pytest.warns(UserWarning, match="audio lasts"):
        write_video(tmp_path / "m.mp4", colour_frames(10), 25, audio=tone(2.0))


def test_exception_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous good video")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, fps=25, audio=tone(1.0)) as writer:
            writer.write(colour_frames(10))
            tmp_audio = writer._tmp_audio
            assert tmp_audio is not None and os.path.exists(tmp_audio)
            raise RuntimeError("boom")
    assert path.read_bytes() == b"previous good video"
    assert os.listdir(tmp_path) == ["keep.mp4"]
    assert not os.path.exists(tmp_audio)
    # A successful write does replace it.
    write_video(path, colour_frames(3), 25)
    assert probe_media(path)["has_video"] and os.listdir(tmp_path) == ["keep.mp4"]


def test_bad_frames_abort_cleanly(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="same size"):
        with VideoWriter(path, fps=25) as writer:
            writer.write(colour_frames(2, 48, 64))
            writer.write(colour_frames(2, 48, 66))
    assert os.listdir(tmp_path) == []
    for frames, msg in [
        (np.zeros((2, 48, 64), np.uint8), r"shape \(2, 48, 64\)"),
        (np.zeros((2, 48, 64, 4), np.uint8), r"\(N, H, W, 3\)"),
        (np.full((2, 48, 64, 3), 2.0), r"\[0, 1\]"),
        (np.full((2, 48, 64, 3), np.nan), "NaN"),
        (np.zeros((2, 48, 64, 3), np.int64), "dtype"),
    ]:
        with pytest.raises(ValueError, match=msg):
            write_video(path, frames, 25)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", np.zeros((0, 48, 64, 3), np.uint8), 25)
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", fps=25):
            pass
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        VideoWriter(tmp_path / "missing" / "v.mp4", fps=25)
    for fps in (0, -5, float("nan"), float("inf"), "25"):
        with pytest.raises(ValueError, match="fps"):
            VideoWriter(tmp_path / "v.mp4", fps=fps)
    with pytest.raises(ValueError, match="must end in"):
        VideoWriter(tmp_path / "v.gif", fps=25)
    for crf in (80, -1, 17.5, "18"):
        with pytest.raises(ValueError, match="crf"):
            VideoWriter(tmp_path / "v.mp4", fps=25, crf=crf)
    with pytest.raises(ValueError, match="audio contains NaN"):
        VideoWriter(tmp_path / "v.mp4", fps=25, audio=np.full(100, np.nan, np.float32))
    with pytest.raises(ValueError, match="sample_rate"):
        VideoWriter(tmp_path / "v.mp4", fps=25, audio=tone(1.0), sample_rate=0)
    writer = VideoWriter(tmp_path / "v.mp4", fps=25)
    writer.write(colour_frames(1))
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(colour_frames(1))
    assert sorted(os.listdir(tmp_path)) == ["v.mp4"]


def test_ffmpeg_dying_mid_stream(tmp_path):
    path = tmp_path / "crash.mp4"
    path.write_bytes(b"old")
    writer = VideoWriter(path, fps=25)
    writer.write(colour_frames(2))
    writer._proc.kill()  # simulate ffmpeg crashing
    writer._proc.wait()
    with pytest.raises(RuntimeError, match="ffmpeg"):
        for _ in range(50):  # the pipe may accept a little more before it breaks
            writer.write(colour_frames(8))
        writer.close()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["crash.mp4"]


@pytest.mark.parametrize("rate", [1000, 192000])
def test_audio_rates_aac_cannot_store(tmp_path, rate):
    audio = tone(0.4, rate, 200.0)
    path = write_video(tmp_path / "r.mp4", colour_frames(10), 25, audio=audio, sample_rate=rate)
    info = probe_media(path)
    assert info["has_audio"] and info["audio_rate"] == 48000
    assert abs(info["duration"] - 0.4) <= 1 / 25


def test_min_size_scales_small_frames_up_for_viewing(tmp_path):
    frames = np.zeros((4, 32, 48, 3), np.uint8)
    frames[:, :, :24] = 255  # left half white
    path = tmp_path / "small.mp4"
    with VideoWriter(path, fps=10, min_size=256) as writer:
        writer.write(frames)
    assert probe_media(path)["video_size"] == (384, 256)  # short side 256, aspect kept
    back = read_back(path)
    assert back[:, :, :180].mean() > 200 and back[:, :, 204:].mean() < 30
    big = tmp_path / "big.mp4"
    with VideoWriter(big, fps=10, min_size=16) as writer:  # already larger: left alone
        writer.write(frames)
    assert probe_media(big)["video_size"] == (48, 32)
    with pytest.raises(ValueError, match="min_size must be a whole number"):
        VideoWriter(tmp_path / "x.mp4", fps=10, min_size=0)


def test_written_file_gets_the_umask_mode_not_the_temp_files_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_video(tmp_path / "mode.mp4", np.zeros((2, 16, 16, 3), np.uint8), 10)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
