"""`talking-head train`'s checks of its input, before any training: each bad input is one clear line.

A usable video: readable, at least MIN_SECONDS long, with speech (an audio track or a sibling .wav that is
not silent), and one face on most frames (none, or two people, is refused). The output folder must be
empty, absent, or a run of this command (see `talking_head.train_command.command`), and the disk must hold
the prepared frames and a few checkpoints.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talking_head.cli_common import UsageError
from talking_head.constants import SAMPLE_RATE

MIN_SECONDS = 10.0  # per video: below this the held-out tail (10 %) is under a second
RECOMMENDED_SECONDS = 60.0
SILENT_DBFS = -50.0  # the whole file's RMS below this: no speech
ACTIVE_DBFS = -45.0  # a 0.5 s window louder than this (and within 35 dB of the loudest) has sound
MIN_ACTIVE_SHARE = 0.2
FACE_SAMPLES = 8  # frames sampled evenly over a video for the face check
SECOND_FACE_MIN_WIDTH = 0.4  # a second face counts when at least this share of the largest face's width
DISK_MARGIN_MB = 300  # checkpoints, logs, the pipeline and the report
MB_PER_VIDEO_SECOND = 1.2  # prepared frames: 25 fps x ~22 kB (JPEG 256x256), with a margin


@dataclass
class VideoInfo:
    path: Path
    seconds: float
    audio: Path | None  # a sibling audio file, or None for the video's own track


def check_video(path) -> VideoInfo:
    """The facts of one usable video, or UsageError saying what is wrong with it."""
    from talking_head.audio import probe_media
    from talking_head.data.sources import sibling_audio

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file")
    if p.is_dir():
        raise UsageError(f"{p} is a folder; give the video files themselves")
    try:
        info = probe_media(p)
    except (ValueError, OSError):
        raise UsageError(f"{p} is not a video file (ffmpeg cannot read it)") from None
    if not info["has_video"]:
        raise UsageError(f"{p} is not a video (it has no video stream)")
    seconds = float(info["duration"] or 0.0)
    if seconds < MIN_SECONDS:
        raise UsageError(f"{p} lasts {seconds:.1f} s; a video of at least {MIN_SECONDS:g} s is needed "
                         f"({RECOMMENDED_SECONDS:g} s or more recommended)")
    audio = sibling_audio(p)
    if audio is None and not info["has_audio"]:
        raise UsageError(f"{p} has no speech: no audio track, and no {p.stem}.wav beside it")
    check_speech(audio or p, p)
    check_one_face(p, seconds)
    return VideoInfo(p, seconds, audio)


def speech_levels(waveform: np.ndarray, window_s: float = 0.5) -> tuple[float, float]:
    """(RMS of the whole waveform in dBFS, share of `window_s` windows with sound)."""
    x = np.asarray(waveform, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0
    total_db = 20 * np.log10(max(rms, 1e-10))
    n = max(1, int(window_s * SAMPLE_RATE))
    windows = x[: len(x) // n * n].reshape(-1, n) if len(x) >= n else x[None]
    db = 20 * np.log10(np.maximum(np.sqrt(np.mean(windows ** 2, axis=1)), 1e-10))
    active = (db > ACTIVE_DBFS) & (db > db.max() - 35.0)
    return total_db, float(active.mean())


def check_speech(source, video: Path) -> None:
    from talking_head.audio import load_audio

    try:
        waveform = load_audio(str(source), name="audio")
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"{video}: its audio cannot be read ({err})") from None
    total_db, active = speech_levels(waveform)
    if total_db < SILENT_DBFS:
        raise UsageError(f"{video} has no speech: its audio is silent ({total_db:.0f} dBFS)")
    if active < MIN_ACTIVE_SHARE:
        raise UsageError(f"{video} has sound on only {100 * active:.0f} % of its length; the person must speak "
                         f"throughout (at least {100 * MIN_ACTIVE_SHARE:.0f} %)")


def count_faces(detector, frame: np.ndarray) -> int:
    """Faces dlib finds on `frame` (those at least SECOND_FACE_MIN_WIDTH of the largest face's width)."""
    from PIL import Image

    if detector._detector is None:
        detector._load()
    h, w = frame.shape[:2]
    factor = min(1.0, detector.max_side / max(h, w))
    small = frame if factor == 1.0 else np.asarray(
        Image.fromarray(frame).resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BILINEAR))
    rects = []
    for level in range(detector.upsample + 1):
        rects = detector._detector(np.ascontiguousarray(small), level)
        if len(rects):
            break
    widths = [r.width() for r in rects]
    return sum(wd >= SECOND_FACE_MIN_WIDTH * max(widths) for wd in widths) if widths else 0


def check_one_face(video: Path, seconds: float) -> None:
    """Refuse a video with no face, or two people, on most of FACE_SAMPLES evenly spaced frames."""
    from talking_head.data.process import PrepareError, iter_video_frames
    from talking_head.face import FaceLandmarkDetector, dlib_available, INSTALL_HINT

    if not dlib_available():
        raise ImportError(INSTALL_HINT.split(", or pass")[0])
    detector = FaceLandmarkDetector(upsample=1, max_side=800)
    try:
        counts = [count_faces(detector, f) for f in iter_video_frames(video, FACE_SAMPLES / seconds)]
    except PrepareError as err:
        raise UsageError(f"{video} cannot be decoded ({err})") from None
    if not counts:
        raise UsageError(f"{video} has no decodable frames")
    none, several = sum(c == 0 for c in counts), sum(c >= 2 for c in counts)
    if none > len(counts) / 2:
        raise UsageError(f"{video}: no face found on {none} of {len(counts)} frames sampled over its length; "
                         "the video must show one face, frontal, throughout")
    if several >= len(counts) / 2:
        raise UsageError(f"{video} shows two or more faces on {several} of {len(counts)} sampled frames; "
                         "the video must show one person")


def check_disk(folder: Path, video_seconds: float) -> None:
    """Refuse when the disk under `folder` cannot hold the prepared frames and the checkpoints."""
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free / 1e6
    need_mb = DISK_MARGIN_MB + MB_PER_VIDEO_SECOND * video_seconds
    if free_mb < need_mb:
        raise UsageError(f"not enough free disk space for {folder}: {free_mb:.0f} MB free, about "
                         f"{need_mb:.0f} MB needed")


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
