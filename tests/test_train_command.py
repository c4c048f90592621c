"""`talking-head train` (issue 14) on tiny synthetic videos: the whole run with a budget of seconds, stopped by
SIGTERM and resumed; each bad input refused in one line before training; a full disk while saving a
checkpoint; and the trainers' `--max_train_minutes`."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talking_head.cli import main as cli
from talking_head.constants import SAMPLE_RATE
from talking_head.face import dlib_available

needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib (the [face] extra) is not installed")
pytestmark = needs_dlib


@pytest.fixture
def tiny(monkeypatch):
    """Tiny recipes: 64² crops, a tiny landmark model and a 16² renderer, checkpoints every 2 updates."""
    from talking_head.train_command import checks, stages

    monkeypatch.setattr(checks, "MIN_SECONDS", 1.0)
    monkeypatch.setattr(stages, "PREPARE", {"size": 64, "workers": 1})
    monkeypatch.setattr(stages, "LANDMARK_FLAGS", [
        "--train_batch_size", "2", "--clip_frames", "8", "--validation_clips", "0", "--checkpointing_steps", "2",
        "--checkpoints_total_limit", "1", "--report_to", "none"])
    monkeypatch.setattr(stages, "LANDMARK_SCRATCH", ["--preset", "tiny", "--learning_rate", "1e-3"])
    monkeypatch.setattr(stages, "RENDERER_FLAGS", [
        "--preset", "tiny", "--resolution", "16", "--clip_frames", "4", "--train_batch_size", "2", "--use_ema",
        "--validation_clips", "0", "--num_validation_videos", "0", "--checkpointing_steps", "2",
        "--checkpoints_total_limit", "1", "--report_to", "none"])
    monkeypatch.setattr(stages, "EVALUATION", dict(stages.EVALUATION, sampler="dpm:2", samples=1))
    return stages


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from talking_head.data.synthetic import write_synthetic_video

    d = tmp_path_factory.mktemp("videos")
    write_synthetic_video(d / "me.mp4", seconds=4.0, audio="track", seed=0)
    for name, kw in (("short", {}), ("noaudio", {"audio": None}), ("silent", {"audio": None}),
                     ("noface", {"face": False})):
        write_synthetic_video(d / f"{name}.mp4", seconds=1.5, seed=1, **kw)
    sf.write(d / "silent.wav", np.zeros(int(1.5 * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    _two_people(d / "two.mp4")
    (d / "notes.mp4").write_text("this is a text file, not a video\n")
    return d


def _two_people(path, seconds=1.5, fps=25.0):
    """Two drawn talking faces side by side, with speech."""
    from talking_head.data.synthetic import _speaker_style, render_clip
    from talking_head.video import VideoWriter

    rng = np.random.default_rng(0)
    faces = [render_clip(_speaker_style(k, np.random.default_rng([k, 0, 1])), "neutral", seconds, fps, 128, rng)
             for k in range(2)]
    frames = np.concatenate([faces[0][0], faces[1][0]], axis=2)  # (T, 128, 256, 3)
    frames = np.pad(frames, ((0, 0), (16, 16), (16, 16), (0, 0)), constant_values=90)
    with VideoWriter(path, fps=fps, audio=faces[0][2]) as writer:
        writer.write(frames)


def _run(capsys, *argv):
    rc = cli(["train", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------------- the whole run
def test_sigterm_then_the_same_command_resumes_and_ends_with_a_pipeline(tiny, videos, tmp_path, capsys):
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    out = tmp_path / "my-pipeline"
    args = (videos / "me.mp4", "--output", out, "--minutes", "0.2", "--from-scratch", "--device", "cpu")

    def terminate_after_a_checkpoint():  # SIGTERM once the landmark model's first checkpoint exists
        deadline = time.time() + 60
        while time.time() < deadline and not list((out / "work" / "landmarks").glob("checkpoint-*")):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_a_checkpoint, daemon=True)
    killer.start()
    rc, _, err = _run(capsys, *args)
    killer.join()
    assert rc == 128 + signal.SIGTERM, err
    assert "stopped on SIGTERM" in err and "run the same command again" in err
    from talking_head.training import latest_checkpoint

    # The landmark stage is stopped (or, on a slow machine, the renderer if the landmarks were done by then).
    done = json.loads((out / "train_command.json").read_text())["stages"]
    stage = "renderer" if done.get("landmarks") else "landmarks"
    stopped_at = latest_checkpoint(out / "work" / stage)
    assert stopped_at is not None and f"(checkpoint {stopped_at})" in err
    assert not (out / "model_index.json").exists()

    rc, printed, err = _run(capsys, *args)
    assert rc == 0, err
    log = (out / "work" / "logs" / "train.log").read_text()
    assert f"resumed from {stopped_at} at global step {stopped_at.name.split('-')[1]}" in log
    pipe = TalkingHeadPipeline.from_pretrained(out)
    assert pipe.emotion_classifier is None and pipe.landmark_model is not None
    assert "landmarks 25 %, renderer 65 %, evaluation 10 %" in printed and "resuming" in printed
    assert "verdict: beats the still photo on" in printed
    assert f"talking-head generate --pipeline {out}" in printed
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["config"]["protocol"] == "photo" and metrics["verdict"]["line"] in printed
    report = (out / "report" / "report.md").read_text()
    assert "**Verdict: the pipeline beats the still photo on" in report
    assert (out / "report" / "contact_sheet.jpg").is_file() and list((out / "report" / "samples").rglob("*.mp4"))
    state = json.loads((out / "train_command.json").read_text())
    assert state["finished"] and {"prepare", "landmarks", "renderer", "evaluation"} <= set(state["stages"])
    assert state["stages"]["landmarks"]["seconds"] <= 0.2 * 60 * 0.25 + 10  # its share, plus one update

    rc, printed, _ = _run(capsys, *args)  # once more: finished, so it only repeats the summary
    assert rc == 0 and "is finished already" in printed and "verdict:" in printed


# -------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, message", [
    ("short", "a video of at least 10 s is needed"),
    ("noaudio", "has no speech: no audio track"),
    ("silent", "has no speech: its audio is silent"),
    ("noface", "no face found on"),
    ("two", "shows two or more faces"),
    ("notes", "is not a video file"),
    ("missing", "no such file"),
])
def test_bad_videos_are_refused_in_one_line(name, message, videos, tmp_path, capsys, monkeypatch):
    from talking_head.train_command import checks

    if name != "short":
        monkeypatch.setattr(checks, "MIN_SECONDS", 1.0)
    rc, _, err = _run(capsys, videos / f"{name}.mp4", "--output", tmp_path / "p")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "p").exists()


def test_an_output_folder_holding_something_else_is_refused(tiny, videos, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    rc, _, err = _run(capsys, videos / "me.mp4", "--output", out)
    assert rc == 2 and "already holds something else" in err
    rc, _, err = _run(capsys, videos / "me.mp4", "--output", tmp_path / "new", "--resume")
    assert rc == 2 and "holds no run of talking-head train to resume" in err


def test_too_little_disk_space_is_refused_before_anything_is_written(tiny, videos, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**7, 10**7))
    rc, _, err = _run(capsys, videos / "me.mp4", "--output", tmp_path / "p")
    assert rc == 2 and "not enough free disk space" in err and not (tmp_path / "p").exists()


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one(tiny, videos, tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    saved = []
    real_save = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        if saved:  # the second save: the disk is full
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(output_dir)
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    out = tmp_path / "p"
    rc, _, err = _run(capsys, videos / "me.mp4", "--output", out, "--minutes", "0.2", "--from-scratch")
    [checkpoint] = (out / "work" / "landmarks").glob("checkpoint-*")
    assert checkpoint.name == "checkpoint-2"
    errors = [line for line in err.splitlines() if "error" in line]  # (the others: the status line)
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert "the disk is full" in errors[0] and f"the last checkpoint ({checkpoint}) is intact" in errors[0]
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["global_step"] == 2 and state["train_seconds"] > 0
    from safetensors.torch import load_file

    assert load_file(checkpoint / "model.safetensors")  # complete and readable


# ---------------------------------------------------------------------------------- --max_train_minutes
def test_max_train_minutes_stops_training_saves_and_resumes_with_the_rest(tmp_path):
    from talking_head.data.synthetic import make_synthetic_dataset
    from talking_head.trainers import landmarks
    from talking_head.training import latest_checkpoint

    data = make_synthetic_dataset(tmp_path / "data", num_speakers=1, clips_per_emotion=1, emotions=("neutral",),
                                  seconds=1.0, size=32)
    out = tmp_path / "run"
    argv = ["--data_dir", str(data), "--output_dir", str(out), "--preset", "tiny", "--clip_frames", "8",
            "--train_batch_size", "2", "--max_train_steps", "100000", "--validation_clips", "0",
            "--checkpointing_steps", "1000", "--report_to", "none", "--resume_from_checkpoint", "latest"]
    started = time.monotonic()
    landmarks.main(argv + ["--max_train_minutes", "0.03"])
    assert time.monotonic() - started < 30
    first = json.loads((latest_checkpoint(out) / "training_state.json").read_text())
    assert 1.8 <= first["train_seconds"] < 6 and 0 < first["global_step"] < 100000
    assert (out / "landmark_model" / "config.json").is_file()

    def last_state():
        return json.loads((latest_checkpoint(out) / "training_state.json").read_text())

    landmarks.main(argv + ["--max_train_minutes", "0.03"])  # the budget is spent: nothing more to train
    assert last_state()["global_step"] == first["global_step"]
    landmarks.main(argv + ["--max_train_minutes", "0.06"])  # a larger budget: continues from the checkpoint
    more = last_state()
    assert more["global_step"] > first["global_step"] and more["train_seconds"] >= 3.6


def test_budget_lr_schedule_follows_the_clock():
    from talking_head.trainers.budget import CLOCK, BudgetLambda

    CLOCK.configure(1.0)  # one minute
    f = BudgetLambda("cosine", warmup=10, total=10**6)
    assert f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    CLOCK.previous = 30.0  # half the budget spent
    assert f(11) == pytest.approx(0.5, abs=1e-3)
    CLOCK.previous = 60.0
    assert f(12) == pytest.approx(0.0, abs=1e-6) and CLOCK.exhausted()
    CLOCK.configure(None)
    assert f(10**6) == pytest.approx(0.0) and not CLOCK.exhausted()


def test_verdict_names_what_the_pipeline_misses():
    from talking_head.evaluation.report import verdict

    row = {"psnr": 20.6, "ssim": 0.69, "m_ld": 2.3, "f_ld": 3.5}
    floor = {"psnr": 20.5, "ssim": 0.70, "m_ld": 2.2, "f_ld": 3.6}
    v = verdict({"config": {"protocol": "photo"},
                 "methods": {"static": {"summary": floor}, "pipeline": {"summary": row}}})
    assert v["line"] == "beats the still photo on 2/4 metrics; misses SSIM (0.690 vs 0.700), M-LD (2.30 vs 2.20)"
    assert v["beats"] == ["PSNR", "F-LD"]
    assert verdict({"methods": {"static": {"summary": floor}}}) is None
