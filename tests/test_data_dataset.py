"""The synthetic prepared set and the shared training Datasets (talking_head.data.dataset)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from talking_head.constants import EMOTIONS, NULL_EMOTION, SAMPLE_RATE
from talking_head.data import layout
from talking_head.data.dataset import EmotionAudioDataset, TalkingHeadClipDataset, collate_clips
from talking_head.data.synthetic import (
    frame_loudness,
    make_synthetic_dataset,
    make_synthetic_emotion_audio,
)

F = 16


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(root, num_speakers=2, clips_per_emotion=1,
                                  emotions=("neutral", "happy", "sad"), seconds=2.0, fps=25, size=64)


def test_layout_is_plain_files(synth):
    info = json.loads((synth / "dataset.json").read_text())
    assert info["format"] == "talking-head-prepared" and info["size"] == 64 and info["fps"] == 25
    assert info["emotions"] == list(EMOTIONS)
    rows = layout.read_manifest(synth)
    assert len(rows) == 2 * 3 * 2
    assert {r["split"] for r in rows} == {"train", "test"}
    for r in rows:
        assert r["num_frames"] == 50 and r["num_samples"] == 50 * 640
        lm = np.load(synth / r["landmarks"], allow_pickle=False)  # no pickles anywhere
        assert lm.shape == (50, 68, 2) and lm.dtype == np.float32 and np.isfinite(lm).all()
        assert np.load(synth / r["boxes"], allow_pickle=False).shape == (50, 3)
        audio, rate = sf.read(synth / r["audio"], dtype="float32")
        assert rate == SAMPLE_RATE and audio.shape == (50 * 640,)
        assert len(list((synth / r["frames_dir"]).glob("*.jpg"))) == 50
        assert r["emotion_id"] == EMOTIONS.index(r["emotion"])
        assert json.loads((synth / "clips" / r["clip_id"] / "meta.json").read_text()) == r


def test_clip_items_follow_the_contract(synth):
    ds = TalkingHeadClipDataset(synth, split="train", clip_frames=F, seed=0)
    # 6 train clips of 50 frames: 3 non-overlapping 16-frame windows each
    assert len(ds) == 6 * 3 and ds.speakers == ["synth0", "synth1"]
    item = ds[4]
    assert item["frames"].shape == (3, F, 64, 64) and item["frames"].dtype == torch.float32
    assert -1.0 <= item["frames"].min() and item["frames"].max() <= 1.0
    assert item["frames"].min() < -0.5 and item["frames"].max() > 0.5  # not a constant image
    assert item["landmarks"].shape == (F, 68, 2) and item["landmarks"].dtype == torch.float32
    assert 0.0 < item["landmarks"].min() and item["landmarks"].max() < 1.0
    assert item["landmark_valid"].dtype == torch.bool and item["landmark_valid"].all()
    assert item["reference"].shape == (3, 64, 64) and item["reference_landmarks"].shape == (68, 2)
    assert item["audio"].shape == (round(F / 25 * SAMPLE_RATE),) and item["audio"].dtype == torch.float32
    assert item["emotion"].dtype == torch.int64 and item["level"].item() == -1
    assert item["fps"].item() == 25.0 and isinstance(item["clip_id"], str)
    assert item["speaker"] in ("synth0", "synth1") and item["start_frame"].dtype == torch.int64


def test_landmarks_sit_on_the_drawn_features(synth):
    ds = TalkingHeadClipDataset(synth, split="train", clip_frames=F, random_crop=False)
    for i in (0, 7, 13):
        item = ds[i]
        img = ((item["frames"].permute(1, 2, 3, 0).numpy() + 1) * 127.5)  # (F, S, S, 3)
        px = item["landmarks"].numpy() * 64
        for f in range(0, F, 5):
            def at(p):
                x, y = np.clip(np.floor(p).astype(int), 0, 63)
                return img[f, y, x]
            mouth = at(px[f, 48:60].mean(0))  # lips or the open mouth: red, little green
            cheek = at((px[f, 2] + px[f, 31]) / 2)  # skin between jaw and nose
            eye = at(px[f, 36:42].mean(0))  # the iris, drawn dark
            assert mouth[1] / mouth[0] < 0.62 < cheek[1] / cheek[0], (mouth, cheek)
            assert eye.mean() < cheek.mean() - 25


def test_mouth_opens_with_the_audio(synth):
    """Audio/frame alignment end to end: the mouth opening follows the loudness of each frame's audio."""
    rows = [r for r in layout.read_manifest(synth) if r["split"] == "train"]
    for r in rows[:3]:
        lm = np.load(synth / r["landmarks"])
        opening = lm[:, 66, 1] - lm[:, 62, 1]
        audio, _ = sf.read(synth / r["audio"], dtype="float32")
        loud = frame_loudness(audio, r["fps"], r["num_frames"])
        assert np.corrcoef(opening, loud)[0, 1] > 0.9
        # shifted by 2 frames, the match is clearly worse
        assert np.corrcoef(opening[2:], loud[:-2])[0, 1] < np.corrcoef(opening, loud)[0, 1] - 0.1


def test_audio_is_exactly_the_window(synth):
    ds = TalkingHeadClipDataset(synth, split="train", clip_frames=F, seed=3)
    for i in range(0, len(ds), 5):
        item = ds[i]
        row = next(r for r in ds.clips if r["clip_id"] == item["clip_id"])
        audio, _ = sf.read(synth / row["audio"], dtype="float32")
        s = int(item["start_frame"])
        np.testing.assert_array_equal(item["audio"].numpy(), audio[s * 640 : (s + F) * 640])
        lm = np.load(synth / row["landmarks"]) / 64
        np.testing.assert_allclose(item["landmarks"].numpy(), lm[s : s + F], atol=1e-6)
    padded = TalkingHeadClipDataset(synth, split="train", clip_frames=F, random_crop=False,
                                    audio_pad_frames=2)[0]
    assert padded["audio"].shape == ((F + 4) * 640,)
    assert padded["start_frame"] == 0 and (padded["audio"][: 2 * 640] == 0).all()


def test_random_crops_are_reproducible(synth):
    def starts(ds):
        return [ds.window(i) for i in range(len(ds))]

    a = TalkingHeadClipDataset(synth, clip_frames=F, seed=5)
    assert all((a[i]["clip_id"], int(a[i]["start_frame"])) == (a.clips[c]["clip_id"], s)
               for i, (c, s) in list(enumerate(starts(a)))[::4])
    b = TalkingHeadClipDataset(synth, clip_frames=F, seed=5)
    assert starts(a) == starts(b) == starts(a)
    torch.testing.assert_close(a[3]["reference"], b[3]["reference"])
    b.set_epoch(1)
    assert starts(b) != starts(a)
    a.set_epoch(1)
    assert starts(a) == starts(b)
    assert starts(TalkingHeadClipDataset(synth, clip_frames=F, seed=6)) != starts(b)
    # without random crops: fixed non-overlapping windows whatever the epoch
    c = TalkingHeadClipDataset(synth, clip_frames=F, random_crop=False, seed=5)
    first = starts(c)
    assert [s for _, s in first[:3]] == [0, 16, 32]
    c.set_epoch(7)
    assert starts(c) == first
    torch.testing.assert_close(c[2]["reference"], TalkingHeadClipDataset(
        synth, clip_frames=F, random_crop=False, seed=5)[2]["reference"])


def test_reference_is_the_same_speaker_at_another_time(synth):
    ds = TalkingHeadClipDataset(synth, clip_frames=F, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = int(rng.integers(len(ds.clips)))
        s = int(rng.integers(0, 50 - F))
        rc, rf = ds._pick_reference(c, s, rng)
        assert ds.clips[rc]["speaker"] == ds.clips[c]["speaker"]
        assert ds.clips[rc]["split"] == "train"
        if rc == c:
            assert rf < s - F or rf >= s + 2 * F  # another moment
    # the returned reference is that frame, with its landmarks
    item = ds[5]
    lm_all = {r["clip_id"]: np.load(synth / r["landmarks"]) / 64 for r in ds.clips}
    hits = [(cid, f) for cid, lm in lm_all.items() for f in range(len(lm))
            if np.allclose(lm[f], item["reference_landmarks"].numpy(), atol=1e-6)]
    assert hits and all(cid.startswith(item["speaker"] + "_") for cid, _ in hits)
    first = TalkingHeadClipDataset(synth, clip_frames=F, reference="first")[4]
    row = next(r for r in ds.clips if r["clip_id"] == first["clip_id"])
    np.testing.assert_allclose(first["reference_landmarks"].numpy(),
                               np.load(synth / row["landmarks"])[0] / 64, atol=1e-6)
    same = TalkingHeadClipDataset(synth, clip_frames=F, reference="same_clip")
    for i in range(len(same)):
        c, s = same.window(i, same._rng(i))
        assert same._pick_reference(c, s, same._rng(i))[0] == c


def test_sample_size_and_test_split(synth):
    ds = TalkingHeadClipDataset(synth, split="test", clip_frames=8, sample_size=32, random_crop=False)
    assert len(ds) == 6 * 6  # 50 frames -> 6 windows of 8
    item = ds[0]
    assert item["frames"].shape == (3, 8, 32, 32) and item["reference"].shape == (3, 32, 32)
    assert 0 < item["landmarks"].min() and item["landmarks"].max() < 1  # still crop-normalised
    assert {ds[i]["emotion"].item() for i in range(0, len(ds), 6)} == {0, 5, 6}


def test_short_clips_are_skipped_not_padded(synth):
    with pytest.raises(ValueError, match="no usable"):
        TalkingHeadClipDataset(synth, clip_frames=51)
    ds = TalkingHeadClipDataset(synth, clip_frames=50, random_crop=False)
    assert len(ds) == 6 and not ds.skipped


def test_frames_without_a_face_are_never_targets(synth, tmp_path):
    root = make_synthetic_dataset(tmp_path / "holes", emotions=("neutral",), seconds=2.0, size=32,
                                  test_clips_per_emotion=0)
    row = layout.read_manifest(root)[0]
    lm = np.load(root / row["landmarks"])
    lm[[10, 30]] = np.nan  # as prepare writes frames where dlib found no face
    np.save(root / row["landmarks"], lm)
    ds = TalkingHeadClipDataset(root, clip_frames=8, random_crop=True)
    assert [s for _, s in ds.index] == [0, 11, 19, 31, 39]
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = int(ds[i]["start_frame"])
            assert not (s <= 10 < s + 8 or s <= 30 < s + 8)
    loose = TalkingHeadClipDataset(root, clip_frames=8, random_crop=False, allow_invalid=True)
    item = loose[1]  # frames 8..15 include frame 10
    assert not item["landmark_valid"][2] and item["landmark_valid"].sum() == 7
    assert torch.isfinite(item["landmarks"]).all()


def test_dataloader_and_collate(synth):
    ds = TalkingHeadClipDataset(synth, clip_frames=F, sample_size=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_clips,
                                         generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 3, F, 32, 32) and batch["audio"].shape == (4, F * 640)
    assert batch["emotion"].shape == (4,) and len(batch["clip_id"]) == 4
    assert "attention_mask" not in batch


def test_unlabelled_video_clips_use_the_null_emotion(synth, tmp_path):
    root = make_synthetic_dataset(tmp_path / "nolabel", emotions=("neutral",), size=32)
    rows = layout.read_manifest(root)
    for r in rows:
        r["emotion"], r["emotion_id"] = None, NULL_EMOTION
    layout.write_jsonl_atomic(root / "manifest.jsonl", rows)
    assert TalkingHeadClipDataset(root, clip_frames=8)[0]["emotion"].item() == NULL_EMOTION
    with pytest.raises(ValueError, match="no emotion-labelled"):
        EmotionAudioDataset(root)


def test_emotion_audio_dataset(tmp_path):
    root = make_synthetic_emotion_audio(tmp_path / "emo", num_speakers=3, utterances_per_emotion=2,
                                        seconds=1.5, test_speakers=1)
    train = EmotionAudioDataset(root, split="train", max_seconds=1.0, seed=0)
    test = EmotionAudioDataset(root, split="test", max_seconds=4.0, random_crop=False)
    assert len(train) == 2 * 8 * 2 and len(test) == 8 * 2
    assert {test[i]["speaker"] for i in range(len(test))} == {"03"}
    assert train.class_counts().tolist() == [4] * 8
    item = train[0]
    assert item["audio"].shape == (SAMPLE_RATE,) and item["label"].dtype == torch.int64
    torch.testing.assert_close(EmotionAudioDataset(root, max_seconds=1.0, seed=0)[0]["audio"], item["audio"])
    train.set_epoch(1)
    assert not torch.equal(train[0]["audio"], item["audio"])
    lengths = [test[i]["audio"].shape[0] for i in range(4)]
    assert len(set(lengths)) > 1  # whole utterances of varying length
    batch = collate_clips([test[i] for i in range(4)])
    assert batch["audio"].shape == (4, max(lengths))
    assert batch["attention_mask"].dtype == torch.int64
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["label"].shape == (4,) and isinstance(batch["speaker"], list)


def test_synthetic_set_is_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", emotions=("angry",), size=32, seconds=0.5)
    b = make_synthetic_dataset(tmp_path / "b", emotions=("angry",), size=32, seconds=0.5)
    for r in layout.read_manifest(a):
        np.testing.assert_array_equal(np.load(a / r["landmarks"]), np.load(b / r["landmarks"]))
        assert (a / r["frames_dir"] / "000003.jpg").read_bytes() == (b / r["frames_dir"] / "000003.jpg").read_bytes()
    with pytest.raises(ValueError, match="unknown emotion"):
        make_synthetic_dataset(tmp_path / "c", emotions=("calm",))


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TalkingHeadClipDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no manifest.jsonl"):
        TalkingHeadClipDataset(tmp_path)
