#!/usr/bin/env python
"""Score a KFusionLandmarkModel's emotion in the face (and, optionally, its lip motion) without a renderer.

    OMP_NUM_THREADS=1 python experiments/emotion_in_the_face/eval_emotion.py MODEL_DIR \
        --expression-data out/data/cremad [--scales 1,1.5,2] [--json OUT]

Same code paths as `talking-head evaluate --expression-data` (talking_head.evaluation.expression.expression_evaluation
with the pipeline's chunked TalkingHeadPipeline.predict_landmarks), without loading a renderer, so one attempt is
scored in seconds. Lip motion: experiments/lip_motion_scores/eval_landmarks.py.
"""
import argparse
import json
import sys
import time

import torch

from talking_head.evaluation.expression import expression_evaluation
from talking_head.evaluation.landmark_stage import LandmarkStage
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--expression-data", required=True)
    p.add_argument("--scales", default="1")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = KFusionLandmarkModel.from_pretrained(args.model).eval()
    pipe = LandmarkStage(model)
    out = {}
    for scale in [float(s) for s in args.scales.split(",")]:
        t0 = time.perf_counter()
        r = expression_evaluation(args.expression_data, pipe.predict_landmarks, emotion_scale=scale)
        g, ref = r["generated"], r["reference"]
        print(f"scale {scale:g}: reference accuracy {ref['accuracy']:.3f}; generated accuracy {g['accuracy']:.3f} "
              "per emotion " + ", ".join(f"{e} {v:.2f}" for e, v in g["per_emotion"].items())
              + f" [{time.perf_counter() - t0:.1f} s]")
        out[str(scale)] = r
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
