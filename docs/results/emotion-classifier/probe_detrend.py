"""Linear probe (stop 30): log-mel utterance statistics with each utterance's long-term spectrum's smooth shape
(a polynomial of order 0-3 over the bands) removed, against the shipped normalisation (order -1).
Trained on RAVDESS actors 01-12, scored on 13-16 and on CREMA-D (6 classes). About a minute on one core.

    python docs/results/emotion-classifier/probe_detrend.py out/data/ravdess out/data/cremad
"""
import json, sys, numpy as np, soundfile as sf
from pathlib import Path
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from talking_head.models.emotion_classifier import EmotionFeatureExtractor
def load(d):
    out = []
    for l in open(Path(d) / "manifest.jsonl"):
        r = json.loads(l); w, sr = sf.read(Path(d) / r["audio"], dtype="float32")
        out.append((w if w.ndim == 1 else w.mean(1), r["emotion_id"], r["split"]))
    return out
ext = EmotionFeatureExtractor()
rav = load(sys.argv[1]); cre = load(sys.argv[2])
mels = {id(w): ext.log_mel(w) for w, *_ in rav + cre}
def detrend(m, order):
    if order < 0: return m
    b = np.linspace(-1, 1, m.shape[0]); ltas = m.mean(1)
    fit = np.polyval(np.polyfit(b, ltas, order), b)
    m = m - fit[:, None]; return m / max(m.std(), 1e-3)
def stats(m):
    d = np.abs(np.diff(m, axis=1)).mean(1) if m.shape[1] > 1 else np.zeros(m.shape[0])
    return np.concatenate([m.mean(1), m.std(1), np.percentile(m, 90, 1) - np.percentile(m, 10, 1), d])
tr = [r for r in rav if r[2] == "train"]; te = [r for r in rav if r[2] == "test"]; cls6 = np.unique([r[1] for r in cre])
for order in (-1, 0, 1, 2, 3):
    f = lambda rows: np.stack([stats(detrend(mels[id(w)], order)) for w, *_ in rows])
    X = f(tr); y = np.array([r[1] for r in tr]); sc = StandardScaler().fit(X)
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(sc.transform(X), y)
    out = []
    for rows, restrict in ((te, None), (cre, cls6)):
        p = clf.predict_proba(sc.transform(f(rows))); yy = np.array([r[1] for r in rows])
        if restrict is not None: p = p * np.isin(clf.classes_, restrict)
        pred = clf.classes_[p.argmax(1)]
        out.append("%.3f/%.3f" % (np.mean(pred == yy), np.mean([np.mean(pred[yy == c] == c) for c in np.unique(yy)])))
    print("detrend order", order, "RAV", out[0], "CRE", out[1], flush=True)
