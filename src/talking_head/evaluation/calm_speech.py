"""The calm-speech check of `talking-head evaluate` (issue 38, DESIGN.md 8.4): does the pipeline draw a neutral
face when nobody acts an emotion, and the right emotion when somebody does?

A detected emotion is drawn at a strength that follows the classifier's calibrated confidence
(`talking_head.models.emotion_head.draw_strength`). For every clip of the prepared sets given
(`--calm-speech DIR[:SPLIT],...`, or, without that flag, the evaluated data when it has no emotion labels):

* **calm clips** (no emotion label, or labelled neutral: the GRID sentences and speakers, the dev identity's
  addresses, the CNN anchor, `oneshot_eval`, CREMA-D's NEU clips): the share rendered neutral or nearly so, i.e.
  drawn with strength < 0.3 (`DRAWN_STRENGTH`): `calm_speech.neutral_share` in metrics.json, with the clips
  counted, overall and per set;
* **emotional clips** (labelled, not neutral: e.g. CREMA-D's test actors): the share whose own emotion is drawn
  with strength >= 0.3: `calm_speech.emotional.right_drawn_share`.

Each clip is read whole, as `generate` reads it (the classifier bounds its own work on long audio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS, NULL_EMOTION, NUM_EMOTIONS, SAMPLE_RATE

__all__ = ["calm_speech_check", "summarise", "parse_data_spec", "report_lines"]

SPLITS = ("train", "test", "val", "validation")
NEUTRAL = EMOTIONS.index("neutral")


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """"DIR:test" -> ("DIR", "test"); "DIR" -> ("DIR", None = every split)."""
    root, _, split = str(spec).rpartition(":")
    if root and split in SPLITS:
        return root, split
    return str(spec), None


def _clips(spec: str):
    """(set name, clip id, emotion id or NULL_EMOTION, 16 kHz waveform) of each clip with audio in DIR[:SPLIT]."""
    import soundfile as sf

    from talking_head.data import layout

    root, split = parse_data_spec(spec)
    rows = [r for r in layout.read_manifest(Path(root))
            if r.get("audio") and (split is None or r.get("split") == split)]
    if not rows:
        raise ValueError(f"{spec}: no prepared clips with audio" + (f" in split {split!r}" if split else ""))
    name = Path(root).name + (f":{split}" if split else "")
    for row in rows:
        wave, rate = sf.read(str(Path(root) / row["audio"]), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{root}/{row['audio']} is {rate} Hz; prepared audio is {SAMPLE_RATE} Hz")
        label = row.get("emotion_id")
        yield name, row["clip_id"], NULL_EMOTION if label is None else int(label), wave.mean(axis=1)


def calm_speech_check(classify, threshold: float, specs, log=None) -> dict:
    """The check on the prepared sets `specs` ("DIR" or "DIR:SPLIT" each). `classify(waves) -> (B, 8)`
    probabilities (the pipeline's `classify_emotion`), `threshold` the drawing threshold t."""
    items = []
    for spec in specs:
        count = 0
        for name, clip_id, label, wave in _clips(spec):
            items.append({"data": name, "clip_id": clip_id, "label": label,
                          "probs": np.asarray(classify([wave]), dtype=np.float64)[0]})
            count += 1
        if log is not None:
            log(f"calm speech: {count} clips of {spec} classified")
    return summarise(items, threshold)


def summarise(items: list[dict], threshold: float) -> dict:
    """metrics.json's `calm_speech` from classified clips: each a dict with data (set name), clip_id, label
    (emotion id; NULL_EMOTION when unlabelled) and probs (8,)."""
    from talking_head.models.emotion_head import DRAWN_STRENGTH, draw_strength

    if not items:
        raise ValueError("the calm-speech check has no clips")
    probs = np.stack([it["probs"] for it in items])
    index, strength = draw_strength(probs, threshold)
    labels = np.array([it["label"] for it in items])
    calm = (labels == NULL_EMOTION) | (labels == NEUTRAL)
    neutral = strength < DRAWN_STRENGTH
    right = (index == labels) & ~neutral
    names = [it["data"] for it in items]

    def per_set(mask, hit):
        out = {}
        for name in dict.fromkeys(n for n, m in zip(names, mask) if m):
            sel = mask & (np.array(names) == name)
            out[name] = {"clips": int(sel.sum()), "share": float(hit[sel].mean()),
                         "heard": _counts(index[sel]), "drawn": _counts(index[sel & ~neutral])}
        return out

    result = {"threshold": float(threshold), "drawn_strength": DRAWN_STRENGTH,
              "neutral_share": float(neutral[calm].mean()) if calm.any() else None, "clips": int(calm.sum()),
              "sets": per_set(calm, neutral), "emotional": None}
    if calm.any():
        shares = [s["share"] for s in result["sets"].values()]
        result["neutral_share_mean_over_sets"] = float(np.mean(shares))
    emotional = labels < NUM_EMOTIONS
    emotional &= ~calm
    if emotional.any():
        result["emotional"] = {"right_drawn_share": float(right[emotional].mean()), "clips": int(emotional.sum()),
                               "right_heard_share": float((index == labels)[emotional].mean()),
                               "sets": per_set(emotional, right)}
    result["items"] = [{"data": it["data"], "clip_id": it["clip_id"],
                        "label": EMOTIONS[it["label"]] if it["label"] < NUM_EMOTIONS else None,
                        "heard": EMOTIONS[int(k)], "p": round(float(p.max()), 4),
                        "drawn": EMOTIONS[int(k)] if s >= DRAWN_STRENGTH else "neutral", "strength": round(float(s), 4)}
                       for it, k, p, s in zip(items, index, probs, strength)]
    return result


def _counts(indices) -> dict:
    return {EMOTIONS[k]: int(v) for k, v in enumerate(np.bincount(indices, minlength=NUM_EMOTIONS)) if v}


def report_lines(c: dict) -> list[str]:
    """report.md's section."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f} %"

    md = ["## Calm speech: is a neutral face drawn when nobody acts an emotion?", "",
          f"A detected emotion is drawn with strength clip((p - t) / (1 - t), 0, 1) for the classifier's calibrated "
          f"probability p, t = {c['threshold']:.2f}, and not at all when it hears neutral. A clip counts as rendered "
          f"neutral or nearly so when its strength is below {c['drawn_strength']:g}.", ""]
    if c.get("clips"):
        md += [f"**Calm clips rendered neutral or nearly so: {pct(c['neutral_share'])}** of {c['clips']} "
               f"(mean over the sets: {pct(c.get('neutral_share_mean_over_sets'))}).", "",
               "| set | clips | neutral or nearly | heard | drawn (strength >= 0.3) |", "|---|---|---|---|---|"]
        md += [f"| {name} | {s['clips']} | {pct(s['share'])} | {_fmt_counts(s['heard'])} | "
               f"{_fmt_counts(s['drawn']) or '—'} |" for name, s in c["sets"].items()]
        md += [""]
    e = c.get("emotional")
    if e:
        md += [f"**Emotional clips drawn with their own emotion (strength >= {c['drawn_strength']:g}): "
               f"{pct(e['right_drawn_share'])}** of {e['clips']} (heard right, any strength: "
               f"{pct(e['right_heard_share'])}).", "",
               "| set | clips | right and drawn | heard | drawn |", "|---|---|---|---|---|"]
        md += [f"| {name} | {s['clips']} | {pct(s['share'])} | {_fmt_counts(s['heard'])} | "
               f"{_fmt_counts(s['drawn']) or '—'} |" for name, s in e["sets"].items()]
        md += [""]
    return md


def _fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
