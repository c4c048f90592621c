"""Stop 32, second question: per-class logit offsets for the averaged classifier, fitted on the cross-validation's
out-of-fold predictions (speaker_cv.sh's fold runs: each utterance of the training speakers scored by the average
of the two runs that never heard its speaker) and judged by nested cross-validation (fit on two folds, score on
the third). Prints the rule's verdict and the offsets fitted on all folds. Reads no test speaker.

    python experiments/emotion_classifier_cv/logit_offsets.py out/data/ravdess out/emotion/cv [--json out.json]

Stop 33 (the replication): `--members 3 --against_members 2` compares the three-seed averages with nested offsets
against the two-seed averages without any; `--pool out/emotion/cv` fits the final offsets on both
cross-validations' out-of-fold predictions together. Stop 34: `--test_time_speeds '[0.9, 1.0, 1.1]'` reads every
clip at those speeds (tta_speeds.py asks whether to).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from speaker_cv import fold_runs, fold_speakers  # beside this script

from talking_head.constants import EMOTIONS
from talking_head.data.dataset import EmotionAudioDataset
from talking_head.models.emotion_classifier import EmotionClassifierEnsemble, predict_emotion

GRID = np.round(np.arange(-1.0, 1.0001, 0.1), 1)


def balanced_accuracy(logp: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> float:
    pred = (logp + bias).argmax(1)
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def fit_offsets(logp: np.ndarray, labels: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Coordinate ascent on balanced accuracy over the classes present, each offset on GRID (ties: the smaller
    offset), from no offsets."""
    bias = np.zeros(logp.shape[1])
    for _ in range(rounds):
        for c in np.unique(labels):
            scores = []
            for value in GRID:
                trial = bias.copy()
                trial[c] = value
                scores.append((balanced_accuracy(logp, labels, trial), -abs(value), value))
            bias[c] = max(scores)[2]
    return bias


def nested_offsets(logp: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Nested cross-validation: for each fold, the offsets fitted on the other folds; and every utterance's
    prediction with its own fold's offsets."""
    biases, pred = [], np.zeros(len(labels), dtype=int)
    for k in np.unique(folds):
        train, held = folds != k, folds == k
        biases.append(fit_offsets(logp[train], labels[train]))
        pred[held] = (logp[held] + biases[-1]).argmax(1)
    return biases, pred


def out_of_fold(data_dir: str, work_dir: str, members: int, test_time_speeds=(1.0,),
                prepare=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log-probabilities, labels, fold index) of every training-speaker utterance, from its fold's average of
    the first `members` seeds (read at `test_time_speeds`, stop 34). `prepare(model, extractor, held_out_speakers)`,
    if given, returns the model to score with instead (stop 35: batch norms re-estimated)."""
    logps, labels, fold_ids = [], [], []
    for k, (fold, runs) in enumerate(sorted(fold_runs(work_dir).items())):
        data = EmotionAudioDataset(data_dir, split="train", max_seconds=30.0, random_crop=False,
                                   speakers=fold_speakers(runs[0].name))
        items = [data[i] for i in range(len(data))]
        model, extractor = EmotionClassifierEnsemble.from_members(
            [run / "emotion_classifier" for run in runs[:members]])
        extractor = extractor.with_test_time_speeds(list(test_time_speeds))
        if prepare is not None:
            model = prepare(model, extractor, fold_speakers(runs[0].name))
        probs = predict_emotion(model, extractor, [it["audio"].numpy() for it in items])
        logps.append(torch.log(probs.clamp_min(1e-12)).numpy())
        labels += [int(it["label"]) for it in items]
        fold_ids += [k] * len(items)
    return np.concatenate(logps), np.array(labels), np.array(fold_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("work_dir")
    parser.add_argument("--members", type=int, default=2,
                        help="average this many seeds per fold (2: the size of the shipped average)")
    parser.add_argument("--against_members", type=int, default=None,
                        help="stop 33: compare against this many seeds averaged without offsets (default: the same "
                             "averages without offsets)")
    parser.add_argument("--pool", default=None,
                        help="another cross-validation's work dir: the final offsets are fitted on both together")
    parser.add_argument("--test_time_speeds", type=json.loads, default=[1.0],
                        help="stop 34: read every clip at these speeds (JSON list, e.g. [0.9, 1.0, 1.1])")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logp, labels, folds = out_of_fold(args.data_dir, args.work_dir, args.members, args.test_time_speeds)
    baseline = logp if args.against_members is None else out_of_fold(args.data_dir, args.work_dir,
                                                                      args.against_members)[0]
    none = np.zeros(logp.shape[1])
    rows = []
    for k, bias in zip(np.unique(folds), nested_offsets(logp, labels, folds)[0]):
        held = folds == k
        rows.append((balanced_accuracy(baseline[held], labels[held], none),
                     balanced_accuracy(logp[held], labels[held], bias), bias))
        print(f"fold {k}: without offsets {rows[-1][0]:.1%}, with offsets fitted on the other folds {rows[-1][1]:.1%} "
              f"(offsets {', '.join(f'{EMOTIONS[c]} {b:+.1f}' for c, b in enumerate(bias) if b)})")
    gains = [with_ - without for without, with_, _ in rows]
    adopted = len(rows) == 3 and np.mean(gains) >= 0.01 and sum(g > 0 for g in gains) >= 2
    print(f"nested cross-validation: balanced accuracy {np.mean([r[0] for r in rows]):.1%} -> "
          f"{np.mean([r[1] for r in rows]):.1%} (gain {np.mean(gains):+.1%}; per fold "
          f"{', '.join(f'{g:+.1%}' for g in gains)}); rule: {'adopt' if adopted else 'no offsets'}")
    if args.pool:
        other, other_labels, _ = out_of_fold(args.data_dir, args.pool, args.members, args.test_time_speeds)
        logp, labels = np.concatenate([logp, other]), np.concatenate([labels, other_labels])
    final = fit_offsets(logp, labels)
    print(f"out-of-fold, all {len(labels)}: {balanced_accuracy(logp, labels, none):.1%} without, "
          f"{balanced_accuracy(logp, labels, final):.1%} with the offsets fitted on all folds (in-sample): "
          f"{json.dumps([round(float(b), 1) for b in final])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"nested": [{"without": r[0], "with": r[1], "offsets": r[2].tolist()}
                                                          for r in rows], "adopted": bool(adopted),
                                               "offsets": [round(float(b), 1) for b in final]}, indent=1))


if __name__ == "__main__":
    main()
