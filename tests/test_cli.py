"""The `talking-head` command: init, generate, demo, and one-line errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import soundfile

from conftest import SPEECH
from talking_head.audio import probe_media
from talking_head.cli import main


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["init", "--preset", "tiny", "--sample-size", "32", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    PIL.Image.fromarray(data.astronaut()).save(path)
    return path


def test_console_script_is_installed():
    exe = shutil.which("talking-head") or str(__import__("pathlib").Path(sys.executable).with_name("talking-head"))
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "generate" in proc.stdout and "init" in proc.stdout


def test_init_writes_a_loadable_pipeline(tiny_pipeline):
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_pretrained(tiny_pipeline)
    assert pipe.sample_size == 32


def test_generate_writes_mp4_with_video_and_audio_of_the_right_duration(tiny_pipeline, astronaut_png, tmp_path, capsys):
    pytest.importorskip("dlib")
    out = tmp_path / "talk.mp4"
    rc = main(["generate", "--pipeline", str(tiny_pipeline), "--audio", str(SPEECH), "--identity", str(astronaut_png),
               "--output", str(out), "--scheduler", "dpm", "--steps", "2", "--emotion", "happy"])
    assert rc == 0, capsys.readouterr().err
    info = probe_media(out)
    assert info["has_video"] and info["has_audio"]
    audio_seconds = soundfile.info(str(SPEECH)).duration
    assert abs(info["duration"] - audio_seconds) <= 1 / 25 + 0.03
    assert "emotion happy" in capsys.readouterr().out


@pytest.mark.parametrize("change,needle", [
    ({"--audio": "missing.wav"}, "not found"),
    ({"--t-start": "5000"}, "t_start"),
    ({"--output": "video.avi"}, ".mp4"),
    ({"--emotion": "grumpy"}, "invalid choice"),
    ({"--steps": "0"}, "expected a number >= 1"),
])
def test_bad_arguments_give_one_line_errors(tiny_pipeline, astronaut_png, tmp_path, capsys, change, needle):
    args = {"--pipeline": str(tiny_pipeline), "--audio": str(SPEECH), "--identity": str(astronaut_png),
            "--output": str(tmp_path / "x.mp4"), "--emotion": "neutral"}
    args.update(change)
    if "--audio" in change:
        args["--audio"] = str(tmp_path / change["--audio"])
    argv = ["generate"] + [x for kv in args.items() for x in kv]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own errors: usage, then one error line
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert needle in err.splitlines()[-1] and "Traceback" not in err


def test_not_a_pipeline_directory(tmp_path, astronaut_png, capsys):
    rc = main(["generate", "--pipeline", str(tmp_path), "--audio", str(SPEECH), "--identity", str(astronaut_png),
               "--output", str(tmp_path / "x.mp4")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "model_index.json" in err and len(err.splitlines()) == 1


def test_sigterm_mid_generation_leaves_previous_output_intact_and_no_temp_files(tiny_pipeline, tmp_path):
    """A killed `generate` must not leave half-written files nor touch the MP4 already there."""
    import os
    import signal
    import time

    from conftest import voice_like

    audio = tmp_path / "long.wav"
    soundfile.write(str(audio), voice_like(20.0), 16000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "talk.mp4"
    target.write_bytes(b"previous good video")
    exe = str(__import__("pathlib").Path(sys.executable).with_name("talking-head"))
    from skimage import data

    PIL.Image.fromarray(data.astronaut()).save(tmp_path / "face.png")
    pytest.importorskip("dlib")
    proc = subprocess.Popen([exe, "generate", "--pipeline", str(tiny_pipeline), "--audio", str(audio),
                             "--identity", str(tmp_path / "face.png"), "--output", str(target),
                             "--scheduler", "dpm", "--steps", "2", "--emotion", "neutral"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".part") for p in out_dir.iterdir()):
        time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert target.read_bytes() == b"previous good video"
    assert sorted(p.name for p in out_dir.iterdir()) == ["talk.mp4"]


def test_demo_renders_the_bundled_person_with_the_bundled_pipeline(tmp_path, capsys):
    """The README's first command: the trained default pipeline, its speech clip and photo, no arguments."""
    pytest.importorskip("dlib")
    from talking_head.cli import _assets_dir
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    assets = _assets_dir()
    pipe = TalkingHeadPipeline.from_pretrained(assets / "pipeline")
    assert pipe.emotion_classifier is not None and pipe.sample_size == 64
    assert pipe.config.unet_emotion_conditioning is False  # the renderer learned only the null class
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--output", str(out)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "UNTRAINED" not in captured.err
    # The CLI says what the classifier heard and what it drew, with the strength (issue 38).
    assert re.search(r"emotion: heard [a-z]+ \([01]\.\d\d\); drawn: [a-z]+ \(strength [01]\.\d\d\)\n",
                     captured.out), captured.out
    info = probe_media(out)
    # The bundled photo is a whole 1280x720 frame: the MP4 is that photo, capped at 1024 on the long side.
    assert info["has_video"] and info["has_audio"] and info["video_size"] == (1024, 576)
    assert abs(info["duration"] - soundfile.info(str(assets / "demo_speech.wav")).duration) <= 1 / 25 + 0.03


def test_generate_without_pipeline_uses_the_bundled_one(astronaut_png, tmp_path, capsys):
    pytest.importorskip("dlib")
    out = tmp_path / "default.mp4"
    rc = main(["generate", "--audio", str(SPEECH), "--identity", str(astronaut_png), "--output", str(out),
               "--scheduler", "dpm", "--steps", "1", "--min-size", "1"])
    assert rc == 0, capsys.readouterr().err
    assert probe_media(out)["video_size"] == (512, 512)  # the astronaut photo's own size
    crop = tmp_path / "crop.mp4"
    rc = main(["generate", "--audio", str(SPEECH), "--identity", str(astronaut_png), "--output", str(crop),
               "--scheduler", "dpm", "--steps", "1", "--min-size", "1", "--crop", "--max-size", "200"])
    assert rc == 0, capsys.readouterr().err
    width, height = probe_media(crop)["video_size"]
    assert width == height and width <= 200 and width % 2 == 0  # the square face crop, capped
