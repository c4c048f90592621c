"""The stages of `talking-head train`, one function each, and the recipes they run.

    prepare      talking-head prepare video (resumable; 90/10 split by time: the tail is held out)
    landmarks    talking_head.trainers.landmarks: fine-tune the bundled landmark model (or train one)
    renderer     talking_head.trainers.diffusion: fine-tune the bundled renderer (or train one)
    assemble     the trained pipeline (no emotion classifier) published as the output folder
    evaluate     talking-head evaluate, photo protocol, on the held-out tail; the verdict

The trainers run in this process with `--max_train_minutes` (their share of the budget) and
`--resume_from_checkpoint latest`, so a run stopped by a signal continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

# Budget shares of the stages after preparation (preparation is not budgeted: about 0.3 s per second of
# video on 2 cores). The renderer also gets what the landmark stage left unused.
SHARES = {"landmarks": 0.25, "renderer": 0.65, "evaluation": 0.10}
MAX_STEPS = "1000000"  # the time budget ends training; the LR schedule follows the time

PREPARE = {"size": 256, "workers": 2}
# The bundled default's recipes (train/make_default_pipeline.sh), with the budget and resume added.
LANDMARK_FLAGS = ["--train_batch_size", "16", "--clip_frames", "32", "--validation_clips", "0",
                  "--checkpointing_steps", "200", "--checkpoints_total_limit", "1", "--report_to", "none",
                  "--audio_context_frames", "6", "--pose_align", "--reference", "same_clip",
                  "--aug_gain_db", "6", "--aug_noise_prob", "0.3", "--aug_clip_prob", "0.05", "--aug_speed", "0.1",
                  "--aug_face_scale", "0.08", "--aug_face_aspect", "0.08", "--aug_face_shift", "0.03",
                  "--silent_weight", "1.0"]
LANDMARK_FINETUNE = ["--learning_rate", "5e-4", "--lr_warmup_steps", "20"]
LANDMARK_SCRATCH = ["--learning_rate", "3e-3", "--lr_warmup_steps", "100", "--model_kwargs",
                    '{"loudness_reference": "active", "loudness_floor": 0.02, "mel_deltas": true, '
                    '"dropout": 0.0, "identity_frame": "face"}']
RENDERER_FLAGS = ["--preset", "tiny", "--resolution", "64", "--clip_frames", "8", "--train_batch_size", "4",
                  "--use_ema", "--validation_clips", "0", "--num_validation_videos", "0",
                  "--checkpointing_steps", "50", "--checkpoints_total_limit", "1", "--report_to", "none"]
RENDERER_FINETUNE = ["--learning_rate", "2e-4", "--lr_warmup_steps", "10", "--ema_decay", "0.99"]
RENDERER_SCRATCH = ["--learning_rate", "1e-3", "--lr_warmup_steps", "50", "--ema_decay", "0.995"]
EVALUATION = {"methods": ("static", "pipeline"), "sampler": "dpm:10", "samples": 2,
              "seconds_per_clip_second": 20.0}  # measured, dpm:10 + scoring on 2 cores


def bundled_pipeline() -> Path:
    from importlib.resources import files

    return Path(str(files("talking_head.assets"))) / "pipeline"


class Work:
    """The paths of one run: OUTPUT/ (the pipeline), OUTPUT/report/, OUTPUT/work/{data,landmarks,renderer,logs}."""

    def __init__(self, output):
        self.output = Path(output)
        self.work = self.output / "work"
        self.data, self.landmarks, self.renderer = self.work / "data", self.work / "landmarks", self.work / "renderer"
        self.logs, self.report = self.work / "logs", self.output / "report"


def audio_encoder_flags() -> list[str]:
    """The bundled Whisper encoder, for a landmark model fine-tuned from the bundled one (it reads its states)."""
    folder = bundled_pipeline() / "audio_encoder"
    return ["--audio_encoder", str(folder)] if folder.is_dir() else []


def device_flags(device: str) -> list[str]:
    return ["--cpu"] if device == "cpu" else []


# ------------------------------------------------------------------------------------------------- stages
def prepare(work: Work, videos) -> dict:
    from talking_head.data.prepare import run_video_jobs
    from talking_head.data.sources import video_jobs

    jobs = video_jobs([v.path for v in videos], test_fraction=0.1, speaker="me")
    summary = run_video_jobs(jobs, work.data, size=PREPARE["size"], workers=PREPARE["workers"], quiet=True)
    if summary["failures"]:
        f = summary["failures"][0]
        raise ValueError(f"preparing {f['source']} failed: {f['reason']}")
    if not summary["test"] or not summary["train"]:
        raise ValueError(f"preparing the videos gave {summary['train']} training and {summary['test']} test clips")
    return summary


def train_landmarks(work: Work, minutes: float, from_scratch: bool, device: str) -> Path:
    from talking_head.trainers import landmarks

    start = LANDMARK_SCRATCH if from_scratch else ["--pretrained_model", str(bundled_pipeline())] + LANDMARK_FINETUNE
    start = start + ([] if from_scratch else audio_encoder_flags())
    argv = ["--data_dir", str(work.data), "--output_dir", str(work.landmarks), "--max_train_steps", MAX_STEPS,
            "--max_train_minutes", f"{minutes:.4f}", "--resume_from_checkpoint", "latest",
            *LANDMARK_FLAGS, *start, *device_flags(device)]
    landmarks.main(argv)
    return work.landmarks / "landmark_model"


def train_renderer(work: Work, minutes: float, from_scratch: bool, device: str, landmark_model: Path) -> Path:
    from talking_head.trainers import diffusion

    start = RENDERER_SCRATCH if from_scratch else ["--pretrained_unet", str(bundled_pipeline())] + RENDERER_FINETUNE
    argv = ["--data_dir", str(work.data), "--output_dir", str(work.renderer), "--max_train_steps", MAX_STEPS,
            "--max_train_minutes", f"{minutes:.4f}", "--resume_from_checkpoint", "latest",
            "--landmark_model", str(landmark_model), *RENDERER_FLAGS, *start, *audio_encoder_flags(),
            *device_flags(device)]
    diffusion.main(argv)
    return work.renderer / "pipeline"


def assemble(work: Work, trained: Path, info: dict) -> Path:
    """Publish the renderer run's pipeline (with the trained landmark model, no emotion classifier) as the
    files of OUTPUT/: each entry copied beside, then renamed into place; model_index.json last, so the folder
    is loadable only once complete."""
    meta = json.loads((trained / "training_info.json").read_text())
    meta["made_by"] = "talking-head train"
    meta["talking_head_train"] = info
    (trained / "training_info.json").write_text(json.dumps(meta, indent=1) + "\n")
    index = json.loads((trained / "model_index.json").read_text())
    if any(v and v[0] for k, v in index.items() if k in ("emotion_classifier", "feature_extractor")):
        raise RuntimeError("the trained pipeline has an emotion classifier; this command never ships one")
    entries = sorted(trained.iterdir(), key=lambda p: p.name == "model_index.json")
    for src in entries:
        dst = work.output / src.name
        tmp = Path(tempfile.mkdtemp(prefix=f".{src.name}.tmp-", dir=work.output)) / src.name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        os.rmdir(tmp.parent)
    return work.output


def evaluation_seconds_per_clip(budget_seconds: float, test_clips: int) -> float | None:
    """--max-seconds of each held-out clip so that the evaluation fits its share (None: whole clips)."""
    per_clip = budget_seconds / max(1, test_clips) / EVALUATION["seconds_per_clip_second"]
    return max(1.0, per_clip)


def evaluate(work: Work, pipeline: Path, device: str, max_seconds: float | None, note: str) -> dict:
    from talking_head.evaluation.runner import EvalConfig, evaluate as run

    config = EvalConfig(data=str(work.data), pipeline=str(pipeline), output=str(work.report), protocol="photo",
                        methods=EVALUATION["methods"], sampler=EVALUATION["sampler"], samples=EVALUATION["samples"],
                        max_seconds=max_seconds, device=device, note=note, quiet=True)
    return run(config)


def log_to_file(path: Path):
    """Send the trainers' logging (and Python warnings) to `path` instead of the terminal; returns an undo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s"))
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)

    def undo():
        logging.captureWarnings(False)
        root.handlers, level = saved
        root.setLevel(level)
        handler.close()

    return undo
