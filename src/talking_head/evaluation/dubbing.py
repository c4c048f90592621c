"""The dubbing protocol's pieces (DESIGN.md 7.5, issue 13): the test clip itself is the identity video.

* `clip_video(clip)`: the clip's stored frames and their landmarks, as `pipe(audio, frames, ...)` takes a video;
* `frozen_mouth_frames(clip)`: the floor: every ground-truth frame with the reference frame's lower face
  pasted in (the box and feathered region of the renderer, at the box's own resolution), i.e. a video
  whose mouth does not move.
"""

from __future__ import annotations

import numpy as np
import torch

from talking_head.evaluation.clips import EvalClip


def clip_video(clip: EvalClip) -> tuple[list[np.ndarray], np.ndarray]:
    """(frames, (T, 68, 2) landmarks in their pixels, gaps filled from the nearest face frame)."""
    return [clip.frame(i) for i in range(clip.num_frames)], clip.filled_landmarks()


def frozen_mouth_frames(clip: EvalClip, mask_noise=None):
    """Yield the floor's frames (uint8, the stored size): the reference's lower face on every frame."""
    from talking_head.identity import VideoIdentity
    from talking_head.models.mask_noise import GaussianMaskNoise
    from talking_head.mouth_box import BoxTrack, feather

    frames, landmarks = clip_video(clip)
    source = VideoIdentity(frames, clip.fps, max_size=max(frames[0].shape[:2]), landmarks=landmarks,
                           reference=clip.reference_index)
    try:
        layer = mask_noise if mask_noise is not None else GaussianMaskNoise()
        track = BoxTrack(source, torch.from_numpy(landmarks), tuple(layer.config.region_points))
        side = track.reference_place.side  # the reference's box at its own resolution: nothing is upscaled
        region = layer.compute_region(track.local[None], side, side, track.ref_local[None, None])[:, :, 0]
        patch = torch.cat([track.reference_box(side), feather(region)], dim=1)  # (1, 4, side, side)
        for i in range(clip.num_frames):
            yield track.composite(range(i, i + 1), patch)[0]
    finally:
        source.close()
