"""The clip scheduler: long videos are generated clip by clip, overlapping clips cross-faded (DESIGN.md 2.6).

    schedule = ClipSchedule(num_frames, clip_frames=16, overlap=4)
    for start in schedule.starts:
        clip = generate(start, schedule.length)          # (B, length, ...) frames start .. start + length
        for run in schedule.add(start, clip):            # finished frames, in order, each exactly once
            emit(run)
    assert schedule.emitted == num_frames

The last `overlap` frames of a clip are held back until the next clip, which generates them again; the two
versions are cross-faded linearly. Memory is one clip, whatever the video's length.
"""

from __future__ import annotations

import torch


class ClipSchedule:
    def __init__(self, num_frames: int, clip_frames: int, overlap: int):
        if num_frames < 1 or clip_frames < 1 or not 0 <= overlap < clip_frames:
            raise ValueError(f"need num_frames >= 1, clip_frames >= 1 and 0 <= overlap < clip_frames, got "
                             f"{num_frames}, {clip_frames}, {overlap}")
        self.num_frames = int(num_frames)
        self.length = min(int(clip_frames), self.num_frames)
        self.overlap = int(overlap)
        if num_frames <= clip_frames:
            self.starts = [0]
        else:
            stride = clip_frames - overlap
            self.starts = list(range(0, num_frames - clip_frames, stride)) + [num_frames - clip_frames]
        self.emitted = 0
        self._pending = None  # frames of the previous clip not yet emitted (the next clip overlaps them)

    def add(self, start: int, clip: torch.Tensor) -> list[torch.Tensor]:
        """Take the clip that starts at `start` (frames on axis 1); return the runs of frames now finished."""
        runs = []
        if self._pending is not None:
            clip = clip[:, self.emitted - start:]  # drop what was already emitted
            shared = min(self._pending.shape[1], clip.shape[1])
            w = torch.linspace(0, 1, shared + 2, dtype=clip.dtype, device=clip.device)[1:-1]
            w = w.view(1, shared, *([1] * (clip.ndim - 2)))
            runs.append((1 - w) * self._pending[:, :shared] + w * clip[:, :shared])
            clip = clip[:, shared:]
        hold = min(self.overlap if start != self.starts[-1] else 0, clip.shape[1])
        if clip.shape[1] - hold > 0:
            runs.append(clip[:, : clip.shape[1] - hold])
        self._pending = clip[:, clip.shape[1] - hold:] if hold else None
        runs = [r for r in runs if r.shape[1]]
        self.emitted += sum(r.shape[1] for r in runs)
        return runs
