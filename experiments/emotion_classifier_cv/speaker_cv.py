"""Stop 32: score speaker_cv.sh's runs. For each fold (four training speakers held out), each seed's last weights
and the seeds averaged (`EmotionClassifierEnsemble`, as it would ship) on the fold's held-out speakers; then the
rule written down before the runs: the average ships if it beats the single runs' mean by >= 1 point of balanced
accuracy over the folds and in at least two of them. Reads no test speaker.

    python experiments/emotion_classifier_cv/speaker_cv.py out/data/ravdess out/emotion/cv [--json out.json]
"""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from talking_head.constants import EMOTIONS
from talking_head.data.dataset import EmotionAudioDataset
from talking_head.evaluation.emotion import emotion_scores
from talking_head.models.emotion_classifier import (EmotionClassifierEnsemble, load_emotion_classifier,
                                                    load_emotion_feature_extractor, predict_emotion)


def fold_speakers(name: str) -> list[str]:
    """fold05_s0 -> ['05', '06', '07', '08'] (the runs' --validation_speakers, as speaker_cv.sh names them)."""
    first = int(re.match(r"fold(\d+)_s\d+$", name).group(1))
    return [f"{first + i:02d}" for i in range(4)]


def fold_runs(work_dir) -> dict[str, list[Path]]:
    """speaker_cv.sh's finished fold runs, grouped by fold ({"fold01": [.../fold01_s0, ...], ...}, seeds in order)."""
    folds: dict[str, list[Path]] = {}
    for run in sorted(p.parent for p in Path(work_dir).glob("fold*_s*/.done")):
        folds.setdefault(run.name.split("_")[0], []).append(run)
    return folds


def score(model, extractor, items) -> dict:
    probs = predict_emotion(model, extractor, [it["audio"].numpy() for it in items])
    labels = np.array([int(it["label"]) for it in items])
    return emotion_scores(labels, probs.argmax(-1).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("work_dir")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, table = [], []
    for fold, members in sorted(fold_runs(args.work_dir).items()):
        speakers = fold_speakers(members[0].name)
        data = EmotionAudioDataset(args.data_dir, split="train", max_seconds=30.0, random_crop=False,
                                   speakers=speakers)
        items = [data[i] for i in range(len(data))]
        singles = []
        for run in members:
            model = load_emotion_classifier(run / "emotion_classifier")
            singles.append(score(model, load_emotion_feature_extractor(run / "emotion_classifier", model), items))
        by_size = {}  # the average of the first k seeds, k = 2 .. all: does one more member still help?
        for k in range(2, len(members) + 1):
            ensemble, extractor = EmotionClassifierEnsemble.from_members(
                [run / "emotion_classifier" for run in members[:k]])
            by_size[k] = score(ensemble, extractor, items)
        averaged = by_size[len(members)] if by_size else singles[0]
        row = {"fold": fold, "speakers": speakers, "n": len(items), "seeds": [run.name for run in members],
               "single_accuracy": [s["accuracy"] for s in singles],
               "single_balanced": [s["balanced_accuracy"] for s in singles],
               "ensemble_accuracy": averaged["accuracy"], "ensemble_balanced": averaged["balanced_accuracy"],
               "ensemble_recall": averaged["per_class_recall"],
               "averaged_by_size": {k: [v["accuracy"], v["balanced_accuracy"]] for k, v in by_size.items()}}
        rows.append(row)
        table.append(f"| {', '.join(speakers)} | "
                     + " · ".join(f"{a:.1%} / {b:.1%}" for a, b in zip(row["single_accuracy"], row["single_balanced"]))
                     + f" | {np.mean(row['single_accuracy']):.1%} / {np.mean(row['single_balanced']):.1%}"
                     + f" | **{row['ensemble_accuracy']:.1%} / {row['ensemble_balanced']:.1%}** |")
    print("| held-out speakers | each seed: acc / bal | seeds' mean | seeds averaged (one model) |")
    print("|---|---|---|---|")
    print("\n".join(table))
    gains = [r["ensemble_balanced"] - np.mean(r["single_balanced"]) for r in rows]
    mean_single = np.mean([np.mean(r["single_balanced"]) for r in rows])
    mean_ens = np.mean([r["ensemble_balanced"] for r in rows])
    complete = len(rows) == 3 and all(len(r["seeds"]) >= 2 for r in rows)
    ships = complete and mean_ens - mean_single >= 0.01 and sum(g > 0 for g in gains) >= 2
    print(f"\nbalanced accuracy over the folds: one run {mean_single:.1%}, averaged {mean_ens:.1%} "
          f"(gain {mean_ens - mean_single:+.1%}; per fold {', '.join(f'{g:+.1%}' for g in gains)})")
    print(f"accuracy over the folds: one run {np.mean([np.mean(r['single_accuracy']) for r in rows]):.1%}, "
          f"averaged {np.mean([r['ensemble_accuracy'] for r in rows]):.1%}")
    recall = {e: np.mean([r["ensemble_recall"][e] for r in rows]) for e in EMOTIONS
              if all(r["ensemble_recall"][e] is not None for r in rows)}
    print("averaged, recall per class over the folds: " + ", ".join(f"{e} {v:.0%}" for e, v in recall.items()))
    if all(3 in r["averaged_by_size"] for r in rows) and len(rows) == 3:  # stop 32's third question
        more = [r["averaged_by_size"][3][1] - r["averaged_by_size"][2][1] for r in rows]
        three_ships = np.mean(more) >= 0.01 and sum(g > 0 for g in more) >= 2
        first_two = ", ".join(name.split("_s")[1] for name in rows[0]["seeds"][:2])
        print(f"three averaged against two (seeds {first_two}), balanced: {', '.join(f'{g:+.1%}' for g in more)} "
              f"(mean {np.mean(more):+.1%}); rule: {'a third member ships' if three_ships else 'two stay'}")
    verdict = ("the average ships" if ships else "incomplete: 3 folds of >= 2 seeds needed" if not complete
               else "one run stays (d2)")
    print(f"rule: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"folds": rows, "single_balanced": mean_single,
                                               "ensemble_balanced": mean_ens, "ships": bool(ships)}, indent=1))


if __name__ == "__main__":
    main()
