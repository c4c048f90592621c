"""Video output: stream RGB frames into an H.264 MP4 with the speech muxed in as AAC.

Frames go to the bundled ffmpeg (imageio-ffmpeg) through a pipe as they are
produced, so a long video never has to fit in memory. The file is written
under a temporary name next to the target and renamed into place only when
ffmpeg has finished successfully: an interrupted or failed write never leaves
a half file and never destroys a previous good file at the same path.

ffmpeg is driven with subprocess directly rather than through
imageio_ffmpeg.write_frames, because write_frames neither reports ffmpeg's
exit status nor captures its error output; both are needed to tell a good
file from a broken one.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from talking_head.audio import _check_rate, ffmpeg_exe, load_audio
from talking_head.constants import SAMPLE_RATE
from talking_head.utils import make_public

# Seconds ffmpeg may need after the last frame to flush its encoder queue and
# mux the audio; only a hung process takes anywhere near this long.
FINISH_TIMEOUT = 120.0

# Container per file suffix; the MP4 family gets `+faststart` (index at the
# front, so browsers start playing before the whole file has arrived).
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

_FLOAT_TOLERANCE = 1e-3

# Sample rates the AAC format can signal; audio at any other rate is resampled.
_AAC_RATES = {
    7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000
}


def _frames_to_uint8(frames, name: str = "frames") -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3), uint8 or float in [0, 1] -> uint8 (N, H, W, 3)."""
    if type(frames).__module__.startswith("torch"):
        frames = frames.detach().cpu()
        frames = (frames.float() if frames.dtype.is_floating_point else frames).numpy()
    x = np.asarray(frames)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(
            f"{name} must be RGB of shape (H, W, 3) or (N, H, W, 3), got shape {tuple(x.shape)}"
        )
    if x.ndim == 3:
        x = x[None]
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name} have an empty frame size, shape {tuple(x.shape)}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        if x.size and (x.min() < -_FLOAT_TOLERANCE or x.max() > 1 + _FLOAT_TOLERANCE):
            raise ValueError(
                f"{name} float values must be in [0, 1], got range "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )
        return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {x.dtype}")


def _remove(path) -> None:
    if path is not None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


class VideoWriter:
    """Write frames to an H.264/AAC video, as a context manager.

        with VideoWriter("out.mp4", fps=25, audio=wav, sample_rate=16000) as w:
            for clip in clips:
                w.write(clip)        # (N, H, W, 3) or (H, W, 3)

    H.264 in yuv420p halves the chroma resolution, so it needs even frame
    sides: a frame with an odd width or height gets its last column/row
    repeated once (the output is then one pixel wider/taller). Every other
    size is encoded as is (no rounding up to 16-pixel macro blocks, no
    rescaling) unless `min_size` is given: frames whose short side is smaller
    are then scaled up (Lanczos, inside ffmpeg, keeping the aspect ratio) so
    that it is `min_size`, for display; the input frames stay as they are.
    `crf` is x264's quality (0 lossless .. 51 worst, 18 is visually
    lossless). The audio (anything `load_audio` accepts; an array is taken at
    `sample_rate`) is downmixed to mono and encoded as AAC; it is kept whole,
    so when its length differs from the frames' by more than a frame a
    warning is issued and the file lasts as long as the longer stream.
    If an exception leaves the `with` block, nothing is written to `path`.
    """

    def __init__(self, path, fps: float, audio=None, sample_rate: int = SAMPLE_RATE, crf: int = 18,
                 min_size: int | None = None):
        self.path = Path(os.fspath(path))
        fmt = _FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"video path {self.path} must end in one of {', '.join(_FORMATS)}"
            )
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"video output folder does not exist: {self.path.parent}")
        if self.path.is_dir():
            raise ValueError(f"video path {self.path} is a directory")
        real = (int, float, np.integer, np.floating)
        if isinstance(fps, bool) or not isinstance(fps, real) or not (
            math.isfinite(fps) and fps > 0
        ):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if (
            isinstance(crf, bool)
            or not isinstance(crf, real)
            or crf != int(crf)
            or not 0 <= crf <= 51
        ):
            raise ValueError(f"crf must be an integer from 0 to 51, got {crf!r}")
        if min_size is not None and (isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer))
                                     or min_size < 2):
            raise ValueError(f"min_size must be a whole number of pixels >= 2, got {min_size!r}")
        self.fps = float(fps)
        self.crf = int(crf)
        self.min_size = None if min_size is None else int(min_size)
        self._format = fmt
        self._audio = None
        self._audio_rate = None
        if audio is not None:
            rate = _check_rate(sample_rate, "sample_rate")
            self._audio = load_audio(audio, sample_rate=rate, target_rate=rate, name="audio")
            self._audio_rate = rate
        self._proc = None
        self._stderr = None
        self._tmp_video = None
        self._tmp_audio = None
        self._size = None  # (H, W) of the frames as given
        self.frame_count = 0
        self._closed = False
        self._done = False  # True once the file is in place

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the frames written so far (None before the first)."""
        return self._size

    # -------------------------------------------------------------- process

    def _start(self, h: int, w: int) -> None:
        fd, self._tmp_video = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent
        )
        os.close(fd)
        cmd = [
            ffmpeg_exe(), "-nostdin", "-y", "-hide_banner", "-v", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{w + w % 2}x{h + h % 2}", "-r", _rate_arg(self.fps), "-i", "pipe:0",
        ]  # fmt: skip
        if self._audio is not None:
            import soundfile as sf

            fd, self._tmp_audio = tempfile.mkstemp(prefix="talking_head_", suffix=".wav")
            os.close(fd)
            sf.write(self._tmp_audio, self._audio, self._audio_rate, subtype="FLOAT")
            cmd += ["-i", self._tmp_audio, "-map", "0:v:0", "-map", "1:a:0"]
            cmd += ["-c:a", "aac", "-b:a", "128k"]
            if self._audio_rate not in _AAC_RATES:
                cmd += ["-ar", "48000"]  # e.g. 192 kHz or 1 kHz audio: AAC cannot store it
        else:
            cmd += ["-map", "0:v:0"]
        short = min(h + h % 2, w + w % 2)
        if self.min_size is not None and short < self.min_size:
            scale = self.min_size / short
            out_w, out_h = (2 * round(side * scale / 2) for side in (w + w % 2, h + h % 2))  # even sides
            cmd += ["-vf", f"scale={out_w}:{out_h}:flags=lanczos"]
        cmd += ["-c:v", "libx264", "-preset", "medium", "-crf", str(self.crf)]
        cmd += ["-pix_fmt", "yuv420p"]
        if self._format in ("mp4", "mov"):
            cmd += ["-movflags", "+faststart"]
        cmd += ["-f", self._format, self._tmp_video]
        # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
        )

    def _ffmpeg_error(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return text[-500:] or "no error output"

    def _abort(self) -> None:
        """Stop ffmpeg and delete every temporary file; `path` is left untouched."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        _remove(self._tmp_video)
        _remove(self._tmp_audio)
        self._tmp_video = self._tmp_audio = None
        self._closed = True

    # -------------------------------------------------------------- public

    def write(self, frames) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3), uint8 or float in [0, 1]."""
        if self._closed:
            raise ValueError(f"video writer for {self.path} is already closed")
        x = _frames_to_uint8(frames)
        h, w = x.shape[1:3]
        if self._size is None:
            self._size = (h, w)
            self._start(h, w)
        elif (h, w) != self._size:
            raise ValueError(
                f"frames must all have the same size: got {w}x{h} after "
                f"{self._size[1]}x{self._size[0]}"
            )
        if h % 2 or w % 2:
            x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(x).tobytes())
        except (BrokenPipeError, OSError, ValueError):
            self._proc.wait()
            err = self._ffmpeg_error()
            self._abort()
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {err}") from None
        self.frame_count += len(x)

    def close(self) -> Path:
        """Finish encoding, mux the audio and move the file into place; returns the path."""
        if self._done:
            return self.path
        if self._closed:
            raise ValueError(f"video writer for {self.path} was aborted; nothing was written")
        if self.frame_count == 0:
            self._abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self._proc.wait(timeout=FINISH_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._abort()
            raise RuntimeError(
                f"ffmpeg did not finish {self.path} within {FINISH_TIMEOUT:.0f} s"
            ) from None
        if rc != 0:
            err = self._ffmpeg_error()
            self._abort()
            raise RuntimeError(f"ffmpeg failed to write {self.path} (exit {rc}): {err}")
        make_public(self._tmp_video)
        os.replace(self._tmp_video, self.path)
        self._tmp_video = None
        self._done = True
        self._proc = None
        self._abort()  # only temporary files and handles are left to clean up
        if self._audio is not None:
            video_s = self.frame_count / self.fps
            audio_s = len(self._audio) / self._audio_rate
            if abs(video_s - audio_s) > 1.0 / self.fps:
                warnings.warn(
                    f"{self.path}: {self.frame_count} frames last {video_s:.2f} s at "
                    f"{self.fps:g} fps but the audio lasts {audio_s:.2f} s",
                    stacklevel=2,
                )
        return self.path

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def __del__(self):
        # A writer dropped without close() must not leave ffmpeg or temp files behind.
        if not getattr(self, "_closed", True):
            try:
                self._abort()
            except Exception:
                pass


def _rate_arg(fps: float) -> str:
    """fps as an exact ffmpeg rational (29.97 -> 2997/100, 30000/1001 stays close)."""
    from fractions import Fraction

    f = Fraction(fps).limit_denominator(100_000)
    return f"{f.numerator}/{f.denominator}"


def write_video(path, frames, fps, audio=None, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write `frames` - an array (N, H, W, 3) or any iterable of frames / batches - to `path`."""
    with VideoWriter(path, fps, audio=audio, sample_rate=sample_rate) as writer:
        if isinstance(frames, np.ndarray) or type(frames).__module__.startswith("torch"):
            if frames.ndim == 4:
                for start in range(0, len(frames), 32):  # bounded float->uint8 temporaries
                    writer.write(frames[start : start + 32])
            else:
                writer.write(frames)
        else:
            for item in frames:
                writer.write(item)
    return writer.path
