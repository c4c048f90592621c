"""Linear probes on per-utterance features: how much emotion a feature set carries for unseen speakers, and
how much of the miss is the speaker's own baseline (docs/results/emotion-classifier/README.md, "Stop 26").

    pip install opensmile        # openSMILE's eGeMAPS v02 functionals; not a dependency of the project
    python experiments/emotion_features_probe/probe_features.py out/data/ravdess out/data/cremad \
        [--classifier assets/pipeline/emotion_classifier]

Features: the log-mel statistics of the front-end probe (per band: mean, spread, 10-90 % range, mean absolute
change, on `EmotionFeatureExtractor.log_mel`) and eGeMAPS (88 functionals: pitch, jitter, shimmer, HNR,
formants, loudness, spectral slope). Probe: class-balanced logistic regression on standardised features,
trained on RAVDESS actors 01-12, scored on 13-16 and on all of CREMA-D (restricted to its 6 classes).
Rows:
- plain: the deployable setting, one utterance at a time;
- speaker-normalised: each speaker's features standardised over all of that speaker's utterances (an oracle
  at test time: it needs many utterances of the speaker, across emotions, which one recording does not give);
- gender-normalised: standardised per gender with the training actors' statistics (oracle gender);
- baseline removed: the speaker's mean predicted from the one utterance (ridge, cross-fitted over the
  training speakers) and subtracted, the deployable version of the speaker-normalised row;
- enrolment: the mean of k known-neutral utterances of the speaker (drawn at random, then left out of the
  scoring) subtracted from all of that speaker's utterances, next to the plain probe on the same utterances.
With --classifier: the classifier's log-probabilities plus w x the eGeMAPS probe's (probe fitted on actors
01-10, w to be chosen on 11-12, as the trainer chooses its classifier).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler


def load(root):
    rows = [json.loads(line) for line in open(Path(root) / "manifest.jsonl")]
    items = []
    for r in rows:
        wave, sr = sf.read(Path(root) / r["audio"], dtype="float32")
        items.append({"wave": wave if wave.ndim == 1 else wave.mean(1), "sr": sr, "label": r["emotion_id"],
                      "speaker": r["speaker"], "split": r.get("split")})
    return items


def mel_stats(extractor, wave):
    m = extractor.log_mel(wave)
    change = np.abs(np.diff(m, axis=1)).mean(1)
    return np.concatenate([m.mean(1), m.std(1), np.percentile(m, 90, 1) - np.percentile(m, 10, 1), change])


def features(items, cache: Path):
    if cache.is_file():
        z = np.load(cache)
        return z["mel"], z["egemaps"]
    import opensmile

    from talking_head.models.emotion_classifier import EmotionFeatureExtractor

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    extractor = EmotionFeatureExtractor()
    mel = np.stack([mel_stats(extractor, it["wave"]) for it in items])
    ege = np.stack([smile.process_signal(it["wave"], it["sr"]).values[0] for it in items])
    np.savez(cache, mel=mel, egemaps=ege)
    return mel, ege


def probe(x_train, y_train, c: float = 0.1):
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(scaler.transform(x_train), y_train)
    return lambda x: (clf.classes_, clf.predict_proba(scaler.transform(x)))


def scores(classes, proba, y, restrict=None):
    if restrict is not None:
        proba = proba * np.isin(classes, restrict)
    pred = classes[proba.argmax(1)]
    return f"{np.mean(pred == y):.3f} / {np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]):.3f}"


def per_group_standardised(x, groups, reference=None):
    """x standardised within each group, with the statistics of `reference` rows of the group if given."""
    out = x.copy()
    for g in np.unique(groups):
        rows = groups == g
        ref = rows if reference is None else rows & reference
        out[rows] = (x[rows] - x[ref].mean(0)) / (x[ref].std(0) + 1e-6)
    return out


def baseline_removed(x, speakers, train):
    """x minus the speaker's mean feature vector as predicted from each utterance alone (ridge; each training
    speaker's baseline predicted by a ridge fitted on the other training speakers)."""
    x = StandardScaler().fit(x[train]).transform(x)
    means = {s: x[speakers == s].mean(0) for s in np.unique(speakers)}
    target = np.stack([means[s] for s in speakers])
    predicted = np.zeros_like(x)
    for s in np.unique(speakers[train]):
        fit = train & (speakers != s)
        predicted[speakers == s] = Ridge(alpha=100.0).fit(x[fit], target[fit]).predict(x[speakers == s])
    test = ~train
    predicted[test] = Ridge(alpha=100.0).fit(x[train], target[train]).predict(x[test])
    r2 = 1 - ((predicted[test] - target[test]) ** 2).sum() / ((target[test] - target[test].mean(0)) ** 2).sum()
    return x - predicted, r2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ravdess")
    parser.add_argument("cremad")
    parser.add_argument("--classifier", default=None)
    parser.add_argument("--cache", default="out/probe_features")
    args = parser.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    rav, cre = load(args.ravdess), load(args.cremad)
    mel_r, ege_r = features(rav, Path(args.cache) / "ravdess.npz")
    mel_c, ege_c = features(cre, Path(args.cache) / "cremad.npz")
    y, y_c = np.array([it["label"] for it in rav]), np.array([it["label"] for it in cre])
    speakers = np.array([it["speaker"] for it in rav])
    train = ~np.isin(speakers, ["13", "14", "15", "16"])
    male = np.array([int(s) % 2 for s in speakers])  # RAVDESS: odd actors are male
    six = np.unique(y_c)
    sets = {"log-mel stats": (mel_r, mel_c), "eGeMAPS": (ege_r, ege_c),
            "both": (np.hstack([mel_r, ege_r]), np.hstack([mel_c, ege_c]))}
    print("features | C | plain RAVDESS 13-16 | plain CREMA-D | speaker-normalised | gender-normalised | "
          "baseline removed (R2)")
    for name, (xr, xc) in sets.items():
        for c in (0.01, 0.1, 1.0):
            f = probe(xr[train], y[train], c)
            spk = per_group_standardised(xr, speakers)
            gen = per_group_standardised(xr, male, reference=train)
            rem, r2 = baseline_removed(xr, speakers, train)
            print(f"{name} | {c} | {scores(*f(xr[~train]), y[~train])} | {scores(*f(xc), y_c, six)} | "
                  f"{scores(*probe(spk[train], y[train], c)(spk[~train]), y[~train])} | "
                  f"{scores(*probe(gen[train], y[train], c)(gen[~train]), y[~train])} | "
                  f"{scores(*probe(rem[train], y[train], c)(rem[~train]), y[~train])} ({r2:.2f})", flush=True)
    print("enrolment k | features | C | enrolled RAVDESS 13-16 | plain, same utterances")
    for k in (1, 2):
        for name, (xr, _) in sets.items():
            for c in (0.01, 0.1):
                print(f"{k} | {name} | {c} | " + " | ".join(enrolment(xr, y, speakers, train, k, c)), flush=True)
    if args.classifier:
        fusion(args.classifier, rav, cre, ege_r, ege_c, y, y_c, speakers, six)


def enrolment(x, y, speakers, train, k: int, c: float, seed: int = 0):
    """(enrolled, plain) scores on the test speakers' utterances that were not used for enrolment."""
    x = StandardScaler().fit(x[train]).transform(x)
    rng = np.random.default_rng(seed)
    enrol = np.zeros(len(y), bool)
    for s in np.unique(speakers):
        enrol[rng.choice(np.flatnonzero((speakers == s) & (y == 0)), k, replace=False)] = True
    shifted = x.copy()
    for s in np.unique(speakers):
        shifted[speakers == s] -= x[(speakers == s) & enrol].mean(0)
    fit, test = train & ~enrol, ~train & ~enrol
    return [scores(*probe(v[fit], y[fit], c)(v[test]), y[test]) for v in (shifted, x)]


def fusion(path, rav, cre, ege_r, ege_c, y, y_c, speakers, six):
    import torch

    from talking_head.models.emotion_classifier import (
        load_emotion_classifier, load_emotion_feature_extractor, predict_emotion,
    )

    model = load_emotion_classifier(path)
    extractor = load_emotion_feature_extractor(path, model)
    net_r = torch.log(predict_emotion(model, extractor, [it["wave"] for it in rav]).clamp_min(1e-8)).numpy()
    net_c = torch.log(predict_emotion(model, extractor, [it["wave"] for it in cre]).clamp_min(1e-8)).numpy()
    fit = np.isin(speakers, [f"{i:02d}" for i in range(1, 11)])
    val, test = np.isin(speakers, ["11", "12"]), np.isin(speakers, ["13", "14", "15", "16"])
    f = probe(ege_r[fit], y[fit], 0.1)

    def log_probe(x):
        classes, p = f(x)
        out = np.full((len(x), net_r.shape[1]), -18.0)
        out[:, classes] = np.log(p + 1e-8)
        return out

    pr, pc = log_probe(ege_r), log_probe(ege_c)
    every = np.arange(net_r.shape[1])
    print("fusion w | validation 11-12 | RAVDESS 13-16 | CREMA-D")
    for w in (0.0, 0.25, 0.5, 1.0, 2.0):
        print(f"{w} | {scores(every, np.exp(net_r[val] + w * pr[val]), y[val])} | "
              f"{scores(every, np.exp(net_r[test] + w * pr[test]), y[test])} | "
              f"{scores(every, np.exp(net_c + w * pc), y_c, six)}")


if __name__ == "__main__":
    main()
