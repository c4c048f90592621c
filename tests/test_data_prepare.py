"""`talking-head prepare` / `preview` on videos and audio the tests make themselves."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talking_head.audio import ffmpeg_exe
from talking_head.cli import main as cli
from talking_head.constants import EMOTIONS, SAMPLE_RATE
from talking_head.data import layout
from talking_head.data.dataset import EmotionAudioDataset, TalkingHeadClipDataset
from talking_head.data.prepare import _Scheduler, run_emotion_audio, run_video_jobs
from talking_head.data.sources import emotion_audio_jobs, mead_jobs, video_jobs
from talking_head.data.synthetic import make_synthetic_emotion_audio, write_synthetic_video
from talking_head.face import dlib_available, landmarks_to_crop

needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib (the [face] extra) is not installed")


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two good videos (audio track / sibling wav) and every kind of bad input."""
    d = tmp_path_factory.mktemp("videos")
    out = {
        "track": write_synthetic_video(d / "track.mp4", seconds=2.0, audio="track", seed=0),
        "wav": write_synthetic_video(d / "sibling.mp4", seconds=2.0, audio="wav", seed=1),
        "noaudio": write_synthetic_video(d / "noaudio.mp4", seconds=1.0, audio=None, seed=2),
        "noface": write_synthetic_video(d / "noface.mp4", seconds=1.0, audio="track", face=False, seed=3),
    }
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is a text file, not a video\n")
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    """One run over good and bad inputs together, with two worker processes."""
    out = tmp_path_factory.mktemp("prepared") / "ds"
    d = videos["dir"]
    files = [d / n for n in ("track.mp4", "sibling.mp4", "noaudio.mp4", "noface.mp4", "empty.mp4", "notes.mp4")]
    rc = cli(["prepare", "video", *map(str, files), "--output", str(out), "--workers", "2", "--quiet"])
    return {"rc": rc, "root": out}


@needs_dlib
def test_bad_inputs_are_recorded_and_the_run_goes_on(prepared):
    assert prepared["rc"] == 0
    root = prepared["root"]
    failures = {Path(f["source"]).name: f["reason"] for f in _read(root / "failures.jsonl")}
    assert set(failures) == {"noaudio.mp4", "noface.mp4", "empty.mp4", "notes.mp4"}
    assert "no audio track and there is no sibling audio file" in failures["noaudio.mp4"]
    assert "no face found in any of the 25 frames" in failures["noface.mp4"]
    assert "empty (0 bytes)" in failures["empty.mp4"]
    assert "not a readable video file" in failures["notes.mp4"]
    ids = sorted(r["clip_id"] for r in _read(root / "manifest.jsonl"))
    assert ids == ["sibling-test", "sibling-train", "track-test", "track-train"]
    assert not [p for p in (root / "clips").iterdir() if p.name.startswith(".")]  # no half clips


@needs_dlib
def test_clips_follow_the_layout_and_split_by_time(prepared, videos):
    root = prepared["root"]
    rows = {r["clip_id"]: r for r in _read(root / "manifest.jsonl")}
    tr, te = rows["track-train"], rows["track-test"]
    assert (tr["split"], te["split"]) == ("train", "test")
    assert (tr["num_frames"], te["num_frames"]) == (45, 5)  # 2 s at 25 fps, 90 / 10
    assert te["source_start_frame"] == 45 and tr["speaker"] == te["speaker"] == videos["dir"].name
    assert tr["emotion"] is None and tr["emotion_id"] == 8 and tr["level"] is None
    assert rows["sibling-train"]["source_audio"].endswith("sibling.wav")
    assert rows["track-train"]["source_audio"] is None
    for r in rows.values():
        assert r["fps"] == 25.0 and r["size"] == 256 and r["landmark_coverage"] == 1.0
        assert r["duration"] == pytest.approx(r["num_frames"] / 25)
        audio, rate = sf.read(root / r["audio"], dtype="float32")
        assert rate == SAMPLE_RATE and len(audio) == r["num_frames"] * 640 == r["num_samples"]
        lm = np.load(root / r["landmarks"], allow_pickle=False)
        assert lm.shape == (r["num_frames"], 68, 2)
        frames = sorted((root / r["frames_dir"]).glob("*.jpg"))
        assert len(frames) == r["num_frames"]
        assert layout.load_frame(root, r, 0).shape == (256, 256, 3)
    # the test part's audio continues where the train part's ends
    full = np.concatenate([sf.read(root / rows[c]["audio"])[0] for c in ("sibling-train", "sibling-test")])
    np.testing.assert_allclose(full, videos["wav"]["audio"][: len(full)], atol=1e-4)


@needs_dlib
def test_crop_follows_the_face_smoothly(prepared, videos):
    root = prepared["root"]
    truth = videos["track"]["landmarks"]  # frame pixels of the drawn face
    boxes = np.concatenate([np.load(root / f"clips/track-{p}/boxes.npy") for p in ("train", "test")])
    lms = np.concatenate([np.load(root / f"clips/track-{p}/landmarks.npy") for p in ("train", "test")])
    # the face drifts across the 224x160 frame: the crop centre follows it ...
    centre = (truth.min(1) + truth.max(1)) / 2
    lag = np.abs(boxes[:, 0] - centre[:, 0])  # smoothing lags a little at the clip's ends
    assert lag.mean() < 2.5 and lag.max() < 8.0  # while the face moves ~5 px a frame
    assert np.ptp(boxes[:, 0]) > 50
    # ... with a steady size and no jitter (the drawn face never changes size)
    assert np.std(boxes[:, 2]) / np.mean(boxes[:, 2]) < 0.03
    assert np.abs(np.diff(boxes[:, 2], 2)).max() < 1.0
    # the stored landmarks are dlib's, in crop pixels: close to the exact drawn ones
    exact = np.stack([landmarks_to_crop(truth[i], boxes[i], 256) for i in range(len(boxes))])
    err = np.linalg.norm(lms - exact, axis=-1)
    assert err.mean() < 256 * 0.03, err.mean()
    assert 0 < lms.min() and lms.max() < 256


@needs_dlib
def test_prepared_videos_feed_the_dataset(prepared):
    ds = TalkingHeadClipDataset(prepared["root"], split="train", clip_frames=16, sample_size=64)
    assert len(ds) == 2 * 2 and ds.speakers == [ds.clips[0]["speaker"]]
    item = ds[0]
    assert item["frames"].shape == (3, 16, 64, 64) and item["audio"].shape == (16 * 640,)
    with pytest.raises(ValueError, match="no usable"):
        TalkingHeadClipDataset(prepared["root"], split="test", clip_frames=16)  # 5-frame test parts
    assert len(TalkingHeadClipDataset(prepared["root"], split="test", clip_frames=4)) == 2


@needs_dlib
def test_rerun_skips_done_clips_and_redoes_broken_ones(videos, tmp_path):
    d = videos["dir"]
    jobs = lambda: video_jobs([d / "track.mp4", d / "sibling.mp4"])  # noqa: E731
    out = tmp_path / "ds"
    first = run_video_jobs(jobs(), out, workers=1, quiet=True)
    assert (first["prepared_now"], first["skipped_done"], first["failed"]) == (4, 0, 0)
    stamp = (out / "clips/track-train/meta.json").stat().st_mtime_ns

    again = run_video_jobs(jobs(), out, workers=1, quiet=True)
    assert (again["prepared_now"], again["skipped_done"]) == (0, 4)
    assert (out / "clips/track-train/meta.json").stat().st_mtime_ns == stamp

    # a run killed mid-clip leaves a temporary folder and misses the clip: both are handled
    shutil.rmtree(out / "clips/sibling-test")
    half = out / "clips/.tmp-sibling-test-x1y2"
    (half / "frames").mkdir(parents=True)
    (half / "frames/000000.jpg").write_bytes(b"\xff\xd8 half a jpeg")
    third = run_video_jobs(jobs(), out, workers=1, quiet=True)
    assert (third["prepared_now"], third["skipped_done"]) == (2, 2)  # sibling redone, track skipped
    assert not half.exists() and (out / "clips/sibling-test/meta.json").is_file()
    assert (out / "clips/track-train/meta.json").stat().st_mtime_ns == stamp
    assert len(_read(out / "manifest.jsonl")) == 4

    # a changed source file is prepared again
    os.utime(d / "track.mp4", ns=(stamp, stamp + 10**9))
    fourth = run_video_jobs(jobs(), out, workers=1, quiet=True)
    assert (fourth["prepared_now"], fourth["skipped_done"]) == (2, 2)

    # other settings into the same folder: refused with a clear message
    with pytest.raises(ValueError, match="was prepared with fps=25"):
        run_video_jobs(jobs(), out, fps=30.0, workers=1, quiet=True)


@needs_dlib
def test_exit_status_is_nonzero_only_when_nothing_was_prepared(videos, tmp_path, capsys):
    d = videos["dir"]
    bad = [str(d / n) for n in ("noaudio.mp4", "empty.mp4", "notes.mp4")]
    assert cli(["prepare", "video", *bad, "--output", str(tmp_path / "a"), "--workers", "1", "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "0 clips" in printed and printed.count("FAILED") == 3
    assert len(_read(tmp_path / "a/failures.jsonl")) == 3
    # a video too short to give both a train and a test part
    write_synthetic_video(tmp_path / "blink.mp4", seconds=0.12, audio="track")
    assert cli(["prepare", "video", str(tmp_path / "blink.mp4"), "--output", str(tmp_path / "b"),
                "--workers", "1", "--quiet"]) == 1  # fmt: skip
    (fail,) = _read(tmp_path / "b/failures.jsonl")
    assert "only 3 frames: too short to split into train 90 % / test 10 %" in fail["reason"]
    capsys.readouterr()
    # a file where the output folder should be: a one-line error, status 2
    (tmp_path / "file").write_text("x")
    assert cli(["prepare", "video", str(d / "track.mp4"), "--output", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_video_sources(tmp_path):
    a, b = tmp_path / "x" / "talk.mp4", tmp_path / "y" / "talk.mp4"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"")
    (tmp_path / "x" / "talk.wav").write_bytes(b"")
    jobs = video_jobs([a, b], test_fraction=0.2, speaker="anna", emotion="happy")
    assert jobs[0]["audio"].endswith("talk.wav") and jobs[1]["audio"] is None
    assert jobs[0]["parts"][0]["clip_id"] != jobs[1]["parts"][0]["clip_id"]  # same stem, unique ids
    assert [p["end"] for p in jobs[0]["parts"]] == [0.8, 1.0]
    assert jobs[0]["speaker"] == "anna" and jobs[0]["emotion"] == "happy"
    one = video_jobs([a], test_fraction=0.0)[0]
    assert [p["clip_id"] for p in one["parts"]] == ["talk"] and one["speaker"] == "x"
    with pytest.raises(ValueError, match="test-fraction"):
        video_jobs([a], test_fraction=1.0)


def test_video_jobs_whole_file_splits(tmp_path):
    """--split file: the last fraction of the files (by name) are whole test clips; --split test: all."""
    files = []
    for i in range(20):
        p = tmp_path / "s1" / f"sent{i:02d}.mp4"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"")
        files.append(p)
    jobs = video_jobs(list(reversed(files)), split="file", test_fraction=0.15)  # order given does not matter
    split = {j["parts"][0]["clip_id"]: j["parts"][0]["split"] for j in jobs}
    assert all(len(j["parts"]) == 1 and (j["parts"][0]["begin"], j["parts"][0]["end"]) == (0.0, 1.0) for j in jobs)
    assert sorted(k for k, v in split.items() if v == "test") == ["sent17", "sent18", "sent19"]
    assert sum(v == "train" for v in split.values()) == 17
    # At least one test and one train file whenever a hold-out is asked for.
    assert [j["parts"][0]["split"] for j in video_jobs(files[:2], split="file", test_fraction=0.01)] == [
        "train", "test"]
    assert {j["parts"][0]["split"] for j in video_jobs(files[:3], split="file", test_fraction=0.0)} == {"train"}
    held = video_jobs(files[:4], split="test")
    assert [j["parts"] for j in held] == [[{"clip_id": f"sent{i:02d}", "split": "test", "begin": 0.0, "end": 1.0}]
                                          for i in range(4)]
    with pytest.raises(ValueError, match="--split"):
        video_jobs(files, split="speaker")


def test_expand_files_keeps_one_container_per_recording(tmp_path, capsys):
    from talking_head.data.prepare import _expand_files

    for name in ("a.mp4", "a.mpg", "b.mpg", "c.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in _expand_files([tmp_path])] == ["a.mp4", "b.mpg", "c.mp4"]
    assert "a as .mp4, .mpg; using a.mp4" in capsys.readouterr().err


def _mead_tree(root, counts, speaker="M001"):
    for (emotion, level), n in counts.items():
        for i in range(1, n + 1):
            v = root / speaker / "video" / "front" / emotion / f"level_{level}" / f"{i:03d}.mp4"
            v.parent.mkdir(parents=True, exist_ok=True)
            v.write_bytes(b"")
            a = root / speaker / "audio" / emotion / f"level_{level}" / f"{i:03d}.m4a"
            a.parent.mkdir(parents=True, exist_ok=True)
            a.write_bytes(b"")


def test_mead_official_split(tmp_path):
    _mead_tree(tmp_path, {("neutral", 1): 12, ("happy", 1): 8, ("happy", 3): 7, ("contempt", 2): 3})
    _mead_tree(tmp_path, {("sad", 1): 7}, speaker="W002")
    jobs = mead_jobs(tmp_path, speakers="M001")
    split = {}
    for j in jobs:
        split.setdefault((j["emotion"], j["level"]), []).append(j["parts"][0]["split"])
    assert split[("neutral", 1)] == ["train"] * 2 + ["test"] * 10
    assert split[("happy", 1)] == ["train"] * 2 + ["test"] * 6
    assert split[("happy", 3)] == ["train"] * 1 + ["test"] * 6
    assert split[("contempt", 2)] == ["test"] * 3
    j = jobs[0]
    assert j["speaker"] == "M001" and j["emotion"] in EMOTIONS
    assert j["audio"].endswith("M001/audio/contempt/level_2/001.m4a")
    assert j["parts"][0]["clip_id"] == "M001_front_contempt_level2_001"
    assert {j["speaker"] for j in mead_jobs(tmp_path)} == {"M001", "W002"}
    assert len(mead_jobs(tmp_path, emotions="happy", levels="3")) == 7
    with pytest.raises(ValueError, match="speakers not found"):
        mead_jobs(tmp_path, speakers="M999")
    with pytest.raises(ValueError, match="no view 'left_30'"):
        mead_jobs(tmp_path, view="left_30")


@needs_dlib
def test_mead_end_to_end_with_a_missing_audio_file(tmp_path):
    root = tmp_path / "MEAD"
    v1 = root / "M030/video/front/happy/level_3/001.mp4"
    v2 = root / "M030/video/front/sad/level_1/001.mp4"
    for v in (v1, v2):
        v.parent.mkdir(parents=True)
    info = write_synthetic_video(v1, seconds=1.0, audio="wav", emotion="happy")
    write_synthetic_video(v2, seconds=1.0, audio="track", emotion="sad", seed=4)
    m4a = root / "M030/audio/happy/level_3/001.m4a"
    m4a.parent.mkdir(parents=True)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(info["audio_path"]), "-c:a", "aac", str(m4a)],
                   check=True)  # fmt: skip
    info["audio_path"].unlink()  # MEAD's audio lives in audio/, not next to the video
    out = tmp_path / "ds"
    assert cli(["prepare", "mead", str(root), "--output", str(out), "--speakers", "M030",
                "--workers", "1", "--quiet"]) == 0  # fmt: skip
    (row,) = _read(out / "manifest.jsonl")
    assert row["clip_id"] == "M030_front_happy_level3_001"
    assert (row["emotion"], row["emotion_id"], row["level"]) == ("happy", EMOTIONS.index("happy"), 3)
    assert row["split"] == "test" and row["speaker"] == "M030" and row["source_kind"] == "mead"
    (fail,) = _read(out / "failures.jsonl")
    assert fail["source"].endswith("sad/level_1/001.mp4")
    assert fail["reason"].startswith("audio file is missing") and "M030/audio/sad/level_1/001.m4a" in fail["reason"]
    item = TalkingHeadClipDataset(out, split="test", clip_frames=8)[0]
    assert item["emotion"].item() == 5 and item["level"].item() == 3


def test_emotion_audio_source_splits_by_speaker(tmp_path, capsys):
    src = make_synthetic_emotion_audio(tmp_path / "ravdess", num_speakers=4, utterances_per_emotion=2,
                                       seconds=0.6, layout="ravdess", sample_rate=22050)
    actor1 = src / "Actor_01"
    sf.write(actor1 / "03-01-02-01-01-01-01.wav", np.zeros(8000, np.float32), 16000)  # calm
    (actor1 / "03-01-05-01-01-01-01.flac").write_bytes(b"")  # zero bytes
    sf.write(actor1 / "interview.wav", np.zeros(800, np.float32), 16000)  # no labels in the name
    items, skipped = emotion_audio_jobs(src, test_speakers="4")
    assert len(skipped) == 2 and any("calm" in s["reason"] for s in skipped)
    assert {it["split"] for it in items if it["speaker"] == "04"} == {"test"}
    out = tmp_path / "ds"
    rc = cli(["prepare", "emotion-audio", str(src), "--output", str(out), "--test-speakers", "4",
              "--workers", "2", "--quiet"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "speakers: train 01,02,03; test 04" in printed
    rows = _read(out / "manifest.jsonl")
    assert len(rows) == 4 * 7 * 2  # 7 RAVDESS emotions (no contempt), calm skipped, the empty file failed
    (fail,) = _read(out / "failures.jsonl")
    assert fail["source"].endswith(".flac") and "empty" in fail["reason"]
    r = next(r for r in rows if "-06-" in r["clip_id"])  # RAVDESS 06 = fearful
    assert r["emotion"] == "fear" and r["emotion_id"] == EMOTIONS.index("fear") and r["level"] in (1, 2)
    audio, rate = sf.read(out / r["audio"])
    assert rate == SAMPLE_RATE and len(audio) == r["num_samples"]
    train, test = EmotionAudioDataset(out, "train"), EmotionAudioDataset(out, "test")
    assert (len(train), len(test)) == (3 * 14, 14)
    assert train.class_counts()[EMOTIONS.index("contempt")] == 0
    assert train.class_counts()[EMOTIONS.index("neutral")] == 6
    # second run: everything is already there
    again = run_emotion_audio(*emotion_audio_jobs(src, test_speakers="4"), out, workers=1, quiet=True)
    assert again["prepared_now"] == 0 and again["skipped_done"] == 56
    # --calm neutral keeps calm as neutral
    items, skipped = emotion_audio_jobs(src, calm="neutral")
    assert len(skipped) == 1 and sum(it["source_label"] == "02" for it in items) == 1


@needs_dlib
def test_preview_sheet_and_video(prepared, tmp_path, capsys):
    root = prepared["root"]
    png, mp4 = tmp_path / "sheet.png", tmp_path / "clip.mp4"
    assert cli(["preview", "--data", str(root), "--clip", "track-train", "--output", str(png), "--frames", "6"]) == 0
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (4 * 256, 2 * 256 + 34)
    assert cli(["preview", "--data", str(root), "--clip", "sibling-test", "--output", str(mp4)]) == 0
    from talking_head.audio import probe_media

    info = probe_media(mp4)
    assert info["has_audio"] and info["fps"] == 25.0 and info["duration"] == pytest.approx(0.2, abs=0.1)
    assert cli(["preview", "--data", str(root), "--clip", "nope", "--output", str(png)]) == 2
    assert "no clip 'nope'" in capsys.readouterr().err


def _crash(_):
    os._exit(3)


def _double(x):
    return 2 * x


def test_a_crashing_worker_is_recorded_not_fatal():
    sched = _Scheduler(workers=2)
    done, errors = [], []
    try:
        sched.add(1, _crash, (0,), done.append, errors.append)
        for k in range(4):
            sched.add(1, _double, (k,), done.append, errors.append)
        sched.run()
    finally:
        sched.shutdown()
    assert sorted(done) == [0, 2, 4, 6] and len(errors) == 1


@needs_dlib
def test_a_killed_run_is_completed_by_the_next(videos, tmp_path):
    """SIGKILL a real run at some point, run again: the dataset ends complete and consistent."""
    import signal
    import sys
    import time

    d, out = videos["dir"], tmp_path / "ds"
    args = ["prepare", "video", str(d / "track.mp4"), str(d / "sibling.mp4"), "--output", str(out), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "talking_head.cli", *args, "--workers", "2"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "clips").is_dir() and any((out / "clips").iterdir()):
            break  # killed while the first clip is being written (or just after)
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cli([*args, "--workers", "1"]) == 0
    rows = _read(out / "manifest.jsonl")
    assert sorted(r["clip_id"] for r in rows) == ["sibling-test", "sibling-train", "track-test", "track-train"]
    assert [p.name for p in (out / "clips").iterdir() if p.name.startswith(".")] == []
    for r in rows:
        assert len(list((out / r["frames_dir"]).glob("*.jpg"))) == r["num_frames"]
        assert np.load(out / r["landmarks"]).shape[0] == r["num_frames"]
