#!/usr/bin/env python
"""Score a KFusionLandmarkModel alone on prepared datasets, exactly as `talking-head evaluate` does.

    OMP_NUM_THREADS=1 python experiments/lip_motion_scores/eval_landmarks.py MODEL_DIR DATA_DIR [DATA_DIR ...] \
        [--json OUT]

Uses talking_head.evaluation's own code paths (load_clips, Evaluation._predicted_landmarks with the
pipeline's chunked TalkingHeadPipeline.predict_landmarks, Evaluation._evaluate_landmark_model) without
loading a renderer, so one attempt is scored in seconds. Identity = each test clip's first frame with a
face (as in evaluate); emotion = the clip's label or none.
"""
import argparse
import json
import sys
import time

import torch

from talking_head.evaluation.clips import load_clips
from talking_head.evaluation.landmark_stage import LandmarkStage
from talking_head.evaluation.runner import EvalConfig, Evaluation
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel


def score(model, data, split="test", rest=True, smoothing=1.0):
    pipe = LandmarkStage(model, rest_mouth_on_silence=rest, landmark_smoothing=smoothing)
    ev = Evaluation(EvalConfig(data=data, split=split, quiet=True), pipe=pipe)
    ev.clips, _ = load_clips(data, split)
    ev.emotions = {c.clip_id: ((c.emotion or "none"), "label") for c in ev.clips}
    with torch.no_grad():
        ev.predicted = {c.clip_id: ev._predicted_landmarks(c) for c in ev.clips}
    return ev._evaluate_landmark_model()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data", nargs="+")
    p.add_argument("--json", default=None)
    p.add_argument("--no-rest", action="store_true", help="without the pipeline's mouth rest on silence")
    p.add_argument("--smoothing", type=float, default=1.0,
                   help="the pipeline's landmark_smoothing, frames (default 1, the bundled pipeline's; 0 = off)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = KFusionLandmarkModel.from_pretrained(args.model).eval()
    out = {}
    for d in args.data:
        t0 = time.perf_counter()
        r = score(model, d, rest=not args.no_rest, smoothing=args.smoothing)
        m, f = r["model"], r["identity_floor"]
        out[d] = {k: {kk: v for kk, v in r[k].items() if kk != "clips"} for k in ("model", "identity_floor")}
        out[d]["frames"] = r["frames"]
        print(f"{d}: M-LD {m['m_ld']:.3f} (floor {f['m_ld']:.3f}, ratio {m['m_ld'] / f['m_ld']:.3f}) "
              f"F-LD {m['f_ld']:.3f} (floor {f['f_ld']:.3f}) r {m['mouth_opening_r']:.3f} "
              f"silent open {m['silent_opening']:.4f} vs GT {m['silent_opening_gt']:.4f} "
              f"(diff {m['silent_opening_diff']:.4f}; floor {f['silent_opening']:.4f}) "
              f"[{m['silent_frames']} silent of {r['frames']} frames, {time.perf_counter() - t0:.1f} s]")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
