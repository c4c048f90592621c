"""Emotion in the face, read from landmarks alone (issue 16).

One normalisation, used by the expression classifier here and by the landmark trainer's
`--neutral_reference` (talking_head.trainers.landmarks), so what the model is taught and what it is scored
on can never disagree:

* `normalise_shape`: iBUG-68 landmarks (..., 68, 2), any units, -> the face's own frame: centred on the nose
  (points 27-35), rotated so the jaw ends 0 -> 16 are horizontal, divided by the face width |p16 - p0|.
  Head position, roll and size are gone; the shape (the person's and the expression's) is left.
* `clip_features`: a clip's mean normalised shape, flattened (136 numbers).
* `ExpressionClassifier`: standardised logistic regression on `clip_features` (scikit-learn), its C picked
  by actor-grouped cross-validation on the training actors.
* `emotion_offsets`: the mean normalised shape of each emotion's clips minus that of the neutral clips (what
  each emotion does to a face, in face widths), and `apply_offset` puts such an offset on a face in any pose.

The evaluation (`expression_evaluation`, behind `talking-head evaluate --expression-data`): the classifier is
trained on the real landmarks of a prepared CREMA-D set's training actors (`talking-head prepare cremad`);
its accuracy on the held-out actors' real clips is the **reference** (how well real expressions can be read
from landmarks at all); its accuracy on landmarks **generated** by the landmark model from each held-out
actor's neutral clip (audio + first frame as identity) with each trained emotion is the **score**.

Why the mean shape and not "minus the actor's neutral face": CREMA-D's shipped subset holds 1-4 clips per
actor and most actors have no neutral clip, so there is no per-actor neutral to subtract; the classifier has to
read the expression through the identity's shape, for real and generated clips alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS, NO_EMOTION

NOSE_POINTS = (27, 28, 29, 30, 31, 32, 33, 34, 35)
# The classes a prepared CREMA-D set carries (it has no contempt and no surprised).
CREMAD_CLASSES = ("neutral", "angry", "disgusted", "fear", "happy", "sad")


def _frame(landmarks: np.ndarray):
    """(centre (..., 1, 2), cos (...), sin (...), width (...)) of each face's own frame."""
    lm = np.asarray(landmarks, dtype=np.float64)
    centre = lm[..., list(NOSE_POINTS), :].mean(axis=-2, keepdims=True)
    across = lm[..., 16, :] - lm[..., 0, :]
    width = np.maximum(np.linalg.norm(across, axis=-1), 1e-9)
    angle = np.arctan2(across[..., 1], across[..., 0])
    return centre, np.cos(angle), np.sin(angle), width


def normalise_shape(landmarks) -> np.ndarray:
    """(..., 68, 2) landmarks -> the same points centred on the nose, unrotated, in face widths (float64)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    centre, cos, sin, width = _frame(lm)
    x = lm - centre
    c, s, w = cos[..., None], sin[..., None], width[..., None]
    # rotate by -angle
    out = np.stack([c * x[..., 0] + s * x[..., 1], -s * x[..., 0] + c * x[..., 1]], axis=-1)
    return out / w[..., None]


def apply_offset(landmarks, offset) -> np.ndarray:
    """Add `offset` (68, 2), given in the face's own frame (`normalise_shape` units), to faces (..., 68, 2) in
    their own pose and size: rotated by each face's roll and scaled by its width."""
    lm = np.asarray(landmarks, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    _, cos, sin, width = _frame(lm)
    c, s, w = cos[..., None], sin[..., None], width[..., None]
    d = np.stack([c * offset[..., 0] - s * offset[..., 1], s * offset[..., 0] + c * offset[..., 1]], axis=-1)
    return lm + d * w[..., None]


def clip_features(landmarks) -> np.ndarray:
    """A clip's (T, 68, 2) landmarks -> its mean normalised shape, (136,). NaN frames (no face) are skipped."""
    lm = np.asarray(landmarks, dtype=np.float64)
    valid = np.isfinite(lm).all(axis=(-1, -2))
    if not valid.any():
        raise ValueError("a clip without any frame with a face has no expression features")
    return normalise_shape(lm[valid]).mean(axis=0).reshape(-1)


def emotion_offsets(shapes, labels, neutral: str = "neutral") -> dict[str, np.ndarray]:
    """{emotion: (68, 2) mean shape of its clips minus the neutral clips' mean shape}, from clips' mean
    normalised shapes `shapes` (N, 68, 2) and their emotion names `labels`. Neutral maps to zeros."""
    shapes = np.asarray(shapes, dtype=np.float64)
    labels = np.asarray(labels)
    if not (labels == neutral).any():
        raise ValueError(f"emotion_offsets needs {neutral!r} clips (the reference expression)")
    base = shapes[labels == neutral].mean(axis=0)
    return {str(e): shapes[labels == e].mean(axis=0) - base for e in sorted(set(labels.tolist()))}


class ExpressionClassifier:
    """Standardised multinomial logistic regression on `clip_features`; C chosen by grouped CV."""

    C_GRID = (0.01, 0.1, 1.0, 10.0)

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.model = None
        self.C = None
        self.cv_accuracy = None

    def fit(self, features, labels, groups=None) -> "ExpressionClassifier":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
        if len(set(y.tolist())) < 2:
            raise ValueError("the expression classifier needs at least two classes")

        def make(C):
            return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))

        groups = np.asarray(groups) if groups is not None else np.arange(len(y))
        folds = min(5, len(set(groups.tolist())))
        scores = {}
        if folds >= 2:
            for C in self.C_GRID:
                scores[C] = float(cross_val_score(make(C), X, y, groups=groups, cv=GroupKFold(folds)).mean())
            self.C = max(scores, key=lambda c: (scores[c], -c))
            self.cv_accuracy = scores[self.C]
        else:
            self.C = 1.0
        self.model = make(self.C).fit(X, y)
        return self

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.model.classes_]

    def predict(self, features) -> np.ndarray:
        return self.model.predict(np.asarray(features, dtype=np.float64).reshape(-1, self.model[0].n_features_in_))

    def predict_proba(self, features) -> np.ndarray:
        return self.model.predict_proba(np.asarray(features, dtype=np.float64)
                                        .reshape(-1, self.model[0].n_features_in_))


def _accuracy(pred, truth) -> float:
    pred, truth = np.asarray(pred), np.asarray(truth)
    return float((pred == truth).mean()) if len(truth) else float("nan")


def _confusion(pred, truth, classes) -> list[list[int]]:
    idx = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), dtype=int)
    for p, t in zip(pred, truth):
        if p in idx and t in idx:
            m[idx[t], idx[p]] += 1
    return m.tolist()


def load_expression_clips(data) -> list[dict]:
    """The emotion-labelled video clips of a prepared dataset: {clip_id, split, speaker, emotion, landmarks
    (T, 68, 2) normalised to the crop, audio path, fps, frames_dir}."""
    from talking_head.data import layout

    root = Path(data)
    out = []
    for r in layout.read_manifest(root):
        if r.get("kind") != "video" or not r.get("emotion"):
            continue
        lm = np.load(root / r["landmarks"], allow_pickle=False).astype(np.float64) / float(r["size"])
        out.append({"clip_id": r["clip_id"], "split": r["split"], "speaker": r["speaker"], "emotion": r["emotion"],
                    "landmarks": lm, "audio": str(root / r["audio"]), "fps": float(r["fps"]), "row": r})
    if not out:
        raise ValueError(f"{root} has no emotion-labelled video clips (prepare one with `talking-head prepare "
                         "cremad`)")
    return out


def generated_landmarks(predict, clip: dict, emotion: str, emotion_scale: float = 1.0) -> np.ndarray:
    """The landmark model's (T, 68, 2) landmarks for a clip's audio and first face frame, with `emotion`.
    `predict(waveform (1, S), identity (1, 68, 2), num_frames, fps, labels (1,), emotion_scale)` is the
    pipeline's `predict_landmarks`."""
    import torch

    from talking_head.audio import load_audio
    from talking_head.constants import emotion_label

    lm = clip["landmarks"]
    valid = np.flatnonzero(np.isfinite(lm).all(axis=(1, 2)))
    ident = torch.from_numpy(lm[valid[0]]).float()[None]
    wave = torch.from_numpy(load_audio(clip["audio"])).float()[None]
    labels = torch.tensor([emotion_label(emotion)], dtype=torch.long)
    with torch.no_grad():
        pred = predict(wave, ident, len(lm), clip["fps"], labels, emotion_scale=emotion_scale)
    return pred[0].numpy().astype(np.float64)


def expression_evaluation(data, predict=None, emotions=CREMAD_CLASSES, source_emotion: str = "neutral",
                          emotion_scale: float = 1.0, seed: int = 0) -> dict:
    """Reference and generated expression accuracy (see the module docstring) as a JSON-able dict.

    `predict`: the pipeline's `predict_landmarks` (None: the reference alone)."""
    clips = load_expression_clips(data)
    train = [c for c in clips if c["split"] == "train"]
    test = [c for c in clips if c["split"] == "test"]
    if not train or not test:
        raise ValueError(f"{data} needs train and test clips (split by actor) for the expression evaluation")
    clf = ExpressionClassifier(seed=seed).fit([clip_features(c["landmarks"]) for c in train],
                                              [c["emotion"] for c in train], [c["speaker"] for c in train])
    classes = clf.classes
    truth = [c["emotion"] for c in test]
    pred = clf.predict([clip_features(c["landmarks"]) for c in test]).tolist()
    per_class = {e: _accuracy([p for p, t in zip(pred, truth) if t == e], [t for t in truth if t == e])
                 for e in classes}
    result = {
        "classifier": {"kind": "standardised logistic regression on per-clip mean normalised landmarks",
                       "classes": classes, "C": clf.C, "cv_accuracy_train_actors": clf.cv_accuracy,
                       "train_clips": len(train), "train_actors": sorted({c["speaker"] for c in train}, key=str),
                       "test_clips": len(test), "test_actors": sorted({c["speaker"] for c in test}, key=str)},
        "chance": 1.0 / len(classes),
        "reference": {"accuracy": _accuracy(pred, truth), "per_class": per_class,
                      "counts": {e: truth.count(e) for e in classes},
                      "confusion": _confusion(pred, truth, classes),
                      "clips": {c["clip_id"]: {"true": t, "pred": p} for c, t, p in zip(test, truth, pred)}},
    }
    if predict is None:
        return result
    sources = [c for c in test if c["emotion"] == source_emotion]
    if not sources:
        raise ValueError(f"{data} has no held-out {source_emotion!r} clips to generate from")
    gen_truth, gen_pred, rows = [], [], {}
    for c in sources:
        for e in emotions:
            lm = generated_landmarks(predict, c, e, emotion_scale)
            p = str(clf.predict(clip_features(lm))[0])
            gen_truth.append(e)
            gen_pred.append(p)
            rows[f"{c['clip_id']}:{e}"] = {"asked": e, "pred": p}
    result["generated"] = {
        "source": f"the held-out actors' {source_emotion} clips (audio + first frame as identity)",
        "source_clips": [c["clip_id"] for c in sources], "emotion_scale": float(emotion_scale),
        "accuracy": _accuracy(gen_pred, gen_truth),
        "per_emotion": {e: _accuracy([p for p, t in zip(gen_pred, gen_truth) if t == e], [e] * len(sources))
                        for e in emotions},
        "confusion": _confusion(gen_pred, gen_truth, classes), "clips": rows,
    }
    return result


def contact_sheet(pipe, photo, audio, emotions=CREMAD_CLASSES, frame: float | None = None, emotion_scale=1.0,
                  size: int = 256, output=None, **kwargs):
    """`photo` rendered by `pipe` with each emotion, one labelled column each (the same audio, the same frame:
    by default the frame where the emotions' mouths differ most): the face crop above, the mouth zoomed below.
    Returns (the (H, W, 3) uint8 sheet, the frame index); writes a PNG to `output` when given."""
    from PIL import Image, ImageDraw

    outs = {}
    for e in emotions:
        outs[e] = pipe(audio, photo, emotion=e, emotion_scale=emotion_scale, output_crop=True, **kwargs)
    if frame is None:
        pts = np.stack([outs[e].landmarks[0] for e in emotions])  # (E, T, 68, 2)
        spread = pts[:, :, 48:68].std(axis=0).mean(axis=(-1, -2))  # (T,)
        index = int(np.argmax(spread))
    else:
        index = int(round(frame * outs[emotions[0]].fps))
    # The mouth, zoomed: one square for every column (around the first emotion's mouth in this frame), so
    # widths and openings compare directly.
    pts = outs[emotions[0]].landmarks[0][min(index, len(outs[emotions[0]].landmarks[0]) - 1)]
    centre = pts[48:68].mean(axis=0)
    side = 2.4 * float(np.linalg.norm(pts[54] - pts[48]))
    box = (centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2)
    tiles = []
    for e in emotions:
        f = outs[e].frames[0][min(index, len(outs[e].frames[0]) - 1)]
        img = Image.fromarray((np.clip(f, 0, 1) * 255).round().astype(np.uint8))
        face = img.resize((size, size), Image.BICUBIC)
        mouth = img.crop(tuple(int(round(v)) for v in box)).resize((size, size), Image.BICUBIC)
        canvas = Image.new("RGB", (size, 2 * size + 22), (255, 255, 255))
        canvas.paste(face, (0, 22))
        canvas.paste(mouth, (0, size + 22))
        ImageDraw.Draw(canvas).text((6, 5), f"{e} (scale {emotion_scale:g})" if emotion_scale != 1 else e,
                                    fill=(0, 0, 0))
        tiles.append(np.asarray(canvas))
    sheet = np.concatenate(tiles, axis=1)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(output)
    return sheet, index


def report_lines(ex: dict) -> list[str]:
    """The report.md section of `expression_evaluation`'s result (talking_head.evaluation.report)."""

    def f(v, d=3):
        return "n/a" if v is None or v != v else f"{v:.{d}f}"

    clf, ref = ex["classifier"], ex["reference"]
    md = ["## Emotion in the face (landmark expression classifier)", "",
          f"Classifier: {clf['kind']} (C = {clf['C']}, chosen by actor-grouped cross-validation on the "
          f"training actors: {f(clf['cv_accuracy_train_actors'])}), trained on {clf['train_clips']} real clips of "
          f"{len(clf['train_actors'])} training actors of `{ex.get('data', '')}`; chance {f(ex['chance'])}.", "",
          f"**Reference** (real landmarks of {clf['test_clips']} clips of the {len(clf['test_actors'])} held-out "
          f"actors {', '.join(clf['test_actors'])}): **accuracy {f(ref['accuracy'])}**.", ""]
    gen = ex.get("generated")
    rows = []
    for e in clf["classes"]:
        rows.append([e, f(ref["per_class"].get(e)), str(ref["counts"].get(e, 0)),
                     f(gen["per_emotion"].get(e)) if gen else "—"])
    header = ["emotion", "reference recall (real)", "real clips", "generated recall"]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                            for r in rows] + [""]
    if gen:
        md += [f"**Generated** (the landmark model, emotion_scale {gen['emotion_scale']:g}, each emotion from "
               f"{gen['source']}: {len(gen['source_clips'])} clips x {len(gen['per_emotion'])} emotions): "
               f"**accuracy {f(gen['accuracy'])}** against the reference's {f(ref['accuracy'])} "
               f"(goal: generated >= reference).", ""]
    sheet = ex.get("contact_sheet")
    if sheet:
        md += [f"Contact sheet: `{sheet['photo']}` with `{sheet['audio']}`, frame {sheet['frame']} (where the "
               f"emotions' mouths differ most), one column per emotion: the face crop above, the mouth zoomed "
               f"below (the same square in every column).", "",
               f"![emotion contact sheet]({sheet['file']})", ""]
    return md


def save_json(obj, path) -> None:
    Path(path).write_text(json.dumps(obj, indent=1))


__all__ = ["normalise_shape", "apply_offset", "clip_features", "emotion_offsets", "ExpressionClassifier",
           "expression_evaluation", "contact_sheet", "load_expression_clips", "generated_landmarks",
           "CREMAD_CLASSES", "EMOTIONS", "NO_EMOTION"]
