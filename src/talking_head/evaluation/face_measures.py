"""Two measures of every image method (DESIGN.md 8.5): is it still the same person, and is the mouth sharp.

* **identity similarity**: the cosine similarity of dlib's face-recognition embeddings (the 128-d ResNet that
  `face-recognition-models` ships) of an output frame and of the identity frame, averaged over every
  `IDENTITY_EVERY`-th scored frame (an embedding costs ~0.1 s on one core); the ground truth's own similarity
  to the identity frame is the reference (a person's real frames do not score 1 either).
* **mouth sharpness**: the variance of the Laplacian of the grey image inside the clip's mouth box, output
  over ground truth, per frame, averaged: 1 is as sharp as the real mouth, a blurred mouth scores below.

`MeasuredClipScorer` adds both to the rows of talking_head.evaluation.scoring's `ClipScorer`; `FaceEmbedder`
is None (with a note) when dlib or its recognition model is missing: the measure is then skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from talking_head.evaluation.metrics import to_uint8
from talking_head.evaluation.scoring import ClipScorer, resize

# Every how many scored frames the identity embedding is computed.
IDENTITY_EVERY = 5
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def recognition_model_path() -> Path | None:
    """dlib's face-recognition ResNet shipped by face-recognition-models, found without importing the package."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "models" / RECOGNITION_MODEL
        if path.is_file():
            return path
    return None


class FaceEmbedder:
    """dlib's 128-d face embedding of the largest face of an image (68 landmarks, then the ResNet)."""

    def __init__(self):
        from talking_head.face import FaceLandmarkDetector, dlib_available

        path = recognition_model_path()
        if not dlib_available() or path is None:
            raise ImportError(f"identity similarity needs dlib and {RECOGNITION_MODEL} (pip install "
                              "'talking-head[face]')")
        import dlib

        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(str(path))
        self._landmarks = FaceLandmarkDetector(upsample=0)

    def __call__(self, image) -> np.ndarray | None:
        """The embedding (128,) float64 of the largest face of a uint8 RGB image, or None without a face."""
        image = np.ascontiguousarray(to_uint8(image))
        points = self._landmarks.detect(image)
        if points is None:
            return None
        dlib = self._dlib
        parts = dlib.points([dlib.point(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in points])
        lo, hi = points.min(axis=0), points.max(axis=0)
        shape = dlib.full_object_detection(dlib.rectangle(*(int(v) for v in (lo[0], lo[1], hi[0], hi[1]))), parts)
        return np.asarray(self._model.compute_face_descriptor(image, shape), np.float64)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def laplacian_variance(image) -> float:
    """Variance of the (4-neighbour) Laplacian of an RGB image's grey level: high where there is fine detail."""
    from scipy.ndimage import laplace

    rgb = to_uint8(image).astype(np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 3:
        raise ValueError(f"images must be RGB (H, W, 3) of at least 3x3 pixels, got shape {rgb.shape}")
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    return float(laplace(grey, mode="nearest")[1:-1, 1:-1].var())


def sharpness_ratio(output, ground_truth) -> float | None:
    """Laplacian variance of `output` over that of `ground_truth` (same region); None when the truth is flat."""
    truth = laplacian_variance(ground_truth)
    return laplacian_variance(output) / truth if truth > 1e-9 else None


class FaceMeasures:
    """The measures of one evaluation run: the embedder (or None, with `note` saying why) and the embeddings of
    the identity and ground-truth frames, computed once and shared by every method."""

    def __init__(self, size: int, enabled: bool = True):
        self.size = int(size)
        self.embedder, self.note = None, None
        if enabled:
            try:
                self.embedder = FaceEmbedder()
            except (ImportError, RuntimeError) as err:
                self.note = f"identity similarity skipped: {err}"
        else:
            self.note = "identity similarity skipped (landmark detection is off)"
        self._cache: dict = {}

    def _truth(self, clip, index: int | None) -> np.ndarray | None:
        """The embedding of the clip's identity frame (index None) or of its ground-truth frame `index`."""
        key = (clip.clip_id, index)
        if key not in self._cache:
            frame = clip.reference if index is None else clip.frame(index)
            self._cache[key] = self.embedder(resize(frame, self.size))
        return self._cache[key]

    def identity(self, clip, index: int, frame: np.ndarray) -> dict:
        """{"identity": output vs identity frame, "gt_identity": ground truth vs identity frame} (None where
        dlib finds no face)."""
        ident = self._truth(clip, None)
        if ident is None:
            return {"identity": None, "gt_identity": None}
        out, gt = self.embedder(frame), self._truth(clip, index)
        return {"identity": None if out is None else cosine_similarity(out, ident),
                "gt_identity": None if gt is None else cosine_similarity(gt, ident)}


class MeasuredClipScorer(ClipScorer):
    """A ClipScorer whose rows also hold `sharpness` (every scored frame) and `identity` / `gt_identity` (every
    IDENTITY_EVERY-th scored frame, when the embedder is there)."""

    def __init__(self, *args, measures: FaceMeasures, **kwargs):
        super().__init__(*args, **kwargs)
        self.measures = measures
        self._scored_count = 0

    def add(self, frame, *args, **kwargs) -> None:
        index = self.next_index
        super().add(frame, *args, **kwargs)
        if index not in self.scored:
            return
        row = self.rows[-1]
        gen = resize(to_uint8(frame), self.size)
        gt = resize(self.clip.frame(index), self.size)
        row["sharpness"] = sharpness_ratio(self._in_box(gen), self._in_box(gt))
        if self.measures.embedder is not None and self._scored_count % IDENTITY_EVERY == 0:
            row.update(self.measures.identity(self.clip, index, gen))
        self._scored_count += 1


def summarise_measures(rows: list[dict]) -> dict:
    """Means over the frames of `rows` (one clip's, or every clip's pooled)."""
    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return (float(np.mean(values)) if values else None), len(values)

    identity, n_identity = mean("identity")
    gt_identity, _ = mean("gt_identity")
    sharpness, _ = mean("sharpness")
    return {"identity_similarity": identity, "gt_identity_similarity": gt_identity,
            "identity_frames": n_identity, "sharpness_ratio": sharpness}
