"""Identity similarity and mouth sharpness (talking_head.evaluation.face_measures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest

from talking_head.evaluation import face_measures
from talking_head.evaluation.face_measures import (FaceMeasures, cosine_similarity, laplacian_variance,
                                                   sharpness_ratio, summarise_measures)

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "assets" / "demo_identity.jpg"
OTHER_PERSON = REPO.parent / "shared" / "data" / "talking" / "grid" / "s1" / "bbaf3s.mp4"  # GRID s1, not the photo's
needs_model = pytest.mark.skipif(face_measures.recognition_model_path() is None or not PHOTO.is_file(),
                                 reason="dlib's face-recognition model (the face extra) or the demo photo is absent")


def photo() -> np.ndarray:
    with PIL.Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB"))


def blurred(image: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(PIL.Image.fromarray(image).filter(PIL.ImageFilter.GaussianBlur(radius)))


def test_a_blurred_mouth_is_less_sharp_than_itself():
    rng = np.random.default_rng(0)
    image = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    assert sharpness_ratio(image, image) == pytest.approx(1.0)
    assert sharpness_ratio(blurred(image, 1.5), image) < 0.3
    assert sharpness_ratio(image, blurred(image, 1.5)) > 3
    assert sharpness_ratio(image, np.full_like(image, 7)) is None  # a flat truth has no sharpness to match
    assert laplacian_variance(np.full((8, 8, 3), 0.5)) == 0.0  # float frames in [0, 1] work too
    with pytest.raises(ValueError, match="RGB"):
        laplacian_variance(np.zeros((8, 8)))


@needs_model
def test_identity_similarity_is_one_for_the_same_image_and_lower_for_another():
    embed = face_measures.FaceEmbedder()
    image = photo()
    same = embed(image)
    assert same.shape == (128,)
    assert cosine_similarity(same, embed(image)) == pytest.approx(1.0, abs=1e-6)
    # The same person, mirrored: still close to 1.
    assert cosine_similarity(same, embed(np.ascontiguousarray(image[:, ::-1]))) > 0.95
    assert embed(np.full((128, 128, 3), 90, np.uint8)) is None  # no face: no embedding
    if OTHER_PERSON.is_file():  # another person: lower (dlib's embeddings of two people are still ~0.8 alike)
        from talking_head.data.process import iter_video_frames

        other = embed(next(iter(iter_video_frames(str(OTHER_PERSON), 25.0, stop=1))))
        assert cosine_similarity(same, other) < 0.9


def test_a_missing_recognition_model_skips_the_measure_with_a_note(monkeypatch):
    monkeypatch.setattr(face_measures, "recognition_model_path", lambda: None)
    measures = FaceMeasures(256)
    assert measures.embedder is None and "identity similarity skipped" in measures.note
    summary = summarise_measures([{"sharpness": 0.5}, {"sharpness": 1.5}])
    assert summary == {"identity_similarity": None, "gt_identity_similarity": None, "identity_frames": 0,
                       "sharpness_ratio": 1.0}
