"""The on-disk layout of a prepared dataset, shared by `prepare`, the synthetic set and the Datasets.

    DIR/
      dataset.json          format name/version, frame size, JPEG quality, sample rate, label order
      manifest.jsonl        one JSON object per prepared clip (rebuilt from clips/*/meta.json)
      failures.jsonl        one JSON object per source that could not be prepared, with the reason
      clips/<clip_id>/
        meta.json           the clip's manifest line (written last; the folder is renamed into
                            place only when complete, so a folder with meta.json IS complete)
        frames/000000.jpg   video clips: square face crops, size x size, JPEG q95 4:4:4
        landmarks.npy       video clips: float32 (T, 68, 2) iBUG-68 (x, y) in crop pixels,
                            NaN rows where no face was found (landmark_valid = isfinite)
        boxes.npy           video clips: float64 (T, 3) smoothed crop box (cx, cy, side) in
                            source-video pixels, for tracing a crop back to the source
        audio.wav           video clips: 16 kHz mono float32, exactly round(T / fps * 16000)
                            samples; frame f covers [f / fps, (f + 1) / fps)
        audio.flac          emotion-audio clips: 16 kHz mono, 24-bit FLAC (lossless for the
                            usual 16-bit sources, a third of the size of float WAV)

Manifest fields (all clips): clip_id, kind ("video" | "audio"), split ("train" | "test"),
speaker (str), emotion (name from talking_head.constants.EMOTIONS or null), emotion_id (class
id, NULL_EMOTION when unknown), level (int: MEAD intensity 1-3, RAVDESS intensity 1-2, or null),
audio (path relative to DIR), num_samples, duration (s), source (absolute path of the input),
source_kind ("video" | "mead" | "emotion-audio" | "synthetic").
Video clips add: frames_dir, frame_pattern ("{:06d}.jpg"), landmarks, boxes, fps, num_frames,
size, landmark_coverage (fraction of frames with a face), source_start_frame (index of frame 0
in the decoded source at `fps`), source_size ([w, h]), warnings (list of str).

No pickles anywhere: arrays are .npy (np.load(..., allow_pickle=False) works), metadata JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS, NULL_EMOTION, SAMPLE_RATE
from talking_head.utils import make_public

FORMAT_NAME = "talking-head-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
DATASET_JSON = "dataset.json"
CLIPS = "clips"
META = "meta.json"
FRAMES = "frames"
FRAME_PATTERN = "{:06d}.jpg"
JPEG_QUALITY = 95
TMP_PREFIX = ".tmp-"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_jsonl_atomic(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def dataset_info(**settings) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "emotions": list(EMOTIONS),
        "null_emotion": NULL_EMOTION,
        "frame_format": "jpg",
        "jpeg_quality": JPEG_QUALITY,
        "landmarks": "iBUG-68 (x, y) in crop pixels; NaN where no face; normalise by `size`",
        **settings,
    }


def clip_dir(root: Path, clip_id: str) -> Path:
    return Path(root) / CLIPS / clip_id


def new_tmp_clip_dir(root: Path, clip_id: str) -> Path:
    """A fresh temporary folder next to where the clip will live (same file system: atomic rename)."""
    parent = Path(root) / CLIPS
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{clip_id}-", dir=parent))


def finish_clip_dir(tmp: Path, root: Path, clip_id: str, meta: dict) -> Path:
    """Write meta.json last, then rename the finished folder into place (replacing an old one)."""
    from talking_head.utils import replace_dir_atomic

    write_json_atomic(Path(tmp) / META, meta)
    target = clip_dir(root, clip_id)
    replace_dir_atomic(Path(tmp), target)
    return target


def remove_stale_tmp(root: Path) -> int:
    """Delete half-written clip folders left by an interrupted run; returns how many."""
    parent = Path(root) / CLIPS
    if not parent.is_dir():
        return 0
    n = 0
    for p in parent.iterdir():
        if p.name.startswith(TMP_PREFIX) or p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


def read_clip_meta(root: Path, clip_id: str) -> dict | None:
    """The clip's meta.json if the clip folder is complete, else None."""
    path = clip_dir(root, clip_id) / META
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def collect_manifest(root: Path) -> list[dict]:
    """Manifest rows of every complete clip under root/clips, sorted by clip id."""
    parent = Path(root) / CLIPS
    rows = []
    if parent.is_dir():
        for p in sorted(parent.iterdir()):
            if p.name.startswith(".") or not p.is_dir():
                continue
            meta = read_clip_meta(root, p.name)
            if meta is not None:
                rows.append(meta)
    return rows


def write_manifest(root: Path, rows=None) -> list[dict]:
    rows = collect_manifest(root) if rows is None else rows
    write_jsonl_atomic(Path(root) / MANIFEST, rows)
    return rows


def read_manifest(root) -> list[dict]:
    """The manifest rows of a prepared dataset, with a clear error when `root` is not one."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"prepared dataset path {root} is a file, not a folder made by `talking-head prepare`")
    if not root.is_dir():
        raise FileNotFoundError(f"prepared dataset folder not found: {root}")
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} has no {MANIFEST}: not a prepared dataset (run `talking-head prepare ... "
            f"--output {root}` first)"
        )
    fix = f"re-running `talking-head prepare ... --output {root}` rebuilds it from the clip folders"
    try:
        rows = read_jsonl(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}); {fix}") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} is damaged (a line is not a JSON object); {fix}")
    return rows


def load_landmarks(root, row) -> np.ndarray:
    """(T, 68, 2) float32 crop-pixel landmarks of a video clip row (NaN where no face)."""
    return np.load(Path(root) / row["landmarks"], allow_pickle=False)


def frame_path(root, row, index: int) -> Path:
    return Path(root) / row["frames_dir"] / row.get("frame_pattern", FRAME_PATTERN).format(index)


def load_frame(root, row, index: int) -> np.ndarray:
    """One stored frame as uint8 RGB (size, size, 3)."""
    from PIL import Image

    with Image.open(frame_path(root, row, index)) as im:
        return np.asarray(im.convert("RGB"))
