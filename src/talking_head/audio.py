"""Audio input: decode any common recording into mono float32 at 16 kHz.

`load_audio` is the single entry point. It accepts a file path (wav, flac,
ogg, mp3 through soundfile; m4a/aac, video containers and anything else
through the ffmpeg binary bundled with imageio-ffmpeg), or an array/tensor
together with its sample rate. torchaudio is deliberately not used: its
decoders need CUDA-only builds (DESIGN.md section 6).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from talking_head.constants import SAMPLE_RATE

# Seconds an ffmpeg call may take before it is killed. Decoding an hour of
# audio takes a few seconds; this only guards against a hung process.
FFMPEG_TIMEOUT = 300.0

# Sample rates outside this range are almost certainly a unit mistake
# (e.g. 16 instead of 16_000), which would otherwise give silently wrong audio.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 1_000_000

# Arrays of shape (a, b): the smaller axis is the channel axis when it has at
# most this many entries (up to 7.1.4 + spares) and is shorter than the other.
MAX_CHANNELS = 16


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_rate(rate, what: str) -> int:
    """A sample rate as a plain int, or a ValueError saying what is wrong with it."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number of samples per second, got {rate!r}")
    if not math.isfinite(rate) or rate != int(rate):
        raise ValueError(f"{what} must be a whole number of Hz, got {rate!r}")
    rate = int(rate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"{what} must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz, got {rate}"
        )
    return rate


def _all_finite(x: np.ndarray) -> bool:
    """No NaN or infinity in x, without a mask as large as x (min and max propagate both)."""
    return bool(np.isfinite(x.min()) and np.isfinite(x.max()))


def resample(x: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample along the last axis with a polyphase filter (scipy.signal.resample_poly).

    The ratio is reduced by the gcd so 48 kHz -> 16 kHz is a plain 1/3 decimation
    and 44.1 kHz -> 16 kHz uses 160/441; the output has ceil(S * target / orig) samples.
    """
    orig_rate = _check_rate(orig_rate, "orig_rate")
    target_rate = _check_rate(target_rate, "target_rate")
    x = np.asarray(x, dtype=np.float32)
    if orig_rate == target_rate:
        return x
    g = math.gcd(orig_rate, target_rate)
    y = resample_poly(x, target_rate // g, orig_rate // g, axis=-1)
    return y.astype(np.float32, copy=False)


# ---------------------------------------------------------------- arrays


def _to_numpy(audio) -> np.ndarray:
    """numpy view of an array or torch tensor (torch is imported only if given one)."""
    if type(audio).__module__.startswith("torch"):
        t = audio.detach().cpu()
        if t.dtype.is_floating_point and t.dtype not in (_torch().float32, _torch().float64):
            t = t.float()  # bfloat16/float16 have no (or a lossy) numpy equivalent
        return t.numpy()
    return np.asarray(audio)


def _torch():
    import torch

    return torch


def _scale_to_float(x: np.ndarray, name: str) -> np.ndarray:
    """Integer PCM -> float in [-1, 1]; floats are kept as they are."""
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype == np.int32:
        return (x.astype(np.float64) / 2147483648.0).astype(np.float32)
    if x.dtype == np.int8:
        return x.astype(np.float32) / 128.0
    if x.dtype == np.uint8:  # 8-bit wav convention: unsigned, silence at 128
        return (x.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    raise ValueError(
        f"{name} has unsupported dtype {x.dtype}; expected float, int16, int32, int8 or uint8"
    )


def _downmix(x: np.ndarray, name: str) -> np.ndarray:
    """(S,), (C, S) or (S, C) -> (S,) by averaging channels.

    Rule for 2-D input: the channel axis is the one with at most MAX_CHANNELS
    entries that is strictly shorter than the other axis. (2, 48000) and
    (48000, 2) are both stereo; (3, 3) or (40, 50) are ambiguous and rejected.
    """
    if x.ndim == 1:
        return x
    if x.ndim == 2:
        a, b = x.shape
        if a <= MAX_CHANNELS and a < b:
            return x.mean(axis=0, dtype=np.float64).astype(np.float32)
        if b <= MAX_CHANNELS and b < a:
            return x.mean(axis=1, dtype=np.float64).astype(np.float32)
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: cannot tell channels from samples; expected "
            f"(samples,), (channels, samples) or (samples, channels) with at most "
            f"{MAX_CHANNELS} channels and more samples than channels"
        )
    raise ValueError(
        f"{name} must be 1-D (samples,) or 2-D (channels, samples) / (samples, channels), "
        f"got shape {tuple(x.shape)}"
    )


# ---------------------------------------------------------------- files


def _short_reason(stderr: str) -> str:
    """The most informative line of ffmpeg's error output."""
    # Drop ffmpeg's "[in#0 @ 0x55...]" context tags and the generic prefix, keep the cause.
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip() for ln in stderr.splitlines()]
    lines = [ln.removeprefix("Error opening input: ") for ln in lines if ln]
    specific = [ln for ln in lines if not ln.startswith("Error opening input")]
    if any("moov atom not found" in ln for ln in lines):  # an MP4/MOV cut short: its index is missing
        return "the file is truncated or incomplete (moov atom not found)"
    if not (specific or lines):
        return "ffmpeg gave no reason"
    return (specific or lines)[-1][:200]


def _check_file(path, name: str, what: str) -> Path:
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(f"{name} file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{name} path {p} is a directory, not {what}")
    return p


def _decode_soundfile(p: Path):
    """(mono float32, rate) through libsndfile, or None if it cannot read the file."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(p)) as f:
            data = f.read(dtype="float32", always_2d=True)
            rate, log = f.samplerate, f.extra_info
    except Exception:  # libsndfile raises several types; ffmpeg gets a second chance
        return None
    # A cut-off file (interrupted copy or download) still decodes, like in any
    # player, but its header announces more data than there is: say so.
    # (Streamed wavs with a placeholder size also trigger this; hence a warning.)
    short = [ln.strip() for ln in log.splitlines() if ln.startswith("data") and "should be" in ln]
    if short:
        warnings.warn(
            f"audio file {p} looks truncated (libsndfile: {short[0]}); "
            f"using the {len(data) / rate:.2f} s that are present",
            stacklevel=3,
        )
    return data.mean(axis=1, dtype=np.float64).astype(np.float32), int(rate)


def _decode_ffmpeg(p: Path, target_rate: int, name: str) -> np.ndarray:
    """First audio stream -> mono float32 at target_rate, piped from the bundled ffmpeg.

    ffmpeg's own downmix (-ac 1) weights channels unequally (stereo becomes
    0.707 * (L + R)), so the channels are piped as they are, in a WAV stream
    whose header gives their count, and averaged here like every other input.
    """
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error",
        "-i", str(p),
        "-map", "0:a:0",  # first audio stream only (ignores video and cover art)
        "-vn", "-ar", str(target_rate),
        "-f", "wav", "-acodec", "pcm_f32le", "pipe:1",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ValueError(
            f"{name} file {p} could not be decoded: ffmpeg took longer than {FFMPEG_TIMEOUT:.0f} s"
        ) from None
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "matches no streams" in stderr:
            raise ValueError(f"{name} file {p} could not be decoded: it has no audio stream")
        raise ValueError(f"{name} file {p} could not be decoded: {_short_reason(stderr)}")
    channels, data = _split_wav_stream(proc.stdout, p, name)
    usable = len(data) - len(data) % (4 * channels)  # whole frames only
    frames = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
    return frames.mean(axis=1, dtype=np.float64).astype(np.float32)


def _split_wav_stream(buf: bytes, p: Path, name: str) -> tuple[int, bytes]:
    """(channel count, sample bytes) of a WAV written to a pipe by ffmpeg.

    A piped WAV cannot be rewound to fill in its sizes, so the data chunk's
    size field is unreliable: everything after the data chunk header is taken.
    """
    if len(buf) < 12 or buf[:4] not in (b"RIFF", b"RF64") or buf[8:12] != b"WAVE":
        raise ValueError(f"{name} file {p} could not be decoded: ffmpeg produced no audio")
    pos, channels = 12, None
    while pos + 8 <= len(buf):
        chunk, size = buf[pos : pos + 4], int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(buf[pos + 10 : pos + 12], "little")
        elif chunk == b"data":
            if not channels:
                break
            return channels, buf[pos + 8 :]
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    raise ValueError(f"{name} file {p} could not be decoded: unreadable ffmpeg output")


def load_audio(
    audio,
    sample_rate: int | None = None,
    target_rate: int = SAMPLE_RATE,
    name: str = "audio",
) -> np.ndarray:
    """Decode `audio` to a float32 mono waveform of shape (S,) at `target_rate` Hz.

    audio: a path (str or os.PathLike) to any file soundfile or ffmpeg can decode,
        including the audio track of a video; or a numpy array / torch tensor of
        shape (S,), (C, S) or (S, C) (see `_downmix` for the rule) with
        `sample_rate` given. Integer PCM (int16, int32, int8, uint8) is scaled to
        [-1, 1]; float samples are kept as they are. Channels are averaged.
    sample_rate: rate of an array/tensor input; required for those, ignored for
        files (their header is authoritative).
    name: how the input is called in error messages.
    """
    target_rate = _check_rate(target_rate, "target_rate")
    where = ""  # " file PATH" for a file input, so every error names the file
    if isinstance(audio, (str, os.PathLike)):
        p = _check_file(audio, name, "an audio file")
        where = f" file {p}"
        if p.stat().st_size == 0:
            raise ValueError(f"{name} file {p} could not be decoded: the file is empty (0 bytes)")
        decoded = _decode_soundfile(p)
        if decoded is not None:
            x, rate = decoded
            if x.size:
                x = resample(x, rate, target_rate)
        else:
            x = _decode_ffmpeg(p, target_rate, name)
    elif isinstance(audio, bytes):
        raise ValueError(f"{name} given as bytes; pass a file path or a decoded array instead")
    else:
        if sample_rate is None:
            raise ValueError(
                f"{name} is an array: pass its sample_rate (e.g. sample_rate=16000) as well"
            )
        rate = _check_rate(sample_rate, "sample_rate")
        try:
            x = _to_numpy(audio)
        except Exception as err:
            raise ValueError(
                f"{name} must be a file path, numpy array or torch tensor, "
                f"got {type(audio).__name__}"
            ) from err
        if x.dtype == object or x.ndim == 0:
            raise ValueError(
                f"{name} must be a file path, numpy array or torch tensor of samples, "
                f"got {type(audio).__name__} of shape {tuple(x.shape)}"
            )
        x = _downmix(_scale_to_float(x, name), name)
        if x.size and not _all_finite(x):
            raise ValueError(f"{name} contains NaN or infinite samples")
        if x.size:
            peak = max(float(x.max()), -float(x.min()))  # no |x| copy of a long recording
            if peak > 2.0:  # common mistake: int16 values stored in a float array
                warnings.warn(
                    f"{name} float samples reach {peak:.3g}, far outside [-1, 1]; "
                    "integer PCM stored as float? Divide by 32768 for int16 values.",
                    stacklevel=2,
                )
            x = resample(x, rate, target_rate)
    if x.size == 0:
        raise ValueError(f"{name} is empty" + (f": {p} holds no audio samples" if where else ""))
    if not _all_finite(x):
        raise ValueError(f"{name}{where} contains NaN or infinite samples")
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------- probing

_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+.*?:\s*(Video|Audio):(.*)$", re.MULTILINE)
# "1280x720" but not the hex codec tag "0x31637661" (first digit never 0).
_SIZE = re.compile(r"(?<![\w])([1-9]\d*)x([1-9]\d*)(?![\w])")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*fps\b")
_TBR = re.compile(r"(\d+(?:\.\d+)?)\s*tbr\b")  # fallback when no fps is printed
_RATE = re.compile(r"(\d+)\s*Hz")


def probe_media(path) -> dict:
    """Stream facts of a media file, parsed from `ffmpeg -i` (imageio-ffmpeg has no ffprobe).

    Returns {"duration": seconds or None, "has_audio", "has_video",
    "audio_rate": Hz or None, "video_size": (w, h) or None, "fps": float or None},
    describing the first audio and first video stream. Embedded cover art is
    not counted as video.
    """
    p = _check_file(path, "media", "a media file")
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(p)]
    try:
        # Without an output file ffmpeg exits 1 after printing the input's description.
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ValueError(f"media file {p} could not be probed: ffmpeg timed out") from None
    text = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        raise ValueError(f"media file {p} could not be read: {_short_reason(text)}")

    info = {"duration": None, "has_audio": False, "has_video": False,
            "audio_rate": None, "video_size": None, "fps": None}  # fmt: skip
    m = _DURATION.search(text)
    if m:
        h, mi, s = m.groups()
        info["duration"] = int(h) * 3600 + int(mi) * 60 + float(s)
    for kind, rest in _STREAM.findall(text):
        if kind == "Video" and "attached pic" not in rest and not info["has_video"]:
            info["has_video"] = True
            size = _SIZE.search(rest)
            if size:
                info["video_size"] = (int(size.group(1)), int(size.group(2)))
            fps = _FPS.search(rest) or _TBR.search(rest)
            if fps:
                info["fps"] = float(fps.group(1))
        elif kind == "Audio" and not info["has_audio"]:
            info["has_audio"] = True
            rate = _RATE.search(rest)
            if rate:
                info["audio_rate"] = int(rate.group(1))
    return info


def frame_levels_db(audio, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """RMS level in dB (re full scale 1.0) of the audio of each video frame, [f / fps, (f + 1) / fps);
    frames past the end of the audio are -inf (silence)."""
    wave = np.asarray(audio, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("audio contains NaN or infinite values")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if int(num_frames) != num_frames or num_frames < 0:
        raise ValueError(f"num_frames must be a non-negative integer, got {num_frames!r}")
    num_frames = int(num_frames)
    edges = np.round(np.arange(num_frames + 1) * sample_rate / float(fps)).astype(np.int64)
    edges = np.clip(edges, 0, len(wave))
    cumsum = np.concatenate([[0.0], np.cumsum(wave * wave)])
    counts = np.diff(edges)
    energy = np.diff(cumsum[edges])
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_square = np.where(counts > 0, energy / np.maximum(counts, 1), 0.0)
        return 10.0 * np.log10(np.maximum(mean_square, 0.0))
