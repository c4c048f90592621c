"""Emotion classifier evaluation: accuracy, per-class recall and the confusion matrix.

On the emotion-labelled audio of a prepared dataset's split (held-out speakers
for an emotion-audio set such as RAVDESS), each utterance whole (up to
`max_seconds`, centred), classified as the pipeline classifies it
(`emotion_probabilities`: a head on the audio encoder's states, or an older
classifier's `predict_emotion`, long audio in windows, logits averaged).
"""

from __future__ import annotations

import numpy as np

from talking_head.constants import EMOTIONS, NUM_EMOTIONS


def evaluate_emotion_classifier(model, feature_extractor, root, split: str | None = "test",
                                max_seconds: float = 30.0, batch_size: int = 8, present_only: bool = False) -> dict:
    """Scores of `model` on the labelled audio of `root`'s split (None: all of it); raises ValueError when there
    is none. `present_only`: the prediction is the most probable of the classes the data has (a cross-corpus
    test on a corpus with fewer classes, e.g. CREMA-D's six), as is usual for such a test. `feature_extractor`
    is the audio encoder for a `WhisperEmotionHead` (`emotion_probabilities`)."""
    from talking_head.data.dataset import EmotionAudioDataset

    data = EmotionAudioDataset(root, split=split, max_seconds=max_seconds, random_crop=False)
    allowed = np.bincount(data.labels, minlength=NUM_EMOTIONS) > 0 if present_only else np.ones(NUM_EMOTIONS, bool)
    labels, preds, ids, speakers = [], [], [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(len(data), start + batch_size))]
        probs = emotion_probabilities(model, feature_extractor, [it["audio"].numpy() for it in items])
        preds += np.where(allowed[None], probs, -1.0).argmax(axis=1).tolist()
        labels += [int(it["label"]) for it in items]
        ids += [it["clip_id"] for it in items]
        speakers += [it["speaker"] for it in items]
    return emotion_scores(np.array(labels), np.array(preds)) | {
        "data": str(root), "split": split or "all", "speakers": sorted(set(speakers)),
        "classes": [e for e, a in zip(EMOTIONS, allowed) if a],
        "items": [{"clip_id": c, "label": EMOTIONS[t], "predicted": EMOTIONS[p]}
                  for c, t, p in zip(ids, labels, preds)],
    }  # fmt: skip


def emotion_probabilities(model, reader, waves) -> np.ndarray:
    """(len(waves), 8) probabilities of 16 kHz waveforms: a `WhisperEmotionHead` reads the audio encoder `reader`
    (calibrated probabilities, as the pipeline draws with), an older classifier its feature extractor `reader`."""
    from talking_head.models.emotion_classifier import predict_emotion
    from talking_head.models.emotion_head import WhisperEmotionHead

    if isinstance(model, WhisperEmotionHead):
        return model.classify(reader, list(waves)).numpy()
    return predict_emotion(model, reader, list(waves)).numpy()


def emotion_scores(labels: np.ndarray, preds: np.ndarray) -> dict:
    """Accuracy, per-class recall (None for classes without examples), support and confusion counts.

    confusion[i][j] = number of items of true class i predicted as class j (EMOTIONS order).
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape or labels.size == 0:
        raise ValueError("labels and predictions must be non-empty and of the same length")
    confusion = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    support = confusion.sum(axis=1)
    recall = {EMOTIONS[k]: (float(confusion[k, k] / support[k]) if support[k] else None) for k in range(NUM_EMOTIONS)}
    present = [r for r in recall.values() if r is not None]
    return {
        "n": int(labels.size),
        "accuracy": float((labels == preds).mean()),
        "balanced_accuracy": float(np.mean(present)),  # mean recall over the classes present
        "chance": float(support.max() / support.sum()),  # always predicting the largest class
        "per_class_recall": recall,
        "support": {EMOTIONS[k]: int(support[k]) for k in range(NUM_EMOTIONS)},
        "confusion": confusion.tolist(),
        "labels": list(EMOTIONS),
    }
