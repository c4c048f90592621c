"""Preparation on the real recordings in ../shared/data (skipped when they are absent)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from talking_head.cli import main as cli
from talking_head.data.dataset import EmotionAudioDataset, TalkingHeadClipDataset
from talking_head.face import dlib_available

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OBAMA = DATA / "talking" / "obama"
RAVDESS = DATA / "emotion" / "ravdess16k"

needs_obama = pytest.mark.skipif(not (OBAMA / "address_clip1.mp4").is_file() or not dlib_available(),
                                 reason="../shared/data or dlib is not available")


def _rows(root):
    return {r["clip_id"]: r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def obama(tmp_path_factory):
    out = tmp_path_factory.mktemp("obama") / "ds"
    rc = cli(["prepare", "video", str(OBAMA / "address_clip1.mp4"), str(OBAMA / "address_wide_720p.mp4"),
              "--output", str(out), "--max-seconds", "2", "--workers", "2", "--quiet"])
    assert rc == 0
    return out


@needs_obama
def test_face_crop_clip_keeps_its_framing(obama):
    rows = _rows(obama)
    tr, te = rows["address_clip1-train"], rows["address_clip1-test"]
    assert tr["num_frames"] + te["num_frames"] == 50 and te["num_frames"] == 5
    assert tr["source_audio"].endswith("address_clip1.wav")  # no audio track: the sibling wav
    assert min(tr["landmark_coverage"], te["landmark_coverage"]) >= 0.99
    boxes = np.load(obama / tr["boxes"])
    # already a face crop: our crop is nearly the whole 256x256 frame (face.py's calibration)
    assert np.all(np.abs(boxes[:, 2] - 256) < 256 * 0.1)
    lm = np.load(obama / tr["landmarks"]) / 256
    assert 0.1 < lm[..., 0].min() and lm[..., 0].max() < 0.9 and lm[..., 1].max() < 0.95


@needs_obama
def test_wide_clip_is_cropped_to_the_face(obama):
    rows = _rows(obama)
    r = rows["address_wide_720p-train"]
    assert r["source_size"] == [1280, 720] and r["source_audio"] is None  # AAC track in the mp4
    assert r["landmark_coverage"] >= 0.99
    boxes = np.load(obama / r["boxes"])
    assert np.all((300 < boxes[:, 2]) & (boxes[:, 2] < 500))  # the face, not the 720p frame
    assert np.std(boxes[:, 2]) < 10  # a steady crop
    lm = np.load(obama / r["landmarks"]) / 256
    # landmarks centred in the crop and spanning about half of it (scale 1.9)
    span = (lm.max(axis=1) - lm.min(axis=1)).max(axis=1)
    assert np.all((0.45 < span) & (span < 0.6))
    centre = (lm.max(axis=1) + lm.min(axis=1)) / 2
    assert np.abs(centre[:, 0] - 0.5).max() < 0.05 and np.abs(centre[:, 1] - 0.58).max() < 0.06
    item = TalkingHeadClipDataset(obama, clip_frames=16, sample_size=64, random_crop=False)[0]
    assert item["frames"].shape == (3, 16, 64, 64) and item["audio"].shape == (16 * 640,)


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="../shared/data/emotion/ravdess16k is absent")
def test_ravdess_prepares_with_a_speaker_split(tmp_path):
    src = tmp_path / "ravdess"
    for actor in ("Actor_01", "Actor_02"):  # a few files of two actors, linked, not copied
        (src / actor).mkdir(parents=True)
        for f in sorted((RAVDESS / actor).iterdir())[:10]:
            os.symlink(f, src / actor / f.name)
    out = tmp_path / "ds"
    assert cli(["prepare", "emotion-audio", str(src), "--output", str(out), "--test-speakers", "2",
                "--workers", "1", "--quiet"]) == 0
    rows = _rows(out)
    assert {r["speaker"] for r in rows.values() if r["split"] == "test"} == {"02"}
    assert {r["speaker"] for r in rows.values() if r["split"] == "train"} == {"01"}
    assert all(r["emotion"] in ("neutral", "happy") for r in rows.values())  # 01, 03 (02 calm: skipped)
    test = EmotionAudioDataset(out, "test", random_crop=False)
    assert len(test) == sum(r["split"] == "test" for r in rows.values()) and test[0]["audio"].ndim == 1
