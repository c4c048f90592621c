"""The torch Datasets every trainer and the evaluator share, reading a prepared dataset.

TalkingHeadClipDataset(root, split="train", clip_frames=16, sample_size=None,
                       random_crop=True, seed=0, reference="random")
    Fixed-length windows of the video clips of one split. Item keys:
      frames              float32 (3, F, S, S) in [-1, 1]; S = sample_size (the stored frames
                          resized with PIL's antialiased bilinear filter, the same filter
                          talking_head.face.crop_face uses at inference), None = stored size
      landmarks           float32 (F, 68, 2), normalised to the crop: (x, y) / stored size,
                          so (0, 0) is the crop's top-left corner and (1, 1) its bottom-right
      landmark_valid      bool (F,): always all True with the default allow_invalid=False
      reference           float32 (3, S, S) in [-1, 1]: a frame of the same speaker and split
      reference_landmarks float32 (68, 2), normalised
      audio               float32 (round(F / fps * 16000),): exactly the audio of the F frames
                          (frame f covers [f / fps, (f + 1) / fps)); with audio_pad_frames=p,
                          p more frames of audio on each side (zeros beyond the clip)
      emotion             int64 class id in talking_head.constants.EMOTIONS order
                          (NULL_EMOTION when the clip has no label, e.g. a user's own video)
      level               int64 intensity label (MEAD 1-3, -1 unknown)
      fps float32, clip_id str, speaker str, start_frame int64 (index in the clip)

    Windows and length: windows never contain a frame without a detected face
    (frames flagged in landmarks.npy are never training targets); a clip with no
    such window of clip_frames frames is skipped (listed in `skipped`), never
    padded. Each clip contributes as many items as it has non-overlapping
    face-valid windows (greedy from its start), so one epoch sees each frame
    about once. random_crop=False: item k is the k-th of those windows
    (deterministic; what the evaluator wants). random_crop=True: the item's
    window starts at a uniformly random face-valid position of the same clip.

    Randomness is reproducible without any global state: every random choice of
    item i (window start, reference frame) comes from
    np.random.default_rng([seed, epoch, i]), where epoch is what
    `set_epoch(epoch)` last set (0 by default; the trainers call it at the
    start of each epoch, before the DataLoader iterator is created, so it
    reaches the workers; with persistent_workers=True it does not). With
    random_crop=False the epoch is ignored, so windows AND references are
    fixed for a given seed. The data order itself is the sampler's business.

    reference: "random" (default) - a face-valid frame of the same speaker and
    split, from any of that speaker's clips, at least clip_frames frames away
    from the window when it is in the same clip (another moment, so the model
    cannot copy the target); "same_clip" - the same but only from the window's
    clip; "first" - the clip's first face-valid frame; "mouth_contrast" - as "random", but among
    MOUTH_CANDIDATES such frames one whose mouth opening differs from the window's mean by at least
    MOUTH_CONTRAST (else the most different one), so a renderer cannot copy the target mouth from it
    (DESIGN 7.2 item 4).

EmotionAudioDataset(root, split="train", max_seconds=4.0, random_crop=True, seed=0)
    Labelled audio for the emotion classifier: every manifest entry with a known
    emotion (prepared emotion-audio utterances, and the audio of emotion-labelled
    video clips such as MEAD). Items: {"audio": float32 (S,) at 16 kHz, at most
    max_seconds (a random crop when longer, from default_rng([seed, epoch, i]);
    the centre when random_crop=False), "label": int64, "speaker": str,
    "clip_id": str}. `class_counts()` -> (8,) for class-weighted cross-entropy.

collate_clips(batch): stacks tensors, lists strings; EmotionAudioDataset batches
(items with "label") get "audio" zero-padded to the longest item and an int64
"attention_mask" (1 = real sample), as transformers' audio models expect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from talking_head.constants import NULL_EMOTION, NUM_EMOTIONS, NUM_LANDMARKS, SAMPLE_RATE
from talking_head.data import layout

REFERENCE_MODES = ("random", "same_clip", "first", "mouth_contrast")
# Inner-lip opening (points 62-66, normalised to the crop) by which a "mouth_contrast" reference differs from
# the window's mean opening when such a frame is among its candidates.
MOUTH_CONTRAST = 0.02
MOUTH_CANDIDATES = 8


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip opening |p66 - p62| of (..., 68, 2) landmarks, in their units."""
    return np.linalg.norm(landmarks[..., 66, :] - landmarks[..., 62, :], axis=-1)


def _valid_starts(valid: np.ndarray, length: int) -> np.ndarray:
    """Start indices s such that valid[s : s + length] are all True."""
    if len(valid) < length:
        return np.zeros(0, dtype=np.int64)
    c = np.concatenate([[0], np.cumsum(~valid)])
    bad = c[length:] - c[:-length]
    return np.flatnonzero(bad == 0).astype(np.int64)


def _greedy_windows(starts: np.ndarray, length: int) -> list[int]:
    """Non-overlapping windows, taking each valid start at or after the previous window's end."""
    out, nxt = [], 0
    for s in starts:
        if s >= nxt:
            out.append(int(s))
            nxt = s + length
    return out


# What a damaged prepared clip is answered with: which file, what is wrong, how to fix it.
_REDO = "delete the clip's folder and re-run `talking-head prepare` on its source"
_VIDEO_KEYS = ("clip_id", "split", "speaker", "fps", "size", "frames_dir", "landmarks", "audio")
_AUDIO_KEYS = ("clip_id", "split", "speaker", "emotion_id", "audio", "num_samples")


def _check_row(root: Path, row: dict, keys: tuple) -> None:
    """Refuse, when the Dataset is built, a manifest row that lacks a field or whose audio is missing/short."""
    import soundfile as sf

    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"prepared dataset {root}: clip {row.get('clip_id', '?')!r} lacks the manifest "
                         f"field(s) {', '.join(missing)}; {_REDO}")
    path = root / row["audio"]
    if not path.is_file():
        raise FileNotFoundError(f"prepared audio file {path} is missing; {_REDO}")
    try:
        frames = sf.info(str(path)).frames
    except (RuntimeError, OSError) as err:
        raise ValueError(f"prepared audio file {path} is unreadable ({err}); {_REDO}") from None
    if row.get("num_samples") is not None and frames < int(row["num_samples"]):
        raise ValueError(f"prepared audio file {path} is truncated: {frames} of {row['num_samples']} samples; {_REDO}")


def _clip_landmarks(root: Path, row: dict) -> np.ndarray:
    """(T, 68, 2) landmarks of a video clip row, with a clear error when the file is missing or damaged."""
    path = root / row["landmarks"]
    if not path.is_file():
        raise FileNotFoundError(f"prepared landmarks file {path} is missing; {_REDO}")
    try:
        lms = layout.load_landmarks(root, row)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"prepared landmarks file {path} is unreadable ({err}); {_REDO}") from None
    expected = (row.get("num_frames", lms.shape[0] if lms.ndim else None), NUM_LANDMARKS, 2)
    if lms.shape != expected:
        raise ValueError(f"prepared landmarks file {path} has shape {lms.shape}, expected {expected}; {_REDO}")
    return lms


def _read_audio(path: Path, start: int, n: int) -> np.ndarray:
    """n samples from `start` (may be negative / run past the end: zeros there)."""
    import soundfile as sf

    out = np.zeros(n, np.float32)
    a, b = max(0, start), start + n
    if b > a:
        try:
            with sf.SoundFile(str(path)) as f:
                total = f.frames
                if a < total:
                    f.seek(a)
                    data = f.read(min(b, total) - a, dtype="float32", always_2d=True).mean(axis=1)
                    out[a - start : a - start + len(data)] = data
        except (RuntimeError, OSError) as err:  # soundfile's errors are RuntimeErrors
            if not path.is_file():
                raise FileNotFoundError(f"prepared audio file {path} is missing; {_REDO}") from None
            raise ValueError(f"prepared audio file {path} is unreadable ({err}); {_REDO}") from None
    return out


def _to_unit_range(x: np.ndarray, axes) -> torch.Tensor:
    """uint8 array -> float32 tensor in [-1, 1] with axes permuted (in numpy: no torch threads)."""
    y = np.ascontiguousarray(np.transpose(x, axes), dtype=np.float32)
    y *= 1.0 / 127.5
    y -= 1.0
    return torch.from_numpy(y)


class TalkingHeadClipDataset(torch.utils.data.Dataset):
    """Fixed-length windows of prepared talking-head clips (see the module docstring)."""

    def __init__(self, root, split="train", clip_frames: int = 16, sample_size=None,
                 random_crop: bool = True, seed: int = 0, reference: str = "random",
                 speakers=None, audio_pad_frames: int = 0, allow_invalid: bool = False):  # fmt: skip
        self.root = Path(root)
        if int(clip_frames) != clip_frames or clip_frames < 1:
            raise ValueError(f"clip_frames must be a positive integer, got {clip_frames!r}")
        if sample_size is not None and (int(sample_size) != sample_size or sample_size < 1):
            raise ValueError(f"sample_size must be a positive integer or None, got {sample_size!r}")
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {REFERENCE_MODES}, got {reference!r}")
        if int(audio_pad_frames) != audio_pad_frames or audio_pad_frames < 0:
            raise ValueError(f"audio_pad_frames must be a non-negative integer, got {audio_pad_frames!r}")
        self.split = split
        self.clip_frames = int(clip_frames)
        self.sample_size = None if sample_size is None else int(sample_size)
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.reference = reference
        self.audio_pad_frames = int(audio_pad_frames)
        self.allow_invalid = bool(allow_invalid)
        self.epoch = 0

        rows = [r for r in layout.read_manifest(self.root) if r.get("kind") == "video"]
        if split is not None:
            rows = [r for r in rows if r.get("split") == split]
        if speakers is not None:
            wanted = {speakers} if isinstance(speakers, str) else set(speakers)
            rows = [r for r in rows if r.get("speaker") in wanted]
        self.clips: list[dict] = []
        self.skipped: list[tuple[str, str]] = []
        self._valid: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self.index: list[tuple[int, int]] = []  # (clip, window start for random_crop=False)
        for r in rows:
            _check_row(self.root, r, _VIDEO_KEYS)
            lms = _clip_landmarks(self.root, r)
            last = layout.frame_path(self.root, r, len(lms) - 1)
            if len(lms) and not last.is_file():
                raise FileNotFoundError(f"prepared frame {last} is missing (the clip has {len(lms)} frames); {_REDO}")
            valid = np.isfinite(lms).all(axis=(1, 2))
            if not valid.any():
                self.skipped.append((r["clip_id"], "no frame with a face"))
                continue
            if self.allow_invalid:
                starts = np.arange(max(0, len(valid) - self.clip_frames + 1), dtype=np.int64)
            else:
                starts = _valid_starts(valid, self.clip_frames)
            if len(starts) == 0:
                self.skipped.append((r["clip_id"], f"no {self.clip_frames} consecutive frames with a face"
                                     if len(valid) >= self.clip_frames else
                                     f"{len(valid)} frames < clip_frames={self.clip_frames}"))  # fmt: skip
                continue
            c = len(self.clips)
            self.clips.append(r)
            self._valid.append(valid)
            self._starts.append(starts)
            for s in _greedy_windows(starts, self.clip_frames):
                self.index.append((c, s))
        if not self.clips:
            why = "; ".join(f"{c}: {w}" for c, w in self.skipped[:5])
            raise ValueError(
                f"no usable {split!r} video clips in {self.root} for clip_frames={self.clip_frames}"
                + (f" ({why})" if why else "")
            )
        # Reference pools: for each speaker, its clips and their face-valid frame indices.
        self._valid_frames = [np.flatnonzero(v) for v in self._valid]
        self._by_speaker: dict[str, list[int]] = {}
        for c, r in enumerate(self.clips):
            self._by_speaker.setdefault(r["speaker"], []).append(c)

    # ------------------------------------------------------------ API

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random windows/references items are drawn from."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def speakers(self) -> list[str]:
        return sorted(self._by_speaker)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if self.random_crop else 0, int(i)])

    def window(self, i: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """(clip index, start frame) of item i."""
        c, s = self.index[i]
        if self.random_crop:
            rng = rng or self._rng(i)
            starts = self._starts[c]
            s = int(starts[rng.integers(len(starts))])
        return c, s

    def _pick_reference(self, c: int, s: int, rng: np.random.Generator) -> tuple[int, int]:
        if self.reference == "first":
            return c, int(self._valid_frames[c][0])
        if self.reference == "mouth_contrast":
            window = float(np.nanmean(mouth_opening(self._landmarks(c)[s: s + self.clip_frames])))
            candidates = [self._pick_other(c, s, rng, "random") for _ in range(MOUTH_CANDIDATES)]
            diffs = [abs(float(mouth_opening(self._landmarks(k)[f])) - window) for k, f in candidates]
            far = [i for i, d in enumerate(diffs) if d >= MOUTH_CONTRAST]
            return candidates[far[0] if far else int(np.argmax(diffs))]
        return self._pick_other(c, s, rng, self.reference)

    def _pick_other(self, c: int, s: int, rng: np.random.Generator, mode: str) -> tuple[int, int]:
        """A face-valid frame of the same speaker ("random") or clip ("same_clip") away from the window."""
        F = self.clip_frames
        pool = [c] if mode == "same_clip" else self._by_speaker[self.clips[c]["speaker"]]
        sizes = np.array([len(self._valid_frames[k]) for k in pool], dtype=np.float64)
        for _ in range(16):
            k = pool[rng.choice(len(pool), p=sizes / sizes.sum())]
            frames = self._valid_frames[k]
            f = int(frames[rng.integers(len(frames))])
            if k != c or f < s - F or f >= s + 2 * F:
                return k, f
        # Few frames far enough away: the farthest valid frame of the clip from the window.
        frames = self._valid_frames[c]
        far = frames[np.argmax(np.abs(frames - (s + F / 2)))]
        return c, int(far)

    def _landmarks(self, c: int) -> np.ndarray:
        """(T, 68, 2) normalised landmarks of clip c (read on demand: a small .npy, ~0.1 ms)."""
        lm = _clip_landmarks(self.root, self.clips[c]) / float(self.clips[c]["size"])
        return lm.astype(np.float32)

    def _frame(self, c: int, f: int) -> np.ndarray:
        path = layout.frame_path(self.root, self.clips[c], f)
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if self.sample_size is not None and im.size != (self.sample_size, self.sample_size):
                    im = im.resize((self.sample_size, self.sample_size), Image.BILINEAR)
                return np.asarray(im)
        except FileNotFoundError:
            raise FileNotFoundError(f"prepared frame {path} is missing; {_REDO}") from None
        except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated or not an image
            raise ValueError(f"prepared frame {path} is unreadable ({err}); {_REDO}") from None

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.index):
            raise IndexError(f"index {i} out of range for {len(self.index)} items")
        rng = self._rng(i)
        c, s = self.window(i, rng)
        row = self.clips[c]
        F = self.clip_frames
        frames = np.stack([self._frame(c, f) for f in range(s, s + F)])  # (F, S, S, 3)
        frames_t = _to_unit_range(frames, (3, 0, 1, 2))  # (3, F, S, S)
        clip_lm = self._landmarks(c)
        lm = clip_lm[s : s + F].copy()
        valid = self._valid[c][s : s + F].copy()
        if not valid.all():  # only with allow_invalid=True: fill from the nearest valid frame
            vf = self._valid_frames[c]
            for j in np.flatnonzero(~valid):
                lm[j] = clip_lm[vf[np.argmin(np.abs(vf - (s + j)))]]
        rc, rf = self._pick_reference(c, s, rng)
        ref_lm = (clip_lm if rc == c else self._landmarks(rc))[rf].copy()
        fps = float(row["fps"])
        p = self.audio_pad_frames
        a0 = int(round((s - p) * SAMPLE_RATE / fps))
        n = int(round((F + 2 * p) * SAMPLE_RATE / fps))
        audio = _read_audio(self.root / row["audio"], a0, n)
        level = row.get("level")
        return {
            "frames": frames_t,
            "landmarks": torch.from_numpy(lm),
            "landmark_valid": torch.from_numpy(valid),
            "reference": _to_unit_range(self._frame(rc, rf), (2, 0, 1)),
            "reference_landmarks": torch.from_numpy(ref_lm),
            "audio": torch.from_numpy(audio),
            "emotion": torch.tensor(int(row.get("emotion_id", NULL_EMOTION)), dtype=torch.long),
            "level": torch.tensor(-1 if level is None else int(level), dtype=torch.long),
            "fps": torch.tensor(fps, dtype=torch.float32),
            "clip_id": row["clip_id"],
            "speaker": row["speaker"],
            "start_frame": torch.tensor(s, dtype=torch.long),
        }


class EmotionAudioDataset(torch.utils.data.Dataset):
    """Emotion-labelled speech for the classifier (see the module docstring)."""

    def __init__(self, root, split="train", max_seconds: float = 4.0, random_crop: bool = True,
                 seed: int = 0, speakers=None):  # fmt: skip
        self.root = Path(root)
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
        self.split = split
        self.max_samples = int(round(max_seconds * SAMPLE_RATE))
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.epoch = 0
        rows = [r for r in layout.read_manifest(self.root)
                if r.get("emotion_id", NULL_EMOTION) < NUM_EMOTIONS and r.get("audio")]  # fmt: skip
        if split is not None:
            rows = [r for r in rows if r.get("split") == split]
        if speakers is not None:
            wanted = {speakers} if isinstance(speakers, str) else set(speakers)
            rows = [r for r in rows if r.get("speaker") in wanted]
        if not rows:
            raise ValueError(f"no emotion-labelled {split!r} audio in {self.root}")
        for r in rows:
            _check_row(self.root, r, _AUDIO_KEYS)
        self.items = rows
        self.labels = np.array([r["emotion_id"] for r in rows], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def class_counts(self) -> np.ndarray:
        """(8,) int64 number of items per class, in EMOTIONS order."""
        return np.bincount(self.labels, minlength=NUM_EMOTIONS).astype(np.int64)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.items):
            raise IndexError(f"index {i} out of range for {len(self.items)} items")
        row = self.items[i]
        total = int(row["num_samples"])
        n = min(total, self.max_samples)
        if total > n:
            if self.random_crop:
                rng = np.random.default_rng([self.seed, self.epoch, int(i)])
                start = int(rng.integers(0, total - n + 1))
            else:
                start = (total - n) // 2
        else:
            start = 0
        audio = _read_audio(self.root / row["audio"], start, n)
        return {
            "audio": torch.from_numpy(audio),
            "label": torch.tensor(int(row["emotion_id"]), dtype=torch.long),
            "speaker": row["speaker"],
            "clip_id": row["clip_id"],
        }


def collate_clips(batch: list[dict]) -> dict:
    """Batch items of either Dataset: stack tensors, list strings, pad emotion audio + mask."""
    if not batch:
        raise ValueError("collate_clips got an empty batch")
    out = {}
    emotion_audio = "label" in batch[0]
    for key in batch[0]:
        vals = [b[key] for b in batch]
        if key == "audio" and (emotion_audio or len({v.shape[0] for v in vals}) > 1):
            n = max(v.shape[0] for v in vals)
            audio = torch.zeros(len(vals), n, dtype=torch.float32)
            mask = torch.zeros(len(vals), n, dtype=torch.long)
            for k, v in enumerate(vals):
                audio[k, : v.shape[0]] = v
                mask[k, : v.shape[0]] = 1
            out["audio"], out["attention_mask"] = audio, mask
        elif torch.is_tensor(vals[0]):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (bool, int, np.integer)):
            out[key] = torch.tensor(vals, dtype=torch.long)
        elif isinstance(vals[0], (float, np.floating)):
            out[key] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[key] = list(vals)
    return out
