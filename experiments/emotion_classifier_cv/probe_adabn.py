"""Stop 35: unlabelled domain adaptation by batch-norm statistics (AdaBN: Li et al. 2016). The CNN members'
BatchNorm layers normalise with running means and variances learned on RAVDESS; here they are re-estimated, with no
label and no gradient, from the audio of another set, and the members are scored again:

- `ravdess`: RAVDESS actors 01-12 without augmentation (what the layers would hold without the training's
  augmentation: the control);
- `cremad_train`: CREMA-D's 51 training actors (77 clips; the landmark model's emotion branch trains on them);
- `mix`: both.

Scored (one speed, no offsets, each member alone and the members averaged) on RAVDESS actors 13-16, and on
CREMA-D's 13 held-out actors (23 clips: never seen, not even unlabelled) and its 51 training actors (77 clips: their
audio was read without labels, so a transductive figure). Reads no test label to choose anything.

    python experiments/emotion_classifier_cv/probe_adabn.py out/data/ravdess out/data/cremad \
        out/emotion/cv/all_s0 out/emotion/cv/all_s1 out/emotion/cv2/all_s2 [--json out.json]
"""

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from talking_head.data.dataset import EmotionAudioDataset
from talking_head.evaluation.emotion import emotion_scores
from talking_head.models.emotion_classifier import (load_emotion_classifier, load_emotion_feature_extractor,
                                                    predict_emotion)


def waves(root: str, split: str | None) -> tuple[list[np.ndarray], np.ndarray]:
    data = EmotionAudioDataset(root, split=split, max_seconds=30.0, random_crop=False)
    items = [data[i] for i in range(len(data))]
    return [it["audio"].numpy() for it in items], np.array([int(it["label"]) for it in items])


@torch.no_grad()
def adapt_batchnorm(model, extractor, windows: np.ndarray, batch_size: int = 32):
    """A copy of `model` whose BatchNorm running statistics are the plain average over `windows` (the extractor's
    `windows` of the audio to adapt to, concatenated)."""
    model = copy.deepcopy(model).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    order = np.random.default_rng(0).permutation(len(windows))
    for start in range(0, len(windows), batch_size):
        batch = torch.from_numpy(windows[order[start:start + batch_size]]).float()
        model(**extractor.model_inputs(batch))
    return model.eval()


def scores(probs: np.ndarray, labels: np.ndarray, present_only: bool) -> tuple[float, float]:
    allowed = np.bincount(labels, minlength=probs.shape[1]) > 0 if present_only else np.ones(probs.shape[1], bool)
    s = emotion_scores(labels, np.where(allowed[None], probs, -np.inf).argmax(1))
    return s["accuracy"], s["balanced_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ravdess")
    parser.add_argument("cremad")
    parser.add_argument("members", nargs="+")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = {"ravdess_test": waves(args.ravdess, "test"), "cremad_heldout": waves(args.cremad, "test"),
            "cremad_train": waves(args.cremad, "train")}
    sources = {"as trained": None, "ravdess": waves(args.ravdess, "train")[0],
               "cremad_train": sets["cremad_train"][0]}
    sources["mix"] = sources["ravdess"] + sources["cremad_train"]
    probs = {name: {k: [] for k in sets} for name in sources}
    windows = None  # each source's windows, read once (the members share one feature extractor)
    for folder in args.members:
        model = load_emotion_classifier(Path(folder) / "emotion_classifier")
        extractor = load_emotion_feature_extractor(Path(folder) / "emotion_classifier", model)
        windows = windows or {name: np.concatenate([extractor.windows(w) for w in audio])
                              for name, audio in sources.items() if audio is not None}
        for name, audio in sources.items():
            adapted = model if audio is None else adapt_batchnorm(model, extractor, windows[name])
            for key, (test_audio, _) in sets.items():
                probs[name][key].append(predict_emotion(adapted, extractor, test_audio).numpy())
    rows = []
    for name in sources:
        row = {"statistics": name}
        for key, (_, labels) in sets.items():
            present = key != "ravdess_test"
            singles = [scores(p, labels, present) for p in probs[name][key]]
            mean_logp = np.mean([np.log(np.clip(p, 1e-12, None)) for p in probs[name][key]], axis=0)
            row[key] = {"members": [a for a, _ in singles], "members_balanced": [b for _, b in singles],
                        "average": scores(mean_logp, labels, present)}
        rows.append(row)
        print(f"{name:13s} " + "  ".join(
            f"{key} members {np.mean(row[key]['members']):.1%} avg {row[key]['average'][0]:.1%}/"
            f"{row[key]['average'][1]:.1%}" for key in sets))
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
