"""The bad-input battery (issue 7): malformed and edge inputs at every boundary users reach.

`pipe(...)`, `talking-head generate`, `talking-head prepare` and the trainers' Datasets each get
real-world breakage: cut-off and mislabelled files, odd sample rates and channel counts, silence,
images with alpha or 16 bits, half-copied or hand-edited pipeline directories, damaged prepared data.
Every case either works (and the output has the frame count the audio gives) or raises ValueError /
FileNotFoundError with a message naming the input and what is wrong with it; the CLI prints that
message on one line and exits non-zero.

load_audio / load_image themselves are unit-tested in test_audio.py and test_image_face.py; here the
same kinds of input go through the pipeline and the command line instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch

from conftest import synthetic_face_landmarks, voice_like
from talking_head.audio import ffmpeg_exe
from talking_head.cli import main as cli
from talking_head.data import layout
from talking_head.data.dataset import EmotionAudioDataset, TalkingHeadClipDataset
from talking_head.data.synthetic import make_synthetic_dataset, make_synthetic_emotion_audio
from talking_head.face import dlib_available
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.presets import build_pipeline
from talking_head.schedulers import scheduler_from_name
from talking_head.utils import save_pipeline_atomic

SIZE = 32
SR = 16000
IMAGE_SIDE = 80
FRAMES_04 = 10  # frames of 0.4 s at 25 fps


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", sample_size=SIZE, seed=0, with_emotion_classifier=False)
    p.scheduler = scheduler_from_name("dpm", p.scheduler)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return save_pipeline_atomic(pipe, tmp_path_factory.mktemp("pipe") / "tiny")


@pytest.fixture(scope="module")
def face():
    rng = np.random.default_rng(3)
    return (rng.random((IMAGE_SIDE, IMAGE_SIDE, 3)) * 200).astype(np.uint8)


LANDMARKS = synthetic_face_landmarks(IMAGE_SIDE)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad (and odd but good) file of the battery, written once."""
    d = tmp_path_factory.mktemp("bad")
    voice = voice_like(0.4)
    sf.write(d / "good.wav", voice, SR)
    data = (d / "good.wav").read_bytes()
    (d / "cut_in_samples.wav").write_bytes(data[: 44 + (len(data) - 44) // 2])
    (d / "cut_in_header.wav").write_bytes(data[:30])
    sf.write(d / "no_samples.wav", np.zeros(0, np.float32), SR)
    nan = voice.copy()
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(d / "rate1k.wav", voice_like(0.4, sr=1000), 1000)
    sf.write(d / "rate192k.wav", voice_like(0.4, sr=192000), 192000)
    sf.write(d / "eight_channels.wav", np.tile(voice[:, None], (1, 8)), SR)
    sf.write(d / "ten_ms.wav", voice_like(0.01), SR)
    sf.write(d / "silent.wav", np.zeros(SR, np.float32), SR)
    PIL.Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "photo.wav", format="JPEG")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25",
                    "-f", "lavfi", "-i", "sine=f=220:sample_rate=16000", "-t", "1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(d / "whole.mp4")], check=True)
    mp4 = (d / "whole.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])  # ffmpeg writes the index (moov) last
    rng = np.random.default_rng(0)
    rgba = np.concatenate([(rng.random((IMAGE_SIDE, IMAGE_SIDE, 3)) * 255).astype(np.uint8),
                           np.full((IMAGE_SIDE, IMAGE_SIDE, 1), 128, np.uint8)], axis=2)
    PIL.Image.fromarray(rgba).save(d / "alpha.png")
    PIL.Image.fromarray((rng.random((IMAGE_SIDE, IMAGE_SIDE)) * 65535).astype(np.uint16)).save(d / "grey16.tif")
    PIL.Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "one_pixel.png")
    (d / "a_folder").mkdir()
    return d


def generate(pipe, audio, image, **kw):
    args = dict(identity_landmarks=LANDMARKS, emotion="neutral", num_inference_steps=1,
                generator=torch.Generator().manual_seed(0))
    if not isinstance(audio, (str, os.PathLike)):
        args["sample_rate"] = SR
    args.update(kw)
    return pipe(audio, image, **args)


# ------------------------------------------------------------------ pipe(...): audio


@pytest.mark.parametrize("name", ["rate1k.wav", "rate192k.wav", "eight_channels.wav"])
def test_odd_rates_and_channel_counts_are_resampled_and_downmixed(pipe, face, files, name):
    out = generate(pipe, files / name, face)
    assert out.frames.shape == (1, FRAMES_04, IMAGE_SIDE, IMAGE_SIDE, 3)
    assert out.audio.shape == (1, int(0.4 * SR))  # 16 kHz mono, whatever came in
    if name == "eight_channels.wav":  # eight copies of one voice average to that voice
        np.testing.assert_allclose(out.audio[0], sf.read(files / "good.wav", dtype="float32")[0], atol=1e-6)


def test_silent_audio_works(pipe, face, files):
    out = generate(pipe, files / "silent.wav", face)
    assert out.frames.shape == (1, 25, IMAGE_SIDE, IMAGE_SIDE, 3) and np.isfinite(out.frames).all()
    assert np.isfinite(out.landmarks).all()


def test_wav_cut_in_its_samples_renders_what_is_there(pipe, face, files):
    with pytest.warns(UserWarning, match=r"cut_in_samples\.wav looks truncated"):
        out = generate(pipe, files / "cut_in_samples.wav", face)
    assert out.frames.shape[1] == round(out.audio.shape[1] / SR * 25) == FRAMES_04 // 2


BAD_AUDIO_FILES = [
    ("cut_in_header.wav", ValueError, r"audio file .*cut_in_header\.wav could not be decoded"),
    ("cut.mp4", ValueError, r"audio file .*cut\.mp4 could not be decoded: the file is truncated"),
    ("no_samples.wav", ValueError, r"audio is empty: .*no_samples\.wav holds no audio samples"),
    ("nan.wav", ValueError, r"audio file .*nan\.wav contains NaN or infinite samples"),
    ("ten_ms.wav", ValueError, r"audio file .*ten_ms\.wav is 0\.010 s long, shorter than one frame"),
    ("photo.wav", ValueError, r"audio file .*photo\.wav could not be decoded: it has no audio stream"),
    ("a_folder", ValueError, r"audio path .*a_folder is a directory"),
    ("nowhere.wav", FileNotFoundError, r"audio file not found: .*nowhere\.wav"),
]


@pytest.mark.parametrize("name,error,message", BAD_AUDIO_FILES, ids=[c[0] for c in BAD_AUDIO_FILES])
def test_bad_audio_files(pipe, face, files, name, error, message):
    with pytest.raises(error, match=message):
        generate(pipe, files / name, face)


def test_infinite_samples_in_an_array(pipe, face):
    x = voice_like(0.4)
    x[7] = -np.inf
    with pytest.raises(ValueError, match="audio contains NaN or infinite samples"):
        generate(pipe, x, face)


# ------------------------------------------------------------------ pipe(...): identity frame


@pytest.mark.parametrize("name", ["alpha.png", "grey16.tif", "rgb16.tif"])
def test_alpha_and_16_bit_images_are_converted(pipe, files, name):
    if name == "rgb16.tif":  # 48-bit RGB: what scanners and raw converters write
        tifffile = pytest.importorskip("tifffile")
        rgb16 = (np.random.default_rng(1).random((IMAGE_SIDE, IMAGE_SIDE, 3)) * 65535).astype(np.uint16)
        tifffile.imwrite(files / name, rgb16, photometric="rgb")
    out = generate(pipe, voice_like(0.4), files / name)
    assert out.frames.shape == (1, FRAMES_04, IMAGE_SIDE, IMAGE_SIDE, 3) and np.isfinite(out.frames).all()


BAD_IMAGES = [
    ("one_pixel.png", ValueError, r"identity_frame .*one_pixel\.png is too small: 1x1 pixels"),
    ("good.wav", ValueError, r"identity_frame .*good\.wav could not be read as an image"),
    ("a_folder", ValueError, r"identity_frame .*a_folder could not be read as an image: it is a directory"),
    ("nowhere.png", FileNotFoundError, r"identity_frame file not found: .*nowhere\.png"),
]


@pytest.mark.parametrize("name,error,message", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_identity_files(pipe, files, name, error, message):
    with pytest.raises(error, match=message):
        generate(pipe, voice_like(0.4), files / name)


# ------------------------------------------------------------------ pipe(...): arguments
# (emotion="grumpy", t_start=0, num_inference_steps=0, fps=0 are in test_pipeline.py's BAD_CALLS)
BAD_ARGUMENTS = [
    (dict(emotion=""), r"unknown emotion ''"),
    (dict(emotion=3), r"unknown emotion 3"),
    (dict(emotion=["happy", "sad"]), r"got 2 emotions for 1 audio inputs"),
    (dict(t_start=1001), r"t_start must be in \[1, 1000\], got 1001"),
    (dict(t_start=-5), r"t_start must be in \[1, 1000\], got -5"),
    (dict(t_start=300.5), r"t_start must be a whole number of timesteps, got 300\.5"),
    (dict(t_start="300"), r"t_start must be a whole number of timesteps, got '300'"),
    (dict(num_inference_steps=-1), r"num_inference_steps must be a whole number >= 1, got -1"),
    (dict(num_inference_steps=1.5), r"num_inference_steps must be a whole number >= 1, got 1\.5"),
    (dict(num_inference_steps="3"), r"num_inference_steps must be a whole number >= 1, got '3'"),
    (dict(fps=-25), r"fps must be a number > 0 and <= 120, got -25"),
    (dict(fps=float("nan")), r"fps must be a number > 0 and <= 120, got nan"),
    (dict(fps=float("inf")), r"fps must be a number > 0 and <= 120, got inf"),
    (dict(fps="25"), r"fps must be a number > 0 and <= 120, got '25'"),
    (dict(fps=1e6), r"fps must be a number > 0 and <= 120, got 1000000\.0"),  # was: 20 GB, then the OOM killer
    (dict(guidance_scale="2"), r"guidance_scale must be a finite number >= 0"),
]


@pytest.mark.parametrize("change,message", BAD_ARGUMENTS,
                         ids=[",".join(f"{k}={v!r}" for k, v in c.items()) for c, _ in BAD_ARGUMENTS])
def test_bad_arguments(pipe, face, change, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, voice_like(0.4), face, **change)


def test_edge_arguments_that_are_fine(pipe, face):
    out = generate(pipe, voice_like(0.4), face, emotion=" Happy ", t_start=1, fps=120)
    assert out.emotion == ["happy"] and out.frames.shape[1] == 48  # 0.4 s at 120 fps


# ------------------------------------------------------------------ from_pretrained: saved pipelines


def _copy(saved, tmp_path, name="broken"):
    return Path(shutil.copytree(saved, tmp_path / name))


def _edit_config(folder: Path, component: str, key: str, value, file="config.json"):
    path = folder / component / file
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))


WRONG_TYPES = [
    ("unet", "block_out_channels", "abc", r"block_out_channels must be a list of integers \(default .*\), got 'abc'"),
    ("unet", "block_out_channels", ["16", "32", "64"], r"block_out_channels must be a list of integers"),
    ("unet", "in_channels", "7", r"in_channels must be an integer \(default \d+\), got '7'"),
    ("landmark_model", "num_landmarks", 68.0, r"num_landmarks must be an integer \(default 68\), got 68\.0"),
    ("mask_noise", "sigma", "wide", r"sigma must be a number \(default 4\.0\), got 'wide'"),
]

@pytest.mark.parametrize("component,key,value,message", WRONG_TYPES,
                         ids=[f"{c[0]}.{c[1]}={c[2]!r}" for c in WRONG_TYPES])
def test_config_json_with_wrong_types(saved, tmp_path, component, key, value, message):
    bad = _copy(saved, tmp_path)
    _edit_config(bad, component, key, value)
    with pytest.raises(ValueError, match=rf"{component}/config\.json: {message}"):
        TalkingHeadPipeline.from_pretrained(bad)


def test_scheduler_config_with_wrong_types(saved, tmp_path):
    bad = _copy(saved, tmp_path)
    _edit_config(bad, "scheduler", "num_train_timesteps", "1000", file="scheduler_config.json")
    with pytest.raises(ValueError, match=r"scheduler/scheduler_config\.json: num_train_timesteps must be an integer"):
        TalkingHeadPipeline.from_pretrained(bad)


@pytest.mark.parametrize("content,message", [("[1, 2]", "must hold a JSON object, got a list"),
                                             ('{"in_channels": 7', "is not a readable JSON file")],
                         ids=["list", "cut_json"])
def test_config_json_that_is_not_a_config(saved, tmp_path, content, message):
    bad = _copy(saved, tmp_path)
    (bad / "unet" / "config.json").write_text(content)
    with pytest.raises(ValueError, match=rf"unet/config\.json {message}"):
        TalkingHeadPipeline.from_pretrained(bad)


def test_missing_component_folder_and_a_file_in_its_place(saved, tmp_path):
    # (test_pipeline.py removes landmark_model; here the UNet, and a file where a folder belongs)
    bad = _copy(saved, tmp_path, "no_unet")
    shutil.rmtree(bad / "unet")
    with pytest.raises(ValueError, match=r"pipeline directory .*no_unet is incomplete: the 'unet' folder is missing"):
        TalkingHeadPipeline.from_pretrained(bad)
    bad = _copy(saved, tmp_path, "file_for_folder")
    shutil.rmtree(bad / "mask_noise")
    (bad / "mask_noise").write_text("not a folder")
    with pytest.raises(ValueError, match=r"incomplete: the 'mask_noise' folder is missing"):
        TalkingHeadPipeline.from_pretrained(bad)


@pytest.mark.parametrize("cut", ["middle", "header"])
def test_safetensors_truncated(saved, tmp_path, cut):
    bad = _copy(saved, tmp_path)
    weights = next((bad / "landmark_model").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if cut == "middle" else data[:100])
    message = r"is truncated: it has \d+ bytes" if cut == "middle" else r"is not a complete safetensors file"
    with pytest.raises(ValueError, match=rf"weights file .*landmark_model/.*\.safetensors {message}"):
        TalkingHeadPipeline.from_pretrained(bad)


def test_safetensors_missing_a_tensor_or_holding_nan(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _copy(saved, tmp_path, "subset")
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, weights)  # diffusers alone would fill the gap with random values
    with pytest.raises(ValueError, match=rf"the unet weights lack 1 of its \d+ tensors \(e\.g\. '{dropped}'\)"):
        TalkingHeadPipeline.from_pretrained(bad)

    bad = _copy(saved, tmp_path, "nan")
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["conv_out.weight"][0] = float("nan")
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"the unet weights contain NaN or infinite values"):
        TalkingHeadPipeline.from_pretrained(bad)


class _Canary:
    """Unpickling this creates a folder: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickled_weights_are_never_loaded(saved, tmp_path):
    bad = _copy(saved, tmp_path)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    canary = tmp_path / "pickle_was_executed"
    torch.save({"weight": _Canary(str(canary))}, bad / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no file named diffusion_pytorch_model\.safetensors"):
        TalkingHeadPipeline.from_pretrained(bad)
    assert not canary.exists()


# ------------------------------------------------------------------ talking-head generate


def _one_error_line(capsys_or_text, command="generate") -> str:
    """The CLI's stderr minus diffusers' loading progress bar: exactly one line, the error, no traceback."""
    err = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "Loading pipeline components" not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"talking-head {command}: error: "), err
    return lines[0]


def _generate_argv(saved, audio, identity, output, *extra):
    return ["generate", "--pipeline", str(saved), "--audio", str(audio), "--identity", str(identity),
            "--output", str(output), "--emotion", "neutral", "--scheduler", "dpm", "--steps", "1", *extra]


GENERATE_ERRORS = [
    (dict(audio="cut.mp4"), r"audio file .*cut\.mp4 could not be decoded: the file is truncated"),
    (dict(audio="a_folder"), r"audio path .*a_folder is a directory"),
    (dict(audio="ten_ms.wav"), r"audio is 0\.010 s long, shorter than one frame"),
    (dict(identity="one_pixel.png"), r"identity_frame .*one_pixel\.png is too small: 1x1"),
    (dict(extra=("--fps", "1e6")), r"fps must be a number > 0 and <= 120"),
    (dict(pipeline="no_unet"), r"pipeline directory .*no_unet is incomplete: the 'unet' folder is missing"),
]


@pytest.mark.parametrize("change,message", GENERATE_ERRORS,
                         ids=["cut.mp4", "folder_as_audio", "10ms", "1x1_photo", "fps_1e6", "no_unet_folder"])
def test_generate_prints_one_line(saved, files, tmp_path, capsys, change, message):
    pipeline = saved
    if change.get("pipeline"):
        pipeline = _copy(saved, tmp_path, change["pipeline"])
        shutil.rmtree(pipeline / "unet")
    out = tmp_path / "talk.mp4"
    argv = _generate_argv(pipeline, files / change.get("audio", "good.wav"),
                          files / change.get("identity", "alpha.png"), out, *change.get("extra", ()))
    assert cli(argv) == 2
    line = _one_error_line(capsys)
    assert re.search(message, line), line
    assert not out.exists() and list(tmp_path.glob("*.part")) == []


def test_generate_console_script_with_a_jpeg_named_wav(saved, files, tmp_path):
    exe = str(Path(sys.executable).with_name("talking-head"))
    proc = subprocess.run([exe, *_generate_argv(saved, files / "photo.wav", files / "alpha.png", tmp_path / "x.mp4")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "photo.wav could not be decoded: it has no audio stream" in line


@pytest.mark.skipif(not dlib_available(), reason="the CLI finds the face with dlib")
def test_generate_with_192khz_eight_channel_audio_and_an_rgba_photo(saved, tmp_path, capsys):
    from skimage import data

    from talking_head.audio import probe_media

    audio = tmp_path / "odd.wav"
    sf.write(audio, np.tile(voice_like(0.4, sr=192000)[:, None], (1, 8)), 192000)
    photo = tmp_path / "astronaut_rgba.png"
    rgb = data.astronaut()
    PIL.Image.fromarray(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)).save(photo)
    out = tmp_path / "talk.mp4"
    assert cli(_generate_argv(saved, audio, photo, out)) == 0, capsys.readouterr().err
    assert f"{FRAMES_04} frames of " in capsys.readouterr().out
    info = probe_media(out)
    assert info["has_video"] and info["has_audio"] and abs(info["duration"] - 0.4) < 0.1


@pytest.mark.parametrize("argv,message", [
    (["init", "--preset", "huge", "--output", "p"], "argument --preset: invalid choice: 'huge'"),
    (["demo", "--steps", "zero"], "argument --steps: expected a whole number, got 'zero'"),
    (["generate", "--pipeline", "p", "--audio", "a.wav", "--identity", "b.png", "--output", "c.mp4", "--fps", "-1"],
     "argument --fps: expected a finite number > 0, got -1"),
    (["preview", "--data", "nowhere", "--output", "sheet.png"], "prepared dataset folder not found: nowhere"),
    (["evaluate", "--pipeline", "nowhere", "--data", "DATA", "--output", "report"],
     "pipeline directory not found: nowhere"),
], ids=["init", "demo", "generate", "preview", "evaluate"])
def test_every_command_answers_a_bad_argument_in_one_line(prepared, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(prepared[0]) if a == "DATA" else a for a in argv]
    try:
        rc = cli(argv)
    except SystemExit as exit_:  # argparse's errors
        rc = exit_.code
    assert rc == 2
    assert message in _one_error_line(capsys, argv[0])
    assert list(tmp_path.iterdir()) == []  # nothing written


# ------------------------------------------------------------------ talking-head prepare


def test_prepare_a_missing_file_or_a_folder_without_videos(files, tmp_path, capsys):
    rc = cli(["prepare", "video", str(files / "nowhere.mp4"), "--output", str(tmp_path / "ds"), "--quiet"])
    assert rc == 2
    assert "video file not found: " in _one_error_line(capsys, "prepare")
    rc = cli(["prepare", "video", str(files / "a_folder"), "--output", str(tmp_path / "ds"), "--quiet"])
    assert rc == 2
    assert "a_folder is a folder with no video files in it" in _one_error_line(capsys, "prepare")
    assert not (tmp_path / "ds").exists()  # nothing written for a mistyped argument


@pytest.mark.skipif(not dlib_available(), reason="prepare video needs dlib")
def test_prepare_a_truncated_mp4_records_why(files, tmp_path, capsys):
    out = tmp_path / "ds"
    rc = cli(["prepare", "video", str(files / "cut.mp4"), "--output", str(out), "--quiet", "--workers", "1"])
    assert rc == 1  # nothing could be prepared; the reason is in failures.jsonl and on stderr
    (failure,) = layout.read_jsonl(out / layout.FAILURES)
    assert failure["source"].endswith("cut.mp4") and "truncated" in failure["reason"]
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------ the trainers' Datasets


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    return (make_synthetic_dataset(root / "video", emotions=("neutral",), size=32, seconds=1.0),
            make_synthetic_emotion_audio(root / "speech", num_speakers=2, utterances_per_emotion=1,
                                         layout="prepared"))


def _first_train_row(root):
    return next(r for r in layout.read_manifest(root) if r["split"] == "train")


def _break_manifest(root, row):
    (root / layout.MANIFEST).write_text('{"clip_id": "synth0_neutral_00", "kind": "vid\n')


def _cut(path: Path, keep: float | int):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])


def _drop_field(root, row):
    rows = layout.read_manifest(root)
    for r in rows:
        r.pop("fps")
    layout.write_jsonl_atomic(root / layout.MANIFEST, rows)


BROKEN_VIDEO_DATA = [
    ("damaged manifest", _break_manifest, ValueError, r"manifest\.jsonl is damaged \(.*line 1"),
    ("missing field", _drop_field, ValueError, r"clip 'synth0_neutral_00' lacks the manifest field\(s\) fps"),
    ("no landmarks", lambda root, r: (root / r["landmarks"]).unlink(), FileNotFoundError,
     r"prepared landmarks file .*landmarks\.npy is missing"),
    ("cut landmarks", lambda root, r: _cut(root / r["landmarks"], 0.5), ValueError,
     r"prepared landmarks file .*landmarks\.npy is unreadable"),
    ("landmarks shape", lambda root, r: np.save(root / r["landmarks"], np.zeros((25, 68), np.float32)), ValueError,
     r"landmarks\.npy has shape \(25, 68\), expected \(25, 68, 2\)"),
    ("last frame missing", lambda root, r: (layout.frame_path(root, r, r["num_frames"] - 1)).unlink(),
     FileNotFoundError, r"prepared frame .*000024\.jpg is missing"),
    ("no audio", lambda root, r: (root / r["audio"]).unlink(), FileNotFoundError,
     r"prepared audio file .*audio\.wav is missing"),
    ("cut audio", lambda root, r: _cut(root / r["audio"], 0.5), ValueError,
     r"prepared audio file .*audio\.wav is truncated: \d+ of 16000 samples"),
    ("audio header only", lambda root, r: _cut(root / r["audio"], 30), ValueError,
     r"prepared audio file .*audio\.wav is unreadable"),
]


@pytest.mark.parametrize("breakage,error,message", [c[1:] for c in BROKEN_VIDEO_DATA],
                         ids=[c[0] for c in BROKEN_VIDEO_DATA])
def test_broken_prepared_video_clips_fail_when_the_dataset_is_built(prepared, tmp_path, breakage, error, message):
    root = Path(shutil.copytree(prepared[0], tmp_path / "ds"))
    breakage(root, _first_train_row(root))
    with pytest.raises(error, match=message):
        TalkingHeadClipDataset(root, split="train", clip_frames=8)


@pytest.mark.parametrize("damage,message", [("cut", r"is unreadable \(.*\)"),
                                            ("text", r"is unreadable \(cannot identify")], ids=["cut", "text"])
def test_a_damaged_frame_is_named_when_read(prepared, tmp_path, damage, message):
    root = Path(shutil.copytree(prepared[0], tmp_path / "ds"))
    row = _first_train_row(root)
    frame = layout.frame_path(root, row, 3)
    _cut(frame, 0.3) if damage == "cut" else frame.write_text("not a JPEG")
    ds = TalkingHeadClipDataset(root, split="train", clip_frames=8, random_crop=False)
    with pytest.raises(ValueError, match=rf"prepared frame .*000003\.jpg {message}"):
        ds[0]


def test_prepared_dataset_path_that_is_a_file(prepared):
    with pytest.raises(ValueError, match=r"prepared dataset path .*manifest\.jsonl is a file, not a folder"):
        TalkingHeadClipDataset(prepared[0] / layout.MANIFEST)


def test_emotion_audio_dataset_with_broken_files(prepared, tmp_path):
    root = Path(shutil.copytree(prepared[1], tmp_path / "speech"))
    row = _first_train_row(root)
    (root / row["audio"]).write_text("not a FLAC file")
    with pytest.raises(ValueError, match=r"prepared audio file .*audio\.flac is unreadable"):
        EmotionAudioDataset(root, split="train")
    (root / row["audio"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"prepared audio file .*audio\.flac is missing"):
        EmotionAudioDataset(root, split="train")
