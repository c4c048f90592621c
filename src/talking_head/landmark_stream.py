"""Driving landmarks made as the renderer needs them (issue 15: the first frame does not wait for the whole speech).

The landmark model runs chunk by chunk, a little ahead of the clip being rendered, so the first frame comes out
after the first chunk, whatever the audio's length, and no stage holds the whole speech's activations:

    stream = LandmarkStream(num_frames, chunks)      # chunks: an iterator of (B, n, 68, 2), consecutive frames
    stream.frames(0, 16)                             # runs the iterator only as far as frame 16
    stream.all()                                     # every frame (the output's `landmarks`)

Caller-given landmarks are a stream of one chunk (`LandmarkStream.given`).
"""

from __future__ import annotations

from typing import Iterator

import torch


class LandmarkStream:
    """Per-frame landmarks (B, F, 68, 2) from consecutive chunks, produced on demand and kept (0.5 kB per frame)."""

    def __init__(self, num_frames: int, chunks: Iterator[torch.Tensor]):
        self.num_frames = int(num_frames)
        self._chunks = iter(chunks)
        self._parts: list[tuple[int, torch.Tensor]] = []  # (first frame, chunk)
        self.available = 0  # frames produced so far
        self.known = None  # all frames, when they were given before rendering

    @classmethod
    def given(cls, points: torch.Tensor) -> "LandmarkStream":
        stream = cls(points.shape[1], iter([points]))
        stream.frames(0, stream.num_frames)
        stream.known = points
        return stream

    def _produce(self, upto: int) -> None:
        while self.available < upto:
            chunk = next(self._chunks, None)
            if chunk is None or chunk.shape[1] == 0:
                raise RuntimeError(f"the landmark chunks ended at frame {self.available} of {self.num_frames}")
            self._parts.append((self.available, chunk))
            self.available += chunk.shape[1]

    def frames(self, f0: int, f1: int) -> torch.Tensor:
        """(B, f1 - f0, 68, 2): frames f0 .. f1 - 1."""
        if not 0 <= f0 <= f1 <= self.num_frames:
            raise ValueError(f"frames {f0}..{f1} outside 0..{self.num_frames}")
        self._produce(f1)
        pieces = [part[:, max(f0, s) - s: min(f1, s + part.shape[1]) - s]
                  for s, part in self._parts if s < f1 and s + part.shape[1] > f0]
        return torch.cat(pieces, dim=1) if len(pieces) != 1 else pieces[0]

    def all(self) -> torch.Tensor:
        """(B, F, 68, 2): every frame."""
        return self.frames(0, self.num_frames)
