"""Silence closes the mouth: the predicted lower face returns to the identity's own at rest where nobody speaks.

The landmark model reads the audio's loudness, but it learned from pauses in which speakers' lips stay parted
(the dev identity's) as well as from GRID's closed silences, so on real silence it leaves the mouth a little
open (measured on the demo photo with a second of silence around the demo speech: opening 0.031 face widths
on silence, 0.038 while speaking, 0.0095 in the photo; with this stage 0.010 on silence). This stage makes silence explicit: each frame gets a *rest weight* in [0, 1] from its audio level,
and the mouth and jaw points move that far back to the identity's landmarks (the photo's own closed mouth,
or the reference frame's in dubbing).

Thresholds (30 / 40 dB below the peak, 3 frames) were chosen on the lip-motion test sets
(docs/results/lip-motion/README.md, "mouth rest"): they keep GRID's figures and raise the dev identity's
mouth-opening r from 0.43 to 0.59; 20 / 30 dB closed the mouth in quiet parts of words too (GRID r 0.74 -> 0.69).

Rest weight of frame f: its level (RMS dB of its audio) against the loudest frame of the whole recording
(`peak_level_db`, computed once, block by block: memory stays flat in the length; a window of room noise
alone is then not mistaken for speech): 0 down to `REST_START_DB` below the peak, 1 from `REST_FULL_DB` below it or under
`REST_ABS_DB` dBFS, linear between), then the smallest over the frame and `REST_MARGIN_FRAMES` on each side
(a stop consonant's short closure inside a word is not a pause), then a moving average over
2 * `REST_MARGIN_FRAMES` + 1 frames so the mouth closes and opens over ~0.2 s rather than at once.
"""

from __future__ import annotations

import numpy as np
import torch

from talking_head.audio import frame_levels_db

__all__ = ["REST_POINTS", "peak_level_db", "rest_weights", "rest_mouth"]

REST_START_DB = 30.0
REST_FULL_DB = 40.0
REST_ABS_DB = -60.0
REST_MARGIN_FRAMES = 3
# Lower jaw (4-12) and mouth (48-67): what opens when speaking.
REST_POINTS = tuple(range(4, 13)) + tuple(range(48, 68))


def peak_level_db(audio, sample_rate: int, fps: float, block_frames: int = 250) -> float:
    """The loudest video frame's level (dB) of a whole recording, `block_frames` frames at a time."""
    audio = np.asarray(audio)
    step = sample_rate / float(fps)
    total = int(np.ceil(len(audio) / step))
    peak = -np.inf
    for f0 in range(0, total, block_frames):
        s0, s1 = int(round(f0 * step)), int(round(min(total, f0 + block_frames) * step))
        levels = frame_levels_db(audio[s0:s1], sample_rate, fps, min(total, f0 + block_frames) - f0)
        peak = max(peak, float(levels.max()) if len(levels) else -np.inf)
    return peak


def rest_weights(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int,
                 peak_db: float | None = None) -> np.ndarray:
    """(num_frames,) float32 in [0, 1]: how far each frame's mouth returns to rest (see the module docstring);
    `peak_db`: the recording's loudest frame (`peak_level_db`), default the loudest of `audio`."""
    levels = frame_levels_db(audio, sample_rate, fps, num_frames)
    if len(levels) == 0:
        return np.zeros(0, np.float32)
    peak = max(float(levels.max()) if peak_db is None else float(peak_db), REST_ABS_DB)
    below = peak - levels
    quiet = np.clip((below - REST_START_DB) / (REST_FULL_DB - REST_START_DB), 0.0, 1.0)
    quiet[levels < REST_ABS_DB] = 1.0
    m = REST_MARGIN_FRAMES
    padded = np.pad(quiet, m, mode="edge")
    held = np.min(np.stack([padded[i: i + len(quiet)] for i in range(2 * m + 1)]), axis=0)
    padded = np.pad(held, m, mode="edge")
    smooth = np.mean(np.stack([padded[i: i + len(held)] for i in range(2 * m + 1)]), axis=0)
    return smooth.astype(np.float32)


def rest_mouth(landmarks: torch.Tensor, identity: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`landmarks` (B, F, 68, 2) with the REST_POINTS moved towards `identity` (B, 68, 2) by `weights` (B, F)."""
    out = landmarks.clone()
    idx = list(REST_POINTS)
    w = weights.to(landmarks)[:, :, None, None]
    out[:, :, idx] = landmarks[:, :, idx] + w * (identity.to(landmarks)[:, None, idx] - landmarks[:, :, idx])
    return out
