#!/usr/bin/env python
"""Score a renderer for dubbing in a few minutes: the A/B figures of docs/results/lower-face-renderer/README.md.

    OMP_NUM_THREADS=1 python experiments/renderer_dubbing_scores/score_renderer.py PIPELINE_DIR [--data DIR]
        [--sampler dpm:10]

1. The dubbing protocol driven by the ground-truth landmarks (`talking-head evaluate --protocol dubbing
   --methods gt_landmarks`, no dlib): PSNR / SSIM of the face crop and of the mouth box at 256², with the
   pipeline's `keep_threshold` as saved and with 0. In this protocol the video's own pixels ARE the ground
   truth, and `keep_threshold` keeps them wherever the generated box stays near them, so the keep-0 row is
   the renderer's own figure.
2. New speech over a video (real dubbing): each held-out clip dubbed with the next clip's audio, driven by the
   landmark model; dlib's inner-lip opening of the rendered frames against the driving landmarks' opening:
   Pearson r over each clip (does the drawn mouth follow the landmarks?) and the ratio of their standard
   deviations (does it open as far?), and r with the video's own opening (the replaced speech: it should not
   show). Here a renderer gains nothing by staying near the video's own mouth.
"""
import argparse
import json
import sys
import tempfile

import numpy as np
import torch

from talking_head.constants import SAMPLE_RATE
from talking_head.evaluation.clips import load_clips
from talking_head.evaluation.dubbing import clip_video
from talking_head.evaluation.runner import EvalConfig, evaluate
from talking_head.evaluation.scoring import LandmarkDetector
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.schedulers.scheduling_sdedit import scheduler_from_name


def load(path, sampler=None, **config):
    pipe = TalkingHeadPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    if config:
        pipe.register_to_config(**config)
    if sampler:
        pipe.scheduler = scheduler_from_name(sampler.split(":")[0], pipe.scheduler)
    return pipe


def protocol_rows(path, data, sampler) -> dict:
    rows = {}
    for keep in (None, 0.0):
        pipe = load(path) if keep is None else load(path, keep_threshold=keep)
        with tempfile.TemporaryDirectory() as out:
            r = evaluate(EvalConfig(data=data, pipeline=path, protocol="dubbing", methods=("gt_landmarks",),
                                    sampler=sampler, emotion="none", samples=0, landmarks=False, quiet=True,
                                    output=out), pipe=pipe)
        s = r["methods"]["gt_landmarks"]["summary"]
        name = f"keep {pipe.config.keep_threshold:g}"
        rows[name] = {k: round(float(s[k]), 4) for k in ("psnr", "ssim", "box_psnr", "box_ssim")}
    return rows


def opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip distance (62-66) over the face width (0-16), as talking_head.evaluation.lip_motion."""
    return (np.linalg.norm(points[..., 62, :] - points[..., 66, :], axis=-1)
            / np.linalg.norm(points[..., 0, :] - points[..., 16, :], axis=-1))


def new_speech_rows(path, data, sampler) -> dict:
    detector = LandmarkDetector()
    pipe = load(path, sampler)
    steps = int(sampler.split(":")[1])
    clips, _ = load_clips(data, "test")
    rs, ratios, old = [], [], []
    for k, clip in enumerate(clips):
        other = clips[(k + 1) % len(clips)]
        frames, landmarks = clip_video(clip)
        n = min(len(frames), int(len(other.audio) / SAMPLE_RATE * clip.fps))
        out = pipe(other.audio[: int(n / clip.fps * SAMPLE_RATE)], frames[:n], sample_rate=SAMPLE_RATE,
                   identity_landmarks=landmarks[:n], reference_frame=clip.reference_index, fps=clip.fps,
                   emotion="neutral", num_inference_steps=steps, generator=torch.Generator().manual_seed(k))
        driving = opening(out.landmarks[0])
        drawn = []
        for frame in out.frames[0]:
            points = detector(frame)
            drawn.append(opening(points) if points is not None else np.nan)
        drawn = np.array(drawn)
        ok = np.isfinite(drawn)
        rs.append(float(np.corrcoef(driving[ok], drawn[ok])[0, 1]))
        old.append(float(np.corrcoef(opening(landmarks[:n])[ok], drawn[ok])[0, 1]))
        ratios.append(float(drawn[ok].std() / driving[ok].std()))
    return {"opening_r": round(float(np.mean(rs)), 3), "opening_std_ratio": round(float(np.mean(ratios)), 3),
            "old_speech_r": round(float(np.mean(old)), 3), "clips": len(clips)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pipeline")
    p.add_argument("--data", default="out/data/obama", help="a prepared dataset with a test split")
    p.add_argument("--sampler", default="dpm:10", help="name:steps (default dpm:10, the demo's)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    result = {"pipeline": args.pipeline, "sampler": args.sampler,
              "dubbing_protocol_gt_landmarks": protocol_rows(args.pipeline, args.data, args.sampler),
              "new_speech": new_speech_rows(args.pipeline, args.data, args.sampler)}
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
