"""Worker-side work of `talking-head prepare`: decode, detect, crop, write one source.

Each function here runs in a worker process (or inline when --workers 1) and
takes/returns only plain picklable values. A video source goes through three
stages, driven by talking_head.data.prepare:

1. `probe_video`: ffmpeg -i facts, the audio source check (fail fast: a video
   without audio is rejected before any face detection is spent on it) and
   the expected frame count at the target fps.
2. `detect_chunk`: decode frames [start, stop) at the target fps and detect
   dlib's 68 landmarks on each, in source-frame pixels (NaN when no face). A
   long video is cut into one chunk per worker so both cores work on it; each
   chunk decodes from the start of the file but drops the frames before its
   start inside ffmpeg (an ffmpeg seek would not reproduce the fps filter's
   frame grid exactly; decoding alone costs ~2 ms per 720p frame, detection
   ~13 ms).
3. `finalize_video`: smooth the crop boxes over the whole source, decode again,
   crop every frame with talking_head.face.crop_face, write JPEG frames,
   landmarks in crop pixels, the aligned 16 kHz audio and meta.json into a
   temporary folder per output clip, and rename the folders into place.

Face tracking: after a face is found, the next frame is searched only in a
region of 1.3 crop sides around the previous crop box, downscaled so the face
is ~95 px (dlib's HOG detector needs >= ~80 px; no upsampling then). This
keeps following the same person and makes detection 2-3x faster: on this
machine 41 -> 13 ms per frame on the 1280x720 clip (full-frame search:
downscale to 800 px, upsample when needed) and 12 -> 8 ms on a 256x256 clip.
When the region search fails, the whole frame is searched; only when that
also fails is the frame flagged as having no face (NaN landmarks).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS, NULL_EMOTION, NUM_LANDMARKS, SAMPLE_RATE
from talking_head.data import layout

# Region searched around the previous frame's crop box, in crop sides, and the size the
# previous crop side is scaled to there (dlib's HOG detector finds faces of >= ~80 px;
# a 180 px crop side puts the face at ~95 px, found without upsampling).
ROI_SCALE = 1.3
ROI_CROP_SIDE_PX = 180
# Audio files accepted as the sibling of a video (same stem), in order of preference.
SIBLING_AUDIO_EXTS = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".aac")
# More than this difference between video and audio length is reported as a warning.
LENGTH_MISMATCH_WARN_S = 0.5


class PrepareError(Exception):
    """A source that cannot be prepared; the message is the reason recorded in failures.jsonl."""


# ---------------------------------------------------------------- decoding


def fps_arg(fps: float) -> str:
    from fractions import Fraction

    f = Fraction(float(fps)).limit_denominator(1001)
    return f"{f.numerator}/{f.denominator}"


def frame_limit(fps: float, max_seconds=None, stop: int | None = None) -> int | None:
    """How many frames at `fps` to decode: frames k with k / fps < max_seconds, and k < stop."""
    limits = [stop] if stop is not None else []
    if max_seconds is not None:
        limits.append(int(math.ceil(float(max_seconds) * fps - 1e-9)))
    return min(limits) if limits else None


def iter_video_frames(path, fps: float, start: int = 0, stop: int | None = None, max_seconds=None):
    """Yield uint8 RGB frames (H, W, 3) number start..stop-1 of `path` resampled to `fps`.

    ffmpeg's fps filter keeps, for each output time k / fps, the source frame
    shown at that time, so frame k covers [k / fps, (k + 1) / fps) of the
    audio - also for variable-frame-rate phone videos. Frames before `start`
    are dropped inside ffmpeg (select filter, after the fps filter, so the
    frame grid is that of a full decode; verified frame-exact) and never
    converted to RGB or piped, which makes skipping cheap.
    """
    import imageio_ffmpeg

    stop = frame_limit(fps, max_seconds, stop)
    vf = f"fps={fps_arg(fps)}"
    out = ["-an", "-sn", "-dn"]
    if start > 0:
        vf += f",select=gte(n\\,{int(start)})"
        out += ["-fps_mode", "passthrough"]  # keep the selected frames' times: no padding frames
    out = ["-vf", vf] + out
    if stop is not None:
        out += ["-frames:v", str(max(0, stop - start))]
        if stop <= start:
            return
    try:
        gen = imageio_ffmpeg.read_frames(str(path), input_params=["-nostdin"], output_params=out)
        meta = next(gen)
    except Exception as err:  # IOError with ffmpeg's stderr
        raise PrepareError(f"video could not be decoded: {_last_line(err)}") from None
    w, h = meta["size"]
    try:
        for buf in gen:
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    except RuntimeError as err:
        raise PrepareError(f"video decoding failed mid-way: {_last_line(err)}") from None
    finally:
        gen.close()


def _last_line(err) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("===")]
    informative = [ln for ln in lines if "rror" in ln or "nvalid" in ln or "not" in ln]
    return ((informative or lines or ["unknown ffmpeg error"])[-1])[:200]


# ---------------------------------------------------------------- stage 1: probe


def _audio_source(job: dict) -> str | None:
    """The separate audio file to use (checked to be readable audio), or None for the video's track."""
    from talking_head.audio import probe_media

    if not job.get("audio"):
        return None
    p = Path(job["audio"])
    if not p.is_file():
        raise PrepareError(f"audio file is missing: {p}")
    if p.stat().st_size == 0:
        raise PrepareError(f"audio file is empty (0 bytes): {p}")
    try:
        info = probe_media(p)
    except ValueError as err:
        raise PrepareError(f"audio file {p} is not readable (ffmpeg: {str(err).split(': ', 1)[-1]})") from None
    if not info["has_audio"]:
        raise PrepareError(f"audio file {p} has no audio stream")
    return str(p)


def probe_video(job: dict) -> dict:
    """Check a video source before any detection; returns facts for planning its chunks."""
    from talking_head.audio import probe_media

    path = Path(job["video"])
    if not path.is_file():
        raise PrepareError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise PrepareError("the file is empty (0 bytes)")
    try:
        info = probe_media(path)
    except ValueError as err:
        why = str(err).split(": ", 1)[-1]
        raise PrepareError(f"not a readable video file (ffmpeg: {why})") from None
    if not info["has_video"]:
        raise PrepareError("the file has no video stream")
    audio = _audio_source(job)
    if audio is None and not info["has_audio"]:
        stem = path.with_suffix("")
        raise PrepareError(
            f"no audio: the video has no audio track and there is no sibling audio file "
            f"({stem.name}.wav / {', '.join(e for e in SIBLING_AUDIO_EXTS[1:])})"
        )
    fps = float(job["fps"]) if job.get("fps") else (info["fps"] or 25.0)
    duration = info["duration"]
    if job.get("max_seconds") and duration:
        duration = min(duration, float(job["max_seconds"]))
    est = int(math.ceil(duration * fps)) if duration else None
    return {
        "fps": fps,
        "duration": duration,
        "est_frames": est,
        "source_fps": info["fps"],
        "source_size": list(info["video_size"]) if info["video_size"] else None,
        "audio_file": audio,
    }


# ---------------------------------------------------------------- stage 2: detect


class FaceTracker:
    """Per-frame 68-point detection with a search region that follows the face."""

    def __init__(self):
        from talking_head.face import FaceLandmarkDetector

        self.full = FaceLandmarkDetector(upsample=1, max_side=800)
        self.roi = FaceLandmarkDetector(upsample=1, max_side=ROI_CROP_SIDE_PX)
        self.box = None

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        from talking_head.face import face_crop_box

        h, w = frame.shape[:2]
        pts = None
        if self.box is not None:
            cx, cy, side = self.box
            r = ROI_SCALE * side / 2
            x0, y0 = max(0, int(cx - r)), max(0, int(cy - r))
            x1, y1 = min(w, int(math.ceil(cx + r))), min(h, int(math.ceil(cy + r)))
            if x1 - x0 >= 32 and y1 - y0 >= 32:
                # downscale the region so that the face is ~95 px (never upscale)
                roi_side = max(x1 - x0, y1 - y0)
                self.roi.max_side = max(64, int(roi_side * min(1.0, ROI_CROP_SIDE_PX / side)))
                found = self.roi.detect(np.ascontiguousarray(frame[y0:y1, x0:x1]))
                if found is not None:
                    pts = found + np.array([x0, y0], np.float32)
        if pts is None:
            pts = self.full.detect(frame)
        try:
            self.box = face_crop_box(pts) if pts is not None else None
        except ValueError:  # degenerate landmarks
            self.box, pts = None, None
        return pts


def detect_chunk(job: dict, fps: float, start: int, stop: int | None) -> dict:
    """Landmarks (n, 68, 2) float32 in source pixels (NaN: no face) of frames [start, stop)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tracker = FaceTracker()
    out, size = [], None
    t0 = time.perf_counter()
    try:
        for frame in iter_video_frames(job["video"], fps, start, stop, job.get("max_seconds")):
            size = frame.shape[:2]
            pts = tracker(frame)
            out.append(np.full((NUM_LANDMARKS, 2), np.nan, np.float32) if pts is None else pts)
    except PrepareError:
        # A later chunk that starts past the real end (the frame count was estimated from
        # the container's duration) gets no frames at all; real errors show in chunk 0.
        if start == 0 or out:
            raise
    if start == 0 and not out:
        raise PrepareError("the video has no decodable frames")
    lms = np.stack(out) if out else np.zeros((0, NUM_LANDMARKS, 2), np.float32)
    return {"start": start, "landmarks": lms, "frame_hw": size,
            "seconds": time.perf_counter() - t0}  # fmt: skip


# ---------------------------------------------------------------- stage 3: finalize


def smoothing_window(fps: float) -> int:
    """face.smooth_boxes' 9 frames at 25 fps (0.36 s), the same duration at other rates, odd."""
    n = max(1, int(round(9 * fps / 25.0)))
    return n if n % 2 else n + 1


def split_ranges(n: int, parts: list[dict]) -> list[tuple[int, int]]:
    """Frame ranges of the clips of one source: parts give time fractions [begin, end)."""
    out = []
    for part in parts:
        a = int(round(part["begin"] * n))
        b = int(round(part["end"] * n))
        out.append((a, b))
    return out


def _load_audio(job: dict, probe: dict) -> np.ndarray:
    from talking_head.audio import load_audio

    src = probe["audio_file"] or job["video"]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            audio = load_audio(src, name="audio")
    except (ValueError, FileNotFoundError) as err:
        raise PrepareError(str(err)) from None
    if job.get("max_seconds"):
        audio = audio[: int(round(float(job["max_seconds"]) * SAMPLE_RATE))]
    return audio


def finalize_video(job: dict, probe: dict, landmarks: np.ndarray, out_root: str) -> list[dict]:
    """Crop, write and commit every output clip of one video source; returns their manifest rows."""
    from PIL import Image

    from talking_head.face import crop_face, face_crop_box, smooth_boxes

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(out_root)
    fps, size = float(probe["fps"]), int(job["size"])
    audio = _load_audio(job, probe)
    n_video = len(landmarks)
    spf = SAMPLE_RATE / fps
    n_audio_frames = int(math.ceil(len(audio) / spf - 1e-6))
    n = min(n_video, n_audio_frames)
    warnings_ = []
    gap = (n_video - len(audio) / spf) / fps
    if abs(gap) > LENGTH_MISMATCH_WARN_S:
        warnings_.append(
            f"video lasts {n_video / fps:.2f} s but the audio {len(audio) / SAMPLE_RATE:.2f} s; "
            f"kept the first {n / fps:.2f} s"
        )
    if n == 0:
        raise PrepareError("the audio is shorter than one video frame")
    landmarks = landmarks[:n]
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    coverage = float(valid.mean())
    if not valid.any():
        raise PrepareError(f"no face found in any of the {n} frames")
    if coverage < float(job.get("min_face_fraction", 0.0)):
        raise PrepareError(
            f"a face was found in only {100 * coverage:.1f} % of the {n} frames "
            f"(--min-face-fraction {job['min_face_fraction']:g})"
        )
    boxes = np.full((n, 3), np.nan)
    for i in np.flatnonzero(valid):
        boxes[i] = face_crop_box(landmarks[i])
    boxes = smooth_boxes(boxes, window=smoothing_window(fps))

    ranges = split_ranges(n, job["parts"])
    if any(b - a < 1 for a, b in ranges):
        raise PrepareError(
            f"only {n} frames: too short to split into "
            + " / ".join(f"{p['split']} {100 * (p['end'] - p['begin']):.0f} %" for p in job["parts"])
        )
    clips = []
    for part, (a, b) in zip(job["parts"], ranges):
        tmp = layout.new_tmp_clip_dir(root, part["clip_id"])
        (tmp / layout.FRAMES).mkdir()
        clips.append({"part": part, "range": (a, b), "tmp": tmp})
    try:
        written = 0
        k = 0
        for i, frame in enumerate(iter_video_frames(job["video"], fps, 0, n)):
            while k < len(clips) and i >= clips[k]["range"][1]:
                k += 1
            if k >= len(clips):
                break
            a, _ = clips[k]["range"]
            if i < a:
                continue
            crop = crop_face(frame, boxes[i], size)
            Image.fromarray(crop).save(
                clips[k]["tmp"] / layout.FRAMES / layout.FRAME_PATTERN.format(i - a),
                quality=layout.JPEG_QUALITY, subsampling=0,
            )
            written += 1
        expected = sum(b - a for c in clips for a, b in [c["range"]])
        if written != expected:
            raise PrepareError(
                f"the second decoding pass gave {written} frames where the first gave {expected}"
            )
        rows = []
        for c in clips:
            rows.append(_write_clip_files(job, probe, c, boxes, landmarks, valid, audio, size,
                                          fps, warnings_, root))  # fmt: skip
    except BaseException:
        import shutil

        for c in clips:
            shutil.rmtree(c["tmp"], ignore_errors=True)
        raise
    return rows


def _write_clip_files(job, probe, c, boxes, landmarks, valid, audio, size, fps, warnings_, root):
    import soundfile as sf

    from talking_head.face import landmarks_to_crop

    part, (a, b), tmp = c["part"], c["range"], c["tmp"]
    t = b - a
    lm = np.full((t, NUM_LANDMARKS, 2), np.nan, np.float32)
    for j in range(t):
        if valid[a + j]:
            lm[j] = landmarks_to_crop(landmarks[a + j], boxes[a + j], size)
    np.save(tmp / "landmarks.npy", lm, allow_pickle=False)
    np.save(tmp / "boxes.npy", boxes[a:b].astype(np.float64), allow_pickle=False)
    s0 = int(round(a * SAMPLE_RATE / fps))
    ns = int(round(t * SAMPLE_RATE / fps))
    seg = audio[s0 : s0 + ns]
    if len(seg) < ns:
        seg = np.pad(seg, (0, ns - len(seg)))
    sf.write(tmp / "audio.wav", seg.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    clip_id = part["clip_id"]
    rel = f"{layout.CLIPS}/{clip_id}"
    emotion = job.get("emotion")
    meta = {
        "clip_id": clip_id,
        "kind": "video",
        "split": part["split"],
        "speaker": job["speaker"],
        "emotion": emotion,
        "emotion_id": EMOTIONS.index(emotion) if emotion else NULL_EMOTION,
        "level": job.get("level"),
        "fps": fps,
        "num_frames": t,
        "duration": t / fps,
        "size": size,
        "landmark_coverage": float(valid[a:b].mean()),
        "frames_dir": f"{rel}/{layout.FRAMES}",
        "frame_pattern": layout.FRAME_PATTERN,
        "landmarks": f"{rel}/landmarks.npy",
        "boxes": f"{rel}/boxes.npy",
        "audio": f"{rel}/audio.wav",
        "num_samples": ns,
        "source": str(Path(job["video"]).resolve()),
        "source_kind": job["source_kind"],
        "source_audio": str(Path(probe["audio_file"]).resolve()) if probe["audio_file"] else None,
        "source_start_frame": a,
        "source_size": probe.get("source_size"),
        "source_fps": probe.get("source_fps"),
        "source_stamp": job.get("stamp"),
        "max_seconds": job.get("max_seconds"),
        "warnings": list(warnings_),
        "prepare_settings": part.get("settings"),
    }
    layout.finish_clip_dir(tmp, root, clip_id, meta)
    return meta


# ---------------------------------------------------------------- emotion audio


def prepare_audio_items(items: list[dict], out_root: str) -> list[dict]:
    """Decode and write a batch of labelled utterances; returns one result per item.

    Each result is {"ok": meta} or {"error": reason, "item": item}.
    """
    import warnings

    import soundfile as sf

    from talking_head.audio import load_audio

    root = Path(out_root)
    results = []
    for item in items:
        tmp = None
        try:
            src = Path(item["path"])
            if src.stat().st_size == 0:
                raise PrepareError("the file is empty (0 bytes)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                audio = load_audio(src, name="audio")
            tmp = layout.new_tmp_clip_dir(root, item["clip_id"])
            sf.write(tmp / "audio.flac", np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_24")
            rel = f"{layout.CLIPS}/{item['clip_id']}"
            emotion = item["emotion"]
            meta = {
                "clip_id": item["clip_id"],
                "kind": "audio",
                "split": item["split"],
                "speaker": item["speaker"],
                "emotion": emotion,
                "emotion_id": EMOTIONS.index(emotion),
                "level": item.get("level"),
                "audio": f"{rel}/audio.flac",
                "num_samples": int(len(audio)),
                "duration": len(audio) / SAMPLE_RATE,
                "source": str(src.resolve()),
                "source_kind": "emotion-audio",
                "source_label": item.get("source_label"),
                "source_stamp": item.get("stamp"),
                "prepare_settings": item.get("settings"),
            }
            layout.finish_clip_dir(tmp, root, item["clip_id"], meta)
            results.append({"ok": meta})
        except Exception as err:  # noqa: BLE001 - every reason is recorded, the batch goes on
            if tmp is not None:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            reason = str(err) if isinstance(err, (PrepareError, ValueError)) else (
                f"{type(err).__name__}: {err}"
            )
            results.append({"error": reason, "item": item})
    return results
