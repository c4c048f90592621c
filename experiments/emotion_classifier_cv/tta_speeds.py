"""Stop 34: does reading each clip at three speeds (test-time augmentation) help the shipped classifier's form on
voices it never heard? Answered on the two cross-validations over actors 01-12 (seeds 0-2 and 3-5, speaker_cv.sh's
fold runs): in each of the six folds, A = the fold's three seeds averaged with per-class offsets fitted on the other
two folds (the shipped procedure, logit_offsets.py), B = the same with every clip also read at 0.9x and 1.1x speed
(`EmotionFeatureExtractor(test_time_speeds=...)`, the offsets fitted on B's own out-of-fold predictions). The rule
(README, "Stop 34", committed before this ran): B ships if it beats A by >= 1 point of balanced accuracy over the
six folds and in at least four of them. Reads no test speaker.
README: docs/results/emotion-classifier/README.md (figures: its cv/tta_speeds.json, cv/tta_replication.json).

    python experiments/emotion_classifier_cv/tta_speeds.py out/data/ravdess out/emotion/cv out/emotion/cv2 \
        [--json out.json]

The replication (README, "Stop 34, replication", also written before its runs): seeds 6-8 in out/emotion/cv3,
`--replication`: the three speeds stay if B - A averaged over those three folds is above zero.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from logit_offsets import balanced_accuracy, nested_offsets, out_of_fold  # beside this script

from talking_head.constants import EMOTIONS

SPEEDS = (0.9, 1.0, 1.1)


def nested(logp: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Balanced accuracy of each fold with offsets fitted on the other folds; and the pooled predictions."""
    biases, pred = nested_offsets(logp, labels, folds)
    return [balanced_accuracy(logp[folds == k], labels[folds == k], bias)
            for k, bias in zip(np.unique(folds), biases)], pred


def recall(pred: np.ndarray, labels: np.ndarray) -> str:
    return ", ".join(f"{EMOTIONS[c]} {np.mean(pred[labels == c] == c):.0%}" for c in np.unique(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("work_dirs", nargs="+", help="speaker_cv.sh work dirs (three seeds per fold)")
    parser.add_argument("--replication", action="store_true",
                        help="the replication's rule (three fresh folds: the speeds stay if the mean gain is > 0)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gains, rows, pooled = [], [], {"A": [], "B": [], "labels": []}
    for work_dir in args.work_dirs:
        plain, labels, folds = out_of_fold(args.data_dir, work_dir, 3)
        speeds = out_of_fold(args.data_dir, work_dir, 3, test_time_speeds=SPEEDS)[0]
        (a, pred_a), (b, pred_b) = nested(plain, labels, folds), nested(speeds, labels, folds)
        for k, (x, y) in enumerate(zip(a, b)):
            rows.append({"work_dir": work_dir, "fold": k, "A": x, "B": y})
            gains.append(y - x)
            print(f"{work_dir} fold {k}: A {x:.1%}  B {y:.1%}  ({y - x:+.1%})")
        pooled["A"].append(pred_a), pooled["B"].append(pred_b), pooled["labels"].append(labels)
    labels = np.concatenate(pooled["labels"])
    for name in ("A", "B"):
        pred = np.concatenate(pooled[name])
        print(f"{name}, out-of-fold over all folds: accuracy {np.mean(pred == labels):.1%}; recall {recall(pred, labels)}")
    if args.replication:
        adopted = len(gains) == 3 and np.mean(gains) > 0
        verdict = "the three speeds stay" if adopted else "back to one speed (stop 33's classifier)"
    else:
        adopted = len(gains) == 6 and np.mean(gains) >= 0.01 and sum(g > 0 for g in gains) >= 4
        verdict = "read at three speeds" if adopted else "one speed stays"
    print(f"B - A, balanced accuracy: mean {np.mean(gains):+.2%} (per fold {', '.join(f'{g:+.1%}' for g in gains)}); "
          f"rule: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"speeds": SPEEDS, "folds": rows, "mean_gain": float(np.mean(gains)),
                                               "adopted": bool(adopted)}, indent=1))


if __name__ == "__main__":
    main()
