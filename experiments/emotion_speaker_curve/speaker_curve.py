"""Stop 35: how the classifier's figures grow with the number of training speakers (a learning curve), to say how
many labelled speakers the CREMA-D goal (40 % cross-corpus) would take with this recipe.

Every run is the shipped members' recipe (d2's flags, 3000 updates, the last weights, one speed, no offsets), scored
alone on the test sets: RAVDESS actors 13-16 (7 classes) and CREMA-D (all 100 clips, its 6 classes). Runs on 4
training speakers: one per cross-validation fold, trained on that fold alone (`--validation_speakers` = the other
eight); on 8: speaker_cv.sh's fold runs (the other two folds); on 12: the final members (all_s*). Then a line in
log2(speakers) fitted to every run's figure, and where it would cross the goals.

    python experiments/emotion_speaker_curve/speaker_curve.py out/data/ravdess out/data/cremad \
        --runs 4 out/lc/em01 out/lc/em05 out/lc/em09 \
        --runs 8 out/emotion/cv/fold* out/emotion/cv2/fold* out/emotion/cv3/fold* \
        --runs 12 out/emotion/cv/all_s0 out/emotion/cv/all_s1 out/emotion/cv2/all_s2 \
        --json docs/results/emotion-classifier/cv/speaker_curve.json --plot docs/results/emotion-classifier/speaker_curve.png
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from talking_head.evaluation.emotion import evaluate_emotion_classifier
from talking_head.models.emotion_classifier import load_emotion_classifier, load_emotion_feature_extractor

GOALS = {"ravdess": 0.60, "cremad": 0.40}


def score_run(run: Path, ravdess: str, cremad: str) -> dict:
    model = load_emotion_classifier(run / "emotion_classifier")
    extractor = load_emotion_feature_extractor(run / "emotion_classifier", model)
    rav = evaluate_emotion_classifier(model, extractor, ravdess, split="test")
    cre = evaluate_emotion_classifier(model, extractor, cremad, split=None, present_only=True)
    return {"run": str(run), "ravdess": rav["accuracy"], "ravdess_balanced": rav["balanced_accuracy"],
            "cremad": cre["accuracy"], "cremad_balanced": cre["balanced_accuracy"]}


def fit_log2(speakers: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """value = a + b * log2(speakers), least squares over every run."""
    b, a = np.polyfit(np.log2(speakers), values, 1)
    return float(a), float(b)


def speakers_for(goal: float, a: float, b: float) -> float | None:
    """Where the fitted line reaches `goal` (None if it never rises)."""
    return float(2 ** ((goal - a) / b)) if b > 0 else None


def plot(rows: list[dict], fits: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.geomspace(4, 12, 50)  # the measured range only: no extrapolation drawn
    for key, colour, label in (("ravdess", "tab:blue", "RAVDESS actors 13-16 (7 classes)"),
                               ("cremad", "tab:red", "CREMA-D cross-corpus (6 classes)")):
        x = np.array([r["speakers"] for r in rows])
        y = np.array([r[key] for r in rows])
        jitter = 1 + 0.04 * np.random.default_rng(0).standard_normal(len(x))
        ax.scatter(x * jitter, 100 * y, s=12, alpha=0.5, color=colour)
        a, b = fits[key]["a"], fits[key]["b"]
        ax.plot(grid, 100 * (a + b * np.log2(grid)), color=colour, lw=1, ls="--")
        ax.plot([], [], color=colour, label=f"{label}: {100 * b:+.1f} points per doubling")
        ax.axhline(100 * GOALS[key], color=colour, lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlim(3.3, 15)
    ax.set_xticks([4, 8, 12], labels=["4", "8", "12"])
    ax.set_xlabel("training speakers (RAVDESS actors; each run alone, one speed, no offsets)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("The classifier's recipe against the number of training speakers\n(dotted: the goals; dashed: a line "
                 "in log2(speakers) through every run, over the measured range)", fontsize=9)
    ax.legend(fontsize=8, loc="center right", framealpha=0.9)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ravdess")
    parser.add_argument("cremad")
    parser.add_argument("--runs", nargs="+", action="append", required=True, metavar=("SPEAKERS", "RUN"),
                        help="a number of training speakers, then the run folders trained on that many")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for group in args.runs:
        speakers = int(group[0])
        for run in group[1:]:
            rows.append({"speakers": speakers} | score_run(Path(run), args.ravdess, args.cremad))
            print(f"{speakers:3d} speakers  {run}: RAVDESS {rows[-1]['ravdess']:.1%}  CREMA-D {rows[-1]['cremad']:.1%}",
                  flush=True)
    x = np.array([r["speakers"] for r in rows])
    fits = {}
    for key in ("ravdess", "ravdess_balanced", "cremad", "cremad_balanced"):
        y = np.array([r[key] for r in rows])
        a, b = fit_log2(x, y)
        means = {int(n): float(y[x == n].mean()) for n in np.unique(x)}
        spreads = {int(n): float(y[x == n].std()) for n in np.unique(x)}
        goal = GOALS.get(key)
        fits[key] = {"a": a, "b": b, "per_doubling": b, "mean": means, "sd": spreads,
                     "speakers_for_goal": speakers_for(goal, a, b) if goal else None}
        print(f"{key}: " + ", ".join(f"{n} speakers {m:.1%} (sd {spreads[n]:.1%})" for n, m in means.items())
              + f"; {b:+.1%} per doubling" + (f"; goal {goal:.0%} at ~{fits[key]['speakers_for_goal']:.0f} speakers"
                                              if goal and fits[key]["speakers_for_goal"] else ""))
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": rows, "fits": fits}, indent=1))
        tmp.replace(args.json)
    if args.plot:
        plot(rows, fits, args.plot)


if __name__ == "__main__":
    main()
