"""The mouth box: the one geometry the pipeline, the trainer and the evaluator share (DESIGN.md 7.2, 7.6).

The renderer regenerates only the lower face. It works on a square box around it, cut from the image at the
image's own resolution and resized to the UNet's `sample_size`; what it generates is blended back into the
image with a feathered mask, and every pixel outside that mask is the image's own.

    box = MouthBox.from_landmarks(points)            # points: (..., 68, 2) pixels of the image, any frames
    crop = box.cut(images, 64)                       # (N, C, H, W) -> (N, C, 64, 64), edges replicated
    local = box.normalise(points)                    # landmarks in [0, 1] of the box
    out = box.paste(images, generated, feather(region))   # blended back, everything else untouched

For a video (dubbing) the box follows the face: `BoxTrack` places one box, fixed relative to each frame's
smoothed face crop, on every output frame, and cuts and pastes frame by frame.

Coordinates are continuous pixels as in `talking_head.face` (pixel i covers [i, i + 1)). A box has integer
corners, so cutting and pasting move whole pixels and the pasted area lines up exactly with the cut one.
Everything here is a pure function of tensors; no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.head_pose import align_pose
from talking_head.models.mask_noise import LOWER_FACE_POINTS, gaussian_blur
from talking_head.mouth_rest import REST_POINTS

# Box side / the lower face's larger extent (jaw 2-14 across, nose base to chin down). The region grows about
# 5 % of the side beyond the outermost landmark and the feather lies inside the region, so 1.4 leaves ~10 % of
# the side of untouched pixels around the region on every side: the blend never reaches the box edge (a box
# only 1.25 x the region showed an edge at the jaw, DESIGN 7.2 item 6).
BOX_SCALE = 1.4
# Smallest box accepted, in image pixels: below it there is no mouth left to draw.
MIN_BOX_SIDE = 16
# Std of the feather, as a fraction of the box side.
FEATHER_SIGMA = 0.02


@dataclass(frozen=True)
class MouthBox:
    """A square box of the image: top-left corner (x0, y0) and side, integer pixels."""

    x0: int
    y0: int
    side: int

    @classmethod
    def from_landmarks(cls, points, scale: float = BOX_SCALE, indices=LOWER_FACE_POINTS) -> "MouthBox":
        """The box around the lower-face landmarks of every frame in `points` (..., 68, 2) pixels.

        Its centre is the centre of the points' bounding box, its side `scale` times the larger extent.
        """
        pts = points.detach().cpu().numpy() if torch.is_tensor(points) else np.asarray(points, dtype=np.float64)
        if pts.ndim < 2 or pts.shape[-2:] != (68, 2):
            raise ValueError(f"landmarks must be (..., 68, 2) pixel points, got shape {tuple(pts.shape)}")
        sel = pts[..., list(indices), :].reshape(-1, 2)
        sel = sel[np.isfinite(sel).all(axis=1)]
        if len(sel) == 0:
            raise ValueError("no finite lower-face landmarks to place the mouth box")
        lo, hi = sel.min(axis=0), sel.max(axis=0)
        extent = float(max(hi - lo))
        side = int(round(scale * extent))
        if side < MIN_BOX_SIDE:
            raise ValueError(f"the face is too small: its lower face spans {extent:.1f} pixels, the mouth box "
                             f"would be {side} px (at least {MIN_BOX_SIDE} needed); use a larger photo")
        cx, cy = (lo + hi) / 2.0
        return cls(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side)

    # ---------------------------------------------------------------- coordinates
    def normalise(self, points):
        """Pixel points of the image -> [0, 1] coordinates of the box (same type as given)."""
        origin = (self.x0, self.y0)
        if torch.is_tensor(points):
            return (points - points.new_tensor(origin)) / self.side
        return (np.asarray(points, dtype=np.float32) - np.asarray(origin, np.float32)) / self.side

    def denormalise(self, points):
        """[0, 1] coordinates of the box -> pixel points of the image."""
        if torch.is_tensor(points):
            return points * self.side + points.new_tensor((self.x0, self.y0))
        return np.asarray(points, dtype=np.float32) * self.side + np.asarray((self.x0, self.y0), np.float32)

    def scaled(self, factor: float) -> "MouthBox":
        """The same box in an image resized by `factor`."""
        side = max(1, int(round(self.side * factor)))
        return MouthBox(int(round(self.x0 * factor)), int(round(self.y0 * factor)), side)

    def inside(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the part of the box inside a height x width image (may be empty)."""
        return (max(0, self.x0), max(0, self.y0), min(width, self.x0 + self.side), min(height, self.y0 + self.side))

    # ---------------------------------------------------------------- cut and paste
    def cut(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """(N, C, H, W) images -> (N, C, size, size) float: the box, resized (antialiased bilinear).

        The parts of the box outside the image repeat its edge pixels (as `talking_head.face.crop_face`).
        Integer (uint8) images are cut first and converted after, so only the box's pixels become float.
        """
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be an (N, C, H, W) tensor, got {shape}")
        height, width = images.shape[-2:]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        if x1 <= 0 or y1 <= 0 or self.x0 >= width or self.y0 >= height:
            raise ValueError(f"the mouth box {self} lies outside the {width}x{height} image")
        if self.x0 >= 0 and self.y0 >= 0 and x1 <= width and y1 <= height:
            region = images[..., self.y0:y1, self.x0:x1]
        else:
            rows = torch.arange(self.y0, y1, device=images.device).clamp(0, height - 1)
            cols = torch.arange(self.x0, x1, device=images.device).clamp(0, width - 1)
            region = images.index_select(-2, rows).index_select(-1, cols)
        return resize(region.float() if not region.is_floating_point() else region, size)

    def paste(self, images: torch.Tensor, patch: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Blend `patch` (N, C, s, s) into the box of `images` (N, C, H, W) with `weight` (N or 1, 1, s, s).

        Both are resized to the box side; only the box's pixels inside the image change (a new tensor).
        """
        _check_images(images)
        height, width = images.shape[-2:]
        x0, y0, x1, y1 = self.inside(height, width)
        out = images.clone()
        if x1 <= x0 or y1 <= y0:
            return out
        patch = resize(patch.to(images.dtype), self.side)
        weight = resize(weight.to(images.dtype), self.side)
        sx, sy = x0 - self.x0, y0 - self.y0
        p = patch[..., sy:sy + (y1 - y0), sx:sx + (x1 - x0)]
        w = weight[..., sy:sy + (y1 - y0), sx:sx + (x1 - x0)]
        out[..., y0:y1, x0:x1] = w * p + (1 - w) * images[..., y0:y1, x0:x1]
        return out


def _check_images(images) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float (N, C, H, W) tensor, got {shape}")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, size, size), bilinear; antialiased when shrinking (like PIL's)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def feather(region: torch.Tensor, sigma: float = FEATHER_SIGMA) -> torch.Tensor:
    """The blend weight of a binary region (N, 1, s, s): 1 inside, a smooth ramp to 0 AT the region's edge.

    The ramp lies inside the region (2 * blur - 1, clipped), so every pixel outside the region keeps the
    image's own value exactly, and the pixels generated inside it fade into the image over ~2 sigma.
    """
    if region.ndim != 4:
        raise ValueError(f"region must be (N, 1, H, W), got shape {tuple(region.shape)}")
    soft = gaussian_blur(region.float(), sigma * region.shape[-1])
    return (2.0 * soft - 1.0).clamp(0.0, 1.0) * region.float()


# --------------------------------------------------------------------------------- a box per output frame
# Resolution of the face-crop-relative coordinates a BoxTrack places its box in (boxes are integer pixels).
_VIRTUAL_SIDE = 1024


def follow_face(source, moves: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Landmark displacements (F, 68, 2) from the reference's landmarks, normalised to the face crop, applied to
    each output frame's own face.

    Output frame i (moves[i - start]) shows frame `source.index(i)` of the identity (talking_head.identity): its
    landmarks, with the points that move in speech (REST_POINTS: jaw 4-12, mouth) replaced by the reference's,
    carried into that frame's head pose (talking_head.head_pose), plus the displacement scaled by its face
    crop's side, in pixels of that frame. For a video, the frame's own mouth belongs to the speech being
    replaced: only its head pose is kept, the mouth is the reference's moved by the new speech.
    """
    speech = list(REST_POINTS)
    reference = torch.from_numpy(np.asarray(source.landmarks_at(source.reference), np.float64))
    out = []
    for i, move in enumerate(moves, start):
        j = source.index(i)
        own = torch.from_numpy(np.array(source.landmarks_at(j), np.float64))
        if j != source.reference:
            posed = align_pose(reference[None, None], own[None])[0, 0]
            own[speech] = posed[speech]
        out.append(own + move.double() * source.face_box(j)[2])
    return torch.stack(out).float()


class BoxTrack:
    """The mouth boxes of one video (a photo is a video of one still frame), and their cut and paste.

    One box, fixed relative to the face crop, is placed on the reference frame's lower face and on the lower
    face of the landmarks known before rendering, `points`: (K, 68, 2) for the first K of `num_frames` output
    frames (default K = all), in pixels of the identity frame each is drawn on. On each output frame it lands on
    that frame's (smoothed) face crop. The box does not depend on the frames after the K-th, so they can be
    rendered as their landmarks arrive (`to_local`); the 1.4 x margin of the box holds a mouth opened wide (the
    landmark model moves the lips and the chin by at most ~10 % of the face crop, the box reaches ~25 % beyond
    the chin). `local` (when all frames' points are given): the targets in [0, 1] of the box; `ref_local`: the
    reference's the same way.
    """

    def __init__(self, source, points: torch.Tensor | None = None, indices=LOWER_FACE_POINTS,
                 scale: float = BOX_SCALE, num_frames: int | None = None):
        if points is None and num_frames is None:
            raise ValueError("give the frames' points or their number")
        self.source = source
        self.num_frames = int(points.shape[0]) if num_frames is None else int(num_frames)
        ref_crop = np.array(source.face_box(source.reference))
        ref_norm = (source.landmarks_at(source.reference) - (ref_crop[:2] - ref_crop[2] / 2)) / ref_crop[2]
        known = [ref_norm[None]]
        if points is not None:
            known.append(self._normalised(range(len(points)), points))
        self._unit = MouthBox.from_landmarks(np.concatenate(known) * _VIRTUAL_SIDE, scale, indices)  # face-crop units
        self._placed: dict[int, MouthBox] = {}
        self.reference_place = self._place(ref_crop)
        shown = {source.index(i) for i in range(min(self.num_frames, 2 * max(1, source.num_frames)))}
        side = min([self.box(j).side for j in shown] + [self.reference_place.side])
        if side < MIN_BOX_SIDE:
            raise ValueError(f"the face is too small: the mouth box would be {side} px (at least {MIN_BOX_SIDE} "
                             "needed); use a larger photo or video")
        self.ref_local = torch.from_numpy(self._in_box(ref_norm)).float()
        self.local = self.to_local(range(self.num_frames), points) if points is not None and len(
            points) == self.num_frames else None
        self._images: dict[int, np.ndarray] = {}

    def _normalised(self, frames: range, points) -> np.ndarray:
        """Pixel points of output frames `frames` -> normalised to each one's face crop, (L, 68, 2) float64."""
        crops = np.array([self.source.face_box(self.source.index(i)) for i in frames])  # (L, 3): cx, cy, side
        pts = points.numpy() if torch.is_tensor(points) else np.asarray(points)
        return (pts - (crops[:, :2] - crops[:, 2:] / 2)[:, None]) / crops[:, 2, None, None]

    def _in_box(self, norm: np.ndarray) -> np.ndarray:
        return (norm * _VIRTUAL_SIDE - np.array([self._unit.x0, self._unit.y0], np.float64)) / self._unit.side

    def to_local(self, frames: range, points) -> torch.Tensor:
        """(L, 68, 2) pixel landmarks of output frames `frames` -> [0, 1] coordinates of their boxes."""
        return torch.from_numpy(self._in_box(self._normalised(frames, points))).float()

    def frame_landmarks(self, frames: range) -> torch.Tensor:
        """(L, 68, 2) the identity frames' own landmarks (pixels) under output frames `frames`: for a video, the
        mouth of the speech being replaced, which the region must cover too."""
        return torch.from_numpy(np.stack([self.source.landmarks_at(self.source.index(i)) for i in frames])).float()

    def _place(self, crop) -> MouthBox:
        cx, cy, side = (float(v) for v in crop)
        f = side / _VIRTUAL_SIDE
        return MouthBox(int(round(cx - side / 2 + self._unit.x0 * f)), int(round(cy - side / 2 + self._unit.y0 * f)),
                        max(1, int(round(self._unit.side * f))))

    def box(self, j: int) -> MouthBox:
        """The box on identity frame j."""
        if j not in self._placed:
            self._placed[j] = self._place(self.source.face_box(j))
        return self._placed[j]

    def image(self, j: int) -> np.ndarray:
        """Identity frame j, (H, W, 3) uint8 (the last few are kept: a clip and its overlap)."""
        if j not in self._images:
            if len(self._images) >= 32:
                self._images.pop(next(iter(self._images)))
            image = np.ascontiguousarray(self.source.image(j))
            self._images[j] = image if image.flags.writeable else image.copy()  # torch wants writable memory
        return self._images[j]

    def _cut(self, box: MouthBox, j: int, size: int) -> torch.Tensor:
        """(1, 3, size, size) in [-1, 1]: `box` of identity frame j (only its pixels are converted)."""
        return box.cut(torch.from_numpy(self.image(j)).permute(2, 0, 1)[None], size) / 127.5 - 1

    def reference_box(self, size: int) -> torch.Tensor:
        """(1, 3, size, size): the reference frame's box, the mouth texture."""
        return self._cut(self.reference_place, self.source.reference, size)

    def cut(self, frames: range, size: int) -> torch.Tensor:
        """(3, L, size, size): the boxes of output frames `frames`, cut from their identity frames."""
        index = self.source.index
        return torch.cat([self._cut(self.box(index(i)), index(i), size) for i in frames]).transpose(0, 1)

    def composite(self, frames: range, run: torch.Tensor) -> np.ndarray:
        """(n, H, W, 3) uint8: boxes + weights `run` (n, 4, S, S) blended into copies of their frames, only
        inside the box; frames of the identity without a face are passed through unchanged."""
        out = []
        for i, item in zip(frames, run):
            j = self.source.index(i)
            frame = self.image(j).copy()
            box = self.box(j)
            x0, y0, x1, y1 = box.inside(*frame.shape[:2])
            if self.source.has_face[j] and x1 > x0 and y1 > y0:
                region = torch.from_numpy(frame[y0:y1, x0:x1]).permute(2, 0, 1)[None].float() / 127.5 - 1
                local = MouthBox(box.x0 - x0, box.y0 - y0, box.side)  # the same box, in the region's pixels
                blended = local.paste(region, item[None, :3], item[None, 3:])[0]
                frame[y0:y1, x0:x1] = ((blended + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
            out.append(frame)
        return np.stack(out)
