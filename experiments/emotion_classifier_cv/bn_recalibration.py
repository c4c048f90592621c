"""Stop 35: re-estimate the members' BatchNorm statistics on their training speakers' clean speech? (README, "Stop
35"; the rule was committed before this ran.) On the three cross-validations over actors 01-12 (speaker_cv.sh's fold
runs, seeds 0-2, 3-5, 6-8: nine folds), A = the fold's three seeds averaged, read at 0.9/1.0/1.1, offsets fitted on
the other two folds (the shipped procedure); B = the same with every member's BatchNorm running statistics the plain
average over the windows of the fold's eight training speakers' utterances as the extractor reads them (no
augmentation, no label, no gradient), its offsets fitted on its own out-of-fold predictions. B ships if B - A >= 1
point of balanced accuracy over the nine folds and > 0 in at least six. Reads no test speaker.
README: docs/results/emotion-classifier/README.md (figures: its cv/bn_recalibration.json).

    python experiments/emotion_classifier_cv/bn_recalibration.py out/data/ravdess out/emotion/cv out/emotion/cv2 \
        out/emotion/cv3 [--json out.json]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from logit_offsets import out_of_fold  # beside this script
from probe_adabn import adapt_batchnorm
from tta_speeds import SPEEDS, nested, recall

from talking_head.data.dataset import EmotionAudioDataset

TRAINING_SPEAKERS = [f"{k:02d}" for k in range(1, 13)]


def recalibrator(data_dir: str):
    """prepare(model, extractor, held_out) for out_of_fold: batch norms from the other training speakers' audio."""
    def prepare(model, extractor, held_out):
        speakers = [s for s in TRAINING_SPEAKERS if s not in held_out]
        data = EmotionAudioDataset(data_dir, split="train", max_seconds=30.0, random_crop=False, speakers=speakers)
        return adapt_batchnorm(model, extractor, np.concatenate([extractor.windows(data[i]["audio"].numpy())
                                                                 for i in range(len(data))]))
    return prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("work_dirs", nargs="+", help="speaker_cv.sh work dirs (three seeds per fold)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gains, rows, pooled = [], [], {"A": [], "B": [], "labels": []}
    for work_dir in args.work_dirs:
        plain, labels, folds = out_of_fold(args.data_dir, work_dir, 3, test_time_speeds=SPEEDS)
        recal = out_of_fold(args.data_dir, work_dir, 3, test_time_speeds=SPEEDS,
                            prepare=recalibrator(args.data_dir))[0]
        (a, pred_a), (b, pred_b) = nested(plain, labels, folds), nested(recal, labels, folds)
        for k, (x, y) in enumerate(zip(a, b)):
            rows.append({"work_dir": work_dir, "fold": k, "A": x, "B": y})
            gains.append(y - x)
            print(f"{work_dir} fold {k}: A {x:.1%}  B {y:.1%}  ({y - x:+.1%})", flush=True)
        pooled["A"].append(pred_a), pooled["B"].append(pred_b), pooled["labels"].append(labels)
    labels = np.concatenate(pooled["labels"])
    for name in ("A", "B"):
        pred = np.concatenate(pooled[name])
        print(f"{name}, out-of-fold over all folds: accuracy {np.mean(pred == labels):.1%}; recall {recall(pred, labels)}")
    adopted = len(gains) == 9 and np.mean(gains) >= 0.01 and sum(g > 0 for g in gains) >= 6
    print(f"B - A, balanced accuracy: mean {np.mean(gains):+.2%} (per fold {', '.join(f'{g:+.1%}' for g in gains)}, "
          f"{sum(g > 0 for g in gains)} of {len(gains)} above zero); rule: "
          f"{'re-estimate the batch norms' if adopted else 'nothing changes'}")
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps({"folds": rows, "mean_gain": float(np.mean(gains)), "adopted": bool(adopted)},
                                  indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
