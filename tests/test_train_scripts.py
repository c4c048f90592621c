"""The three trainers end to end, as subprocesses on tiny synthetic data: the landmark and emotion trainers
save loadable components; the diffusion trainer survives SIGKILL and resumes at the same step with the same
data and LR, prunes checkpoints, logs validation media, and saves a pipeline that loads and generates;
two gloo processes (`accelerate launch --multi_gpu` on the CPU) train on different batches and end with
identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_WAV2VEC2, synthetic_face_landmarks, voice_like

TRAIN = REPO / "train"
VENV_BIN = Path(sys.executable).parent
# Tiny models gain nothing from threads, and on a busy machine OpenMP threads fight each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
DIFFUSION_ARGS = ["--resolution", "16", "--clip_frames", "4", "--train_batch_size", "2",
                  "--validation_clips", "2", "--num_validation_videos", "1", "--validation_inference_steps", "3",
                  "--log_batch_ids"]


def run_script(script: str, *args, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TRAIN / script), *map(str, args)], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def video_data(tmp_path_factory):
    from talking_head.data.synthetic import make_synthetic_dataset

    # 2 train clips of 25 frames -> 12 windows of 4 frames: an epoch is 6 batches of 2.
    return make_synthetic_dataset(tmp_path_factory.mktemp("video"), num_speakers=1, clips_per_emotion=1,
                                  emotions=("neutral", "happy"), seconds=1.0, size=40)


@pytest.fixture(scope="module")
def components(tmp_path_factory, video_data):
    """Train the landmark model and the emotion classifier for a few steps (both scripts end to end)."""
    from talking_head.data.synthetic import make_synthetic_emotion_audio

    out = tmp_path_factory.mktemp("components")
    run_script("train_landmarks.py", "--data_dir", video_data, "--output_dir", out / "landmarks", "--preset", "tiny",
               "--clip_frames", "8", "--train_batch_size", "2", "--max_train_steps", "4", "--checkpointing_steps", "2",
               "--checkpoints_total_limit", "1", "--validation_steps", "2", "--validation_video_size", "32",
               "--use_ema", "--point_distance", "euclidean", "--aug_freq_warp", "0.1")
    # 5 speakers: 1 test, 2 held out for validation (--validation_speakers auto), 2 for the speaker adversary.
    emotion_data = make_synthetic_emotion_audio(out / "emotion_data", num_speakers=5, utterances_per_emotion=1,
                                                seconds=0.5, test_speakers=1)
    run_script("train_emotion.py", "--data_dir", emotion_data, "--output_dir", out / "emotion", "--preset", "tiny",
               "--train_batch_size", "4", "--max_train_steps", "3", "--checkpointing_steps", "3",
               "--validation_steps", "0", "--report_to", "none",
               "--speaker_adversarial", "0.5", "--aug_eq_prob", "0.5", "--aug_freq_warp", "0.1")
    return out


def test_landmark_and_emotion_trainers_save_loadable_components(components):
    from talking_head.models.emotion_classifier import load_emotion_classifier
    from talking_head.models.kfusion_landmarks import KFusionLandmarkModel

    landmarks = components / "landmarks"
    model = KFusionLandmarkModel.from_pretrained(landmarks / "landmark_model")
    assert model.config.global_channels == 32  # the tiny preset
    assert [p.name for p in landmarks.glob("checkpoint-*")] == ["checkpoint-4"]  # pruned to 1
    metrics = read_jsonl(landmarks / "metrics.jsonl")
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3, 4]
    assert any("val/m_ld" in m for m in metrics) and list((landmarks / "validation").glob("*.mp4"))

    emotion = components / "emotion"
    classifier = load_emotion_classifier(emotion / "emotion_classifier")
    assert classifier.config.id2label[5] == "happy"
    assert (emotion / "emotion_classifier" / "preprocessor_config.json").is_file()
    assert any("val/accuracy" in m for m in read_jsonl(emotion / "metrics.jsonl"))


def test_both_audio_trainers_start_from_a_local_pretrained_wav2vec2(tmp_path, video_data, components):
    """The route to pretrained speech features (a wav2vec 2.0 checkpoint in a local folder; nothing downloaded):
    the emotion trainer fine-tunes it as a classifier with a fresh 8-way head, the landmark trainer reads it as
    the frozen Context domain; both save models that still hold the checkpoint's frozen weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from talking_head.models.emotion_classifier import load_emotion_classifier
    from talking_head.models.kfusion_landmarks import KFusionLandmarkModel

    torch.manual_seed(0)
    backbone = Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2))
    backbone.save_pretrained(tmp_path / "w2v")
    frozen = {k: v for k, v in backbone.state_dict().items() if k.startswith("feature_extractor.")}

    run_script("train_emotion.py", "--data_dir", components / "emotion_data", "--output_dir", tmp_path / "emotion",
               "--pretrained_model", tmp_path / "w2v", "--freeze_feature_encoder", "--train_batch_size", "4",
               "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "0", "--report_to", "none")
    classifier = load_emotion_classifier(tmp_path / "emotion" / "emotion_classifier")
    assert classifier.config.model_type == "wav2vec2" and classifier.config.id2label[5] == "happy"
    state = classifier.wav2vec2.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())

    run_script("train_landmarks.py", "--data_dir", video_data, "--output_dir", tmp_path / "landmarks",
               "--wav2vec2_model", tmp_path / "w2v", "--preset", "tiny", "--clip_frames", "8", "--train_batch_size",
               "2", "--max_train_steps", "2", "--checkpointing_steps", "100", "--validation_clips", "0",
               "--report_to", "none")
    model = KFusionLandmarkModel.from_pretrained(tmp_path / "landmarks" / "landmark_model")
    assert model.config.context_encoder == "wav2vec2"
    state = model.context_frontend.wav2vec2.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items())


def test_the_landmark_trainer_reads_cached_whisper_states(tmp_path, video_data):
    """--audio_encoder: the frozen encoder's states are cached once in the dataset folder, every window (also
    speed-changed ones) reads its own, validation runs, and the saved model reads those layers; the diffusion
    trainer then saves a pipeline with that encoder."""
    from test_whisper_encoder import tiny_encoder

    from talking_head.models.kfusion_landmarks import KFusionLandmarkModel

    tiny_encoder().save_pretrained(tmp_path / "encoder")
    run_script("train_landmarks.py", "--data_dir", video_data, "--output_dir", tmp_path / "landmarks",
               "--audio_encoder", tmp_path / "encoder", "--encoder_layers", "2", "--preset", "tiny",
               "--clip_frames", "8", "--audio_context_frames", "2", "--train_batch_size", "2", "--max_train_steps", "3",
               "--checkpointing_steps", "100", "--validation_clips", "2", "--validation_steps", "3",
               "--validation_video_size", "32", "--aug_speed", "0.2", "--aug_speed_prob", "1.0", "--report_to", "none")
    model = KFusionLandmarkModel.from_pretrained(tmp_path / "landmarks" / "landmark_model")
    assert model.reads_encoder_states and model.config.encoder_layers == [2] and model.config.encoder_state_dim == 16
    assert list((Path(video_data) / "encoder_states").glob("*-layers-2.safetensors"))
    run_script("train_diffusion.py", "--data_dir", video_data, "--output_dir", tmp_path / "diffusion", "--preset",
               "tiny", "--max_train_steps", "1", "--checkpointing_steps", "100", "--validation_clips", "0",
               "--num_validation_videos", "0", "--resolution", "16", "--clip_frames", "4", "--train_batch_size", "2",
               "--landmark_model", tmp_path / "landmarks" / "landmark_model", "--audio_encoder", tmp_path / "encoder",
               "--report_to", "none")
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_pretrained(tmp_path / "diffusion" / "pipeline")
    assert pipe.audio_encoder is not None and pipe.landmark_model.reads_encoder_states


def test_diffusion_survives_sigkill_resumes_exactly_and_saves_a_pipeline(tmp_path, video_data, components):
    out = tmp_path / "run"
    args = ["--data_dir", video_data, "--output_dir", out, *DIFFUSION_ARGS, "--max_train_steps", "12",
            "--gradient_accumulation_steps", "2", "--checkpointing_steps", "4", "--checkpoints_total_limit", "2",
            "--validation_steps", "6", "--use_ema", "--lip_weight", "2",
            "--landmark_model", components / "landmarks" / "landmark_model",
            "--emotion_model", components / "emotion" / "emotion_classifier"]
    # 1. Start, and SIGKILL it once checkpoint-4 exists and it has trained on past it (it sleeps 0.5 s per update).
    proc = subprocess.Popen([sys.executable, str(TRAIN / "train_diffusion.py"), *map(str, args)], cwd=REPO,
                            env={**ENV, "TALKING_HEAD_TRAIN_STEP_DELAY": "0.5"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "batch_ids" / "rank0.jsonl"
    deadline = time.time() + 240
    try:
        while True:
            assert proc.poll() is None, f"the run ended before it was killed:\n{proc.stderr.read()[-4000:]}"
            assert time.time() < deadline, "no checkpoint-4 in time"
            if (out / "checkpoint-4").is_dir() and log.exists() and any(r.get("step", 0) >= 5 for r in read_jsonl(log)):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = read_jsonl(log)
    log.rename(out / "batch_ids" / "killed.jsonl")
    assert not (out / "pipeline").exists()
    latest = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert latest in (4, 8)

    # 2. Resume: it continues at the checkpoint's step with the same batches, losses and learning rates.
    proc = run_script("train_diffusion.py", *args, "--resume_from_checkpoint", "latest")
    assert f"resumed from {out / f'checkpoint-{latest}'} at global step {latest}" in proc.stderr
    resumed = read_jsonl(log)
    assert resumed[0]["step"] == latest and resumed[0]["micro"] == 0
    assert [r["step"] for r in resumed if "micro" in r] == [s for s in range(latest, 12) for _ in range(2)]
    before = {(r["step"], r["micro"]): r for r in killed if r["step"] >= latest}
    assert before, "the killed run trained past its last checkpoint"
    after = {(r["step"], r["micro"]): r for r in resumed if "micro" in r}
    for key, old in before.items():
        new = after[key]
        assert new["ids"] == old["ids"] and new["lr"] == pytest.approx(old["lr"], rel=1e-9)
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-5, abs=1e-7)
    # Epochs are 3 updates here: the run crossed several, each in its own order.
    assert len({r["epoch"] for r in killed + resumed if "epoch" in r}) >= 4

    # 3. Checkpoints pruned to 2; validation logged (metrics, MP4, a TensorBoard video); the pipeline works.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    assert not list(out.glob(".checkpoint-*"))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "val/box_psnr" in m][-2:] == [6, 12]
    assert sorted(p.name for p in (out / "validation").glob("*.mp4"))[-1] == "step-0000012.mp4"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "train_diffusion"), size_guidance={"images": 0})
    events.Reload()
    assert "validation/context_generated_truth" in events.Tags()["images"]
    assert events.Images("validation/context_generated_truth")[-1].encoded_image_string[:3] == b"GIF"

    from talking_head import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_pretrained(out / "pipeline")
    info = json.loads((out / "pipeline" / "training_info.json").read_text())
    assert info["components"]["landmark_model"].startswith("trained")
    assert info["lip_weight"] == 2 and info["prediction_type"] == "sample"  # the weighted L1 ran
    assert pipe.scheduler.config.prediction_type == info["prediction_type"]
    assert pipe.config.clip_frames == 4 and pipe.unet.config.sample_size == 16
    pipe.set_progress_bar_config(disable=True)
    image = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    result = pipe(voice_like(0.4), image, sample_rate=16000, identity_landmarks=synthetic_face_landmarks(96),
                  num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert result.frames.shape == (1, 10, 96, 96, 3) and np.isfinite(result.frames).all()  # the photo's size
    assert result.emotion[0] in pipe.emotion_classifier.config.label2id  # the trained classifier picked it


def test_two_gloo_processes_see_different_batches_and_end_identical(tmp_path, video_data):
    out = tmp_path / "ddp"
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(TRAIN / "train_diffusion.py"), "--data_dir", str(video_data), "--output_dir", str(out),
           *DIFFUSION_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "0",
           "--num_validation_videos", "0", "--report_to", "none", "--use_ema"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    logs = {r: out / "batch_ids" / f"rank{r}.jsonl" for r in (0, 1)}
    assert all(p.is_file() for p in logs.values()), "only one process ran"
    runs = {r: read_jsonl(p) for r, p in logs.items()}
    steps = {r: [x for x in records if "ids" in x] for r, records in runs.items()}
    assert [x["step"] for x in steps[0]] == [x["step"] for x in steps[1]] == [0, 1, 2, 3]
    for a, b in zip(steps[0], steps[1]):
        assert a["ids"] != b["ids"]  # each rank its own batch
    seen0 = {i for x in steps[0] for i in x["ids"]}
    seen1 = {i for x in steps[1] for i in x["ids"]}
    assert seen0 != seen1
    finals = {r: [x for x in records if x.get("final")] for r, records in runs.items()}
    assert finals[0] and finals[1] and finals[0][0]["checksum"] == finals[1][0]["checksum"]
    # Each process saved its own RNG state in the checkpoints; the pipeline was written once.
    assert {p.name for p in (out / "checkpoint-4").glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                                  "random_states_1.pkl"}
    assert (out / "pipeline" / "model_index.json").is_file()
    # No --emotion_model: the pipeline carries no (untrained) classifier and generates with the null class.
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index.get("emotion_classifier") in (None, [None, None])
    info = json.loads((out / "pipeline" / "training_info.json").read_text())
    assert info["components"]["emotion_classifier"].startswith("none")
