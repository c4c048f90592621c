"""The test clips of a prepared dataset, as the evaluator sees them.

Each video clip of the split is evaluated whole (from frame 0), or its first
`max_seconds`. The reference (identity) frame is the clip's first frame with a
detected face, taken exactly as the dataset stores it (a square face crop);
it is not scored (generated frames are compared with every OTHER frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS, NULL_EMOTION, SAMPLE_RATE
from talking_head.data import layout


@dataclass
class EvalClip:
    root: Path
    row: dict
    num_frames: int  # frames evaluated (the whole clip, or its first max_seconds)
    reference_index: int
    landmarks: np.ndarray  # (num_frames, 68, 2) float32 stored-crop pixels, NaN where no face
    reference_landmarks: np.ndarray  # (68, 2) stored-crop pixels
    audio: np.ndarray  # float32 16 kHz, exactly the audio of the evaluated frames
    _reference: np.ndarray | None = field(default=None, repr=False)

    @property
    def clip_id(self) -> str:
        return self.row["clip_id"]

    @property
    def fps(self) -> float:
        return float(self.row["fps"])

    @property
    def size(self) -> int:
        return int(self.row["size"])

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def emotion(self) -> str | None:
        """The clip's emotion label, or None when unknown."""
        eid = self.row.get("emotion_id", NULL_EMOTION)
        return EMOTIONS[eid] if eid is not None and 0 <= int(eid) < len(EMOTIONS) else None

    @property
    def landmark_valid(self) -> np.ndarray:
        return np.isfinite(self.landmarks).all(axis=(1, 2))

    @property
    def scored_indices(self) -> list[int]:
        return [i for i in range(self.num_frames) if i != self.reference_index]

    def frame(self, index: int) -> np.ndarray:
        """Ground-truth frame `index` as stored: uint8 (size, size, 3)."""
        return layout.load_frame(self.root, self.row, index)

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self.frame(self.reference_index)
        return self._reference

    def filled_landmarks(self) -> np.ndarray:
        """Landmarks with every frame without a face replaced by the nearest frame with one."""
        from talking_head.face import fill_missing_landmarks

        return fill_missing_landmarks(self.landmarks)


def load_clips(root, split: str | None = "test", max_clips: int | None = None,
               max_seconds: float | None = None) -> tuple[list[EvalClip], list[tuple[str, str]]]:
    """(clips to evaluate, [(clip_id, why skipped)]) of the video clips of `split`, sorted by clip id."""
    from talking_head.audio import load_audio

    root = Path(root)
    rows = [r for r in layout.read_manifest(root) if r.get("kind") == "video"]
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    rows.sort(key=lambda r: r["clip_id"])
    if not rows:
        raise ValueError(f"{root} has no {split!r} video clips to evaluate")
    clips, skipped = [], []
    for row in rows:
        if max_clips is not None and len(clips) >= max_clips:
            break
        fps = float(row["fps"])
        total = int(row["num_frames"])
        n = total if max_seconds is None else max(1, min(total, int(round(max_seconds * fps))))
        lms = layout.load_landmarks(root, row)[:n].astype(np.float32)
        valid = np.isfinite(lms).all(axis=(1, 2))
        if not valid.any():
            skipped.append((row["clip_id"], "no frame with a detected face in the evaluated part"))
            continue
        if n < 2:
            skipped.append((row["clip_id"], "fewer than 2 frames (the reference frame is not scored)"))
            continue
        ref = int(np.flatnonzero(valid)[0])
        samples = int(round(n * SAMPLE_RATE / fps))
        audio = load_audio(str(root / row["audio"]), name=f"audio of {row['clip_id']}")[:samples]
        if len(audio) < samples:
            audio = np.pad(audio, (0, samples - len(audio)))
        clips.append(EvalClip(root=root, row=row, num_frames=n, reference_index=ref, landmarks=lms,
                              reference_landmarks=lms[ref].copy(), audio=np.ascontiguousarray(audio, np.float32)))
    if not clips:
        why = "; ".join(f"{c}: {w}" for c, w in skipped[:5])
        raise ValueError(f"no {split!r} clip of {root} can be evaluated ({why})")
    return clips, skipped
