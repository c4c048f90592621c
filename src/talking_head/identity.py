"""Where the identity frames come from (DESIGN.md 7.3, 7.6): one photo, held still.

`load_photo` turns whatever the caller gave (a path, PIL image, array or tensor) into a `Photo`: the image
at the resolution the video will have (the photo's own, capped by `max_size` on the long side, even sides for
H.264), its 68 landmarks in that image's pixels, and the square face crop the landmark model normalises
landmarks to (`talking_head.face.face_crop_box`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from talking_head.constants import NUM_LANDMARKS
from talking_head.face import detect_face_landmarks, face_crop_box
from talking_head.image import load_image

# Default cap on the output's long side, in pixels.
DEFAULT_MAX_SIZE = 1024


@dataclass
class Photo:
    """The identity image as the video shows it (see the module docstring)."""

    image: np.ndarray  # (H, W, 3) uint8, H and W even
    landmarks: np.ndarray  # (68, 2) float32 pixels of `image`
    face_box: tuple[float, float, float]  # (cx, cy, side) of the square face crop, pixels of `image`

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.image.shape[0], self.image.shape[1]

    def to_crop(self, points):
        """Pixels of the image -> landmarks normalised to the face crop (the landmark model's space)."""
        cx, cy, side = self.face_box
        return (points - np.array([cx - side / 2, cy - side / 2], np.float32)) / side

    def from_crop(self, points: torch.Tensor) -> torch.Tensor:
        """Landmarks normalised to the face crop -> pixels of the image."""
        cx, cy, side = self.face_box
        return points * side + points.new_tensor((cx - side / 2, cy - side / 2))


def _check_points(points, name: str) -> np.ndarray:
    pts = np.asarray(points.detach().cpu() if torch.is_tensor(points) else points, dtype=np.float32)
    if pts.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"{name} must be ({NUM_LANDMARKS}, 2) pixel points, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return pts


def _fit(image: np.ndarray, max_size: int) -> tuple[np.ndarray, float]:
    """The image with its long side at most `max_size` and both sides even; and the scale applied."""
    h, w = image.shape[:2]
    factor = min(1.0, max_size / max(h, w))
    if factor < 1.0:
        nw, nh = max(2, int(round(w * factor / 2)) * 2), max(2, int(round(h * factor / 2)) * 2)
        resized = PIL.Image.fromarray(image).resize((nw, nh), PIL.Image.BILINEAR)
        return np.asarray(resized), nw / w
    # No resampling: drop an odd last row/column, so every other pixel is the photo's own.
    return np.ascontiguousarray(image[: h - h % 2, : w - w % 2]), 1.0


def load_photo(identity_frame, identity_landmarks=None, crop_face: bool = True,
               max_size: int = DEFAULT_MAX_SIZE, name: str = "identity_frame") -> Photo:
    """The identity photo, its landmarks and its face crop (see the module docstring).

    identity_landmarks: (68, 2) pixels of `identity_frame` as given (before any resizing), instead of
        detecting them with dlib (the largest face is used when there are several).
    crop_face: False when the frame already is a square face crop (a prepared dataset's frame): its centre
        square is the image, and the face crop is all of it.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 64:
        raise ValueError(f"max_size must be a whole number of pixels >= 64, got {max_size!r}")
    image = load_image(identity_frame, name=name)
    points = None if identity_landmarks is None else _check_points(identity_landmarks, "identity_landmarks")
    if not crop_face:
        h, w = image.shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        image = image[y0:y0 + s, x0:x0 + s]
        if points is not None:
            points = points - np.array([x0, y0], np.float32)
    image, factor = _fit(image, int(max_size))
    if points is None:
        points = detect_face_landmarks(image, name=name)
    else:
        points = points * factor
    points = points.astype(np.float32)
    if crop_face:
        box = face_crop_box(points)
    else:
        h, w = image.shape[:2]
        box = (w / 2.0, h / 2.0, float(min(h, w)))
    return Photo(image=image, landmarks=points, face_box=box)


class StillIdentity:
    """One photo held still (DESIGN 7.3): every output frame shows it. The interface VideoIdentity shares."""

    num_frames = 1
    reference = 0
    has_face = np.array([True])

    def __init__(self, photo: Photo):
        self._photo = photo
        self.size = photo.size

    def index(self, i: int) -> int:
        return 0

    def photo(self, j: int) -> Photo:
        return self._photo

    def landmarks_at(self, j: int) -> np.ndarray:
        return self._photo.landmarks

    def face_box(self, j: int) -> tuple[float, float, float]:
        return self._photo.face_box

    def image(self, j: int) -> np.ndarray:
        return self._photo.image

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------- dubbing mode
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")


def is_video(identity, batch: int = 1) -> bool:
    """Whether an identity argument is a video: a video file path, a (T, H, W, 3) array or tensor with T > 1, or
    (for one audio input) a list of more than one frame. A list of `batch` photos is a batch, not a video."""
    import os

    if isinstance(identity, (str, os.PathLike)):
        return str(identity).lower().endswith(VIDEO_SUFFIXES)
    if isinstance(identity, np.ndarray) or torch.is_tensor(identity):
        return identity.ndim == 4 and identity.shape[0] > 1 and identity.shape[-1] in (1, 3, 4)
    return isinstance(identity, (list, tuple)) and batch == 1 and len(identity) > 1


class VideoIdentity:
    """A video as the identity (DESIGN 7.4): every output frame is a frame of it with the lower face redrawn.

    Frames are decoded at the output fps, scaled to `max_size`, tracked with dlib (or given landmarks), and kept
    as (lossless) PNG files in a temporary folder, so memory does not grow with the video's length. Output frame i shows
    video frame `index(i)`: forward, then backward (ping-pong) when the audio is longer than the video.
    `reference`: the frame whose mouth is the texture reference (the photo of photo mode): the given index, or
    the face frame with the most closed mouth. `max_frames`: decode at most this many (the output's length).
    """

    def __init__(self, video, fps: float, max_size: int = DEFAULT_MAX_SIZE, landmarks=None, reference=None,
                 max_frames: int | None = None, name: str = "identity_video"):
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="talking_head_video_")
        self.fps = float(fps)
        self.name = name
        try:
            self._read(video, max_size, landmarks, max_frames)
        except BaseException:  # a refused video leaves no frames on disk
            self._dir.cleanup()
            raise
        self.reference = self._choose_reference(reference)

    def _read(self, video, max_size, landmarks, max_frames) -> None:
        """Decode, store and track every frame; smooth the face boxes."""
        from talking_head.data.process import FaceTracker, smoothing_window
        from talking_head.face import fill_missing_landmarks, smooth_boxes

        name = self.name
        points, count, size = [], 0, None
        tracker = None
        for i, frame in enumerate(self._frames(video, name, self.fps, max_frames)):
            image, factor = _fit(frame, int(max_size))
            if size is None:
                size = image.shape[:2]
            elif image.shape[:2] != size:
                raise ValueError(f"{name}: frame {i} is {image.shape[1]}x{image.shape[0]}, frame 0 "
                                 f"{size[1]}x{size[0]}; every frame must have one size")
            PIL.Image.fromarray(image).save(self._path(i), compress_level=1)  # lossless: frames are copied
            if landmarks is not None:
                pts = np.asarray(landmarks[i], np.float32) * factor if i < len(landmarks) else None
            else:
                tracker = tracker or FaceTracker()
                pts = tracker(image)
            points.append(np.full((NUM_LANDMARKS, 2), np.nan, np.float32) if pts is None else pts)
            count += 1
        if count == 0:
            raise ValueError(f"{name} has no video frames")
        self.num_frames, self.size = count, size
        self.landmarks = np.stack(points)  # (T, 68, 2) pixels, NaN where no face
        self.has_face = np.isfinite(self.landmarks).all(axis=(1, 2))
        if not self.has_face.any():
            raise ValueError(f"no face found in any frame of {name}")
        boxes = np.full((count, 3), np.nan)
        for i in np.flatnonzero(self.has_face):
            boxes[i] = face_crop_box(self.landmarks[i])
        # The same smoothing as `talking-head prepare`; frames without a face get interpolated boxes.
        self.face_boxes = smooth_boxes(boxes, smoothing_window(self.fps))
        self.filled_landmarks = fill_missing_landmarks(self.landmarks)

    @staticmethod
    def _frames(video, name, fps, max_frames):
        import os

        if isinstance(video, (str, os.PathLike)):
            from talking_head.data.process import PrepareError, iter_video_frames

            if not os.path.isfile(video):
                raise FileNotFoundError(f"{name} not found: {video}")
            try:
                yield from iter_video_frames(video, fps, stop=max_frames)
            except PrepareError as err:
                raise ValueError(f"{name} {video}: {err}") from None
            return
        for i, frame in enumerate(video):
            if max_frames is not None and i >= max_frames:
                return
            yield load_image(frame, name=f"{name} frame {i}")

    def _path(self, i: int) -> str:
        return f"{self._dir.name}/{i:07d}.png"

    def _choose_reference(self, reference) -> int:
        if reference is not None:
            if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) \
                    or not 0 <= reference < self.num_frames:
                raise ValueError(f"reference_frame must be a frame index in [0, {self.num_frames}), got {reference!r}")
            if not self.has_face[reference]:
                raise ValueError(f"reference_frame {reference}: no face was found in that frame of {self.name}")
            return int(reference)
        lm = self.landmarks[self.has_face]
        opening = np.linalg.norm(lm[:, 66] - lm[:, 62], axis=1) / np.linalg.norm(lm[:, 16] - lm[:, 0], axis=1)
        return int(np.flatnonzero(self.has_face)[int(np.argmin(opening))])

    def index(self, i: int) -> int:
        """The video frame shown as output frame i: forward, then backward (ping-pong)."""
        n = self.num_frames
        if n == 1:
            return 0
        k = i % (2 * n - 2)
        return k if k < n else 2 * n - 2 - k

    def image(self, j: int) -> np.ndarray:
        with PIL.Image.open(self._path(j)) as im:
            return np.asarray(im.convert("RGB"))

    def photo(self, j: int) -> Photo:
        """Video frame j as a Photo (its landmarks filled from the nearest face frame, its smoothed face box)."""
        return Photo(image=self.image(j), landmarks=self.filled_landmarks[j], face_box=self.face_box(j))

    def landmarks_at(self, j: int) -> np.ndarray:
        return self.filled_landmarks[j]

    def face_box(self, j: int) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.face_boxes[j])

    def close(self) -> None:
        self._dir.cleanup()

