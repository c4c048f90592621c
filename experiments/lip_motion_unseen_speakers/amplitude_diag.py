#!/usr/bin/env python
"""Per test clip: where a landmark model's mouth error is (landmark space, no renderer).

    OMP_NUM_THREADS=1 python experiments/lip_motion_unseen_speakers/amplitude_diag.py MODEL_DIR DATA_DIR

For each clip of DATA_DIR's test split (identity = its first frame with a face, as `talking-head evaluate`
uses; the pipeline's mouth rest and smoothing through LandmarkStage; no emotion): the model's mouth M-LD, the
identity floor's, the ground truth moved into the identity frame's head pose (what no audio model can beat
while it keeps the identity's pose), the opening correlation r, the predicted and true opening's standard
deviation over time, and the model's displacement scaled by the one factor in 0.4-2.0 that is best for that clip
(chosen on the clip itself: an oracle of the speaker's articulation amplitude, not something a model can do).
"""
import sys

import numpy as np
import torch

from talking_head.constants import NULL_EMOTION
from talking_head.evaluation.clips import load_clips
from talking_head.evaluation.landmark_stage import LandmarkStage
from talking_head.evaluation.lip_motion import mouth_opening, pearson_r
from talking_head.evaluation.metrics import landmark_distance
from talking_head.head_pose import align_pose
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel


def mouth_mld(pred, gt) -> float:
    return float(np.mean(landmark_distance(pred, gt, "mouth")))


def main(model_dir: str, data_dir: str) -> None:
    stage = LandmarkStage(KFusionLandmarkModel.from_pretrained(model_dir).eval())
    clips, _ = load_clips(data_dir, "test")
    print("clip                   M-LD  floor GT-in-pose |    r | opening std pred / true | best scale: M-LD")
    rows = []
    for c in clips:
        gt = c.filled_landmarks().astype(np.float64)  # pixels of the stored crop
        ref = gt[c.reference_index]
        with torch.no_grad():
            pred = stage.predict_landmarks(torch.from_numpy(c.audio)[None], torch.from_numpy(ref / c.size).float()[None],
                                           c.num_frames, c.fps, torch.tensor([NULL_EMOTION]))[0].double().numpy()
        pred = pred * c.size
        in_pose = align_pose(torch.from_numpy(gt / c.size)[None], torch.from_numpy(ref / c.size)[None])[0].numpy() * c.size
        model, floor = mouth_mld(pred, gt), mouth_mld(np.repeat(ref[None], c.num_frames, 0), gt)
        best, scale = min((mouth_mld(ref + s * (pred - ref), gt), s) for s in np.arange(0.4, 2.01, 0.1))
        r = pearson_r(mouth_opening(pred), mouth_opening(gt))
        rows.append((model, floor, mouth_mld(in_pose, gt), best))
        print(f"{c.clip_id[:22]:22s} {model:5.2f} {floor:6.2f} {rows[-1][2]:10.2f} | {r if r is None else f'{r:4.2f}'} | "
              f"{mouth_opening(pred).std():.4f} / {mouth_opening(gt).std():.4f}         | {scale:.1f}: {best:.2f}")
    mean = np.mean(rows, axis=0)
    print(f"mean M-LD {mean[0]:.3f}, floor {mean[1]:.3f} (ratio {mean[0] / mean[1]:.3f}), GT in pose {mean[2]:.3f}, "
          f"best scale per clip {mean[3]:.3f} (ratio {mean[3] / mean[1]:.3f})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
