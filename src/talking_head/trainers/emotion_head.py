"""Train the emotion classifier as a head on the frozen Whisper `audio_encoder` (DESIGN.md 8.3-8.4, issue 38).

    python train/train_emotion_head.py --encoder out/whisper/base_full \
        --train_data out/default/data/ravdess:train --output_dir out/emotion_head/run

What it does, in order:

1. **Caches the encoder's states once** (`StateCache`): every clip of each dataset given is encoded whole by the
   frozen encoder (the layers asked for, float16) together with each state's audio level, in one safetensors file
   per dataset under --cache_dir, named by the encoder's weights and the layers. Training then never runs the
   encoder again: an epoch costs milliseconds.
2. **Cross-validation over the training speakers** (--folds groups of speakers, each held out once, the folds
   made per corpus so each holds out some speakers of every corpus): a head is trained on the other speakers and
   its held-out speakers' logits are kept after every epoch. The number of epochs is the one with the lowest
   mean held-out loss over the folds (early stopping on validation speakers), and the **temperature** is fitted
   on the out-of-fold logits at that epoch (speakers the head never trained on, and never the test speakers
   whose scores are reported).
3. **The final head** is trained on all training speakers for that many epochs, gets the temperature and the
   drawing threshold (--draw_threshold), and is saved with `save_pretrained` (safetensors) in
   OUTPUT_DIR/emotion_classifier, with OUTPUT_DIR/summary.json (the cross-validation's figures).
4. Optionally (--report_data) **scores it** on other prepared sets from the cache (the issue's figures in seconds,
   without a pipeline: accuracy, balanced accuracy, per-class recall, the six-class cross-corpus accuracy, the
   share of calm clips drawn neutral or nearly so, the share of emotional clips drawn right with strength >= 0.3);
   `talking-head evaluate` gives the reported ones.

Augmentation (cheap, on the cached states): each epoch pools a random stretch of each clip (--crop_min: at least
this fraction of its states), so the head does not depend on the utterance's length or where it starts.
Class-balanced loss weights (every class weighs the same whatever its count).

A dataset is given as PREPARED[:SPLIT] (all splits without one); a clip is used when it has an emotion label.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.constants import EMOTIONS, NULL_EMOTION, NUM_EMOTIONS, SAMPLE_RATE
from talking_head.evaluation.calm_speech import parse_data_spec
from talking_head.models.emotion_head import (DRAWN_STRENGTH, SAMPLES_PER_STATE, WhisperEmotionHead,
                                              WhisperEmotionHeadConfig, draw_strength, pool_states)

NEUTRAL = EMOTIONS.index("neutral")


# ---------------------------------------------------------------------------------------------- data

@dataclass
class Clip:
    clip_id: str
    source: str  # the dataset's folder name
    split: str | None
    speaker: str
    label: int  # emotion id, NULL_EMOTION when unlabelled
    states: torch.Tensor  # (T, len(layers) * d_model) float16
    level: torch.Tensor  # (T,) float32 dB of each state's 20 ms of audio
    augmented: bool = False  # an augmented copy (trains; never validates)


def state_levels(wave: torch.Tensor, num_states: int) -> torch.Tensor:
    """(num_states,) dB level of each state's 20 ms of audio (as `active_frames` measures it)."""
    padded = F.pad(wave.float(), (SAMPLES_PER_STATE // 2, max(0, num_states * SAMPLES_PER_STATE - wave.numel())))
    frames = padded[: num_states * SAMPLES_PER_STATE].reshape(num_states, SAMPLES_PER_STATE)
    return 10 * torch.log10(frames.pow(2).mean(dim=1) + 1e-10)


def augment_wave(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another speaker, room and channel for the same words and emotion: speed and pitch together (0.9-1.1, 70 %),
    a random smooth equaliser (up to +-8 dB over 100 Hz-8 kHz), telephone band (300-3400 Hz, 30 %), a small room
    (an exponentially decaying noise response, 30 %), background noise at 10-30 dB SNR (white or pink, 50 %); the
    peak level kept."""
    x = np.asarray(wave, dtype=np.float64)
    peak = float(np.abs(x).max()) or 1.0
    if rng.random() < 0.7:
        x = np.interp(np.arange(0, len(x) - 1, rng.uniform(0.9, 1.1)), np.arange(len(x)), x)
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    knots = np.geomspace(100, 8000, 6)
    gain_db = np.interp(np.log(np.maximum(freqs, 50)), np.log(knots), rng.uniform(-8, 8, len(knots)))
    gain = 10 ** (gain_db / 20)
    if rng.random() < 0.3:
        gain *= 1 / (1 + (300 / np.maximum(freqs, 1)) ** 4) / (1 + (freqs / rng.uniform(3400, 4000)) ** 8)
    x = np.fft.irfft(spectrum * gain, n=len(x))
    if rng.random() < 0.3:
        rt60 = rng.uniform(0.15, 0.5)
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        response = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        response[0] = 1.0 / rng.uniform(0.2, 0.6)  # the direct sound over the reverberant tail
        x = np.fft.irfft(np.fft.rfft(x, len(x) + len(t)) * np.fft.rfft(response, len(x) + len(t)))[: len(x)]
    if rng.random() < 0.5:
        noise = rng.standard_normal(len(x))
        if rng.random() < 0.5:  # pink
            n = np.fft.rfft(noise)
            noise = np.fft.irfft(n / np.sqrt(np.maximum(np.fft.rfftfreq(len(x)), 1 / len(x))), n=len(x))
        power = np.mean(x ** 2) + 1e-12
        noise *= np.sqrt(power / (np.mean(noise ** 2) + 1e-12) / 10 ** (rng.uniform(10, 30) / 10))
        x = x + noise
    return (x * peak / (np.abs(x).max() + 1e-12)).astype(np.float32)


class StateCache:
    """The encoder's states of every clip of one prepared dataset (see the module docstring, step 1)."""

    @staticmethod
    def path_for(cache_dir, root, encoder, layers, augment: int | None = None) -> Path:
        from talking_head.data.encoder_states import encoder_fingerprint

        tag = "-".join(str(int(k)) for k in layers) + (f"-aug{augment}" if augment is not None else "")
        return Path(cache_dir) / f"{Path(root).resolve().name}-{encoder_fingerprint(encoder)}-layers-{tag}.safetensors"

    @classmethod
    def load(cls, cache_dir, root, encoder, layers, progress: bool = True, augment: int | None = None,
             split: str | None = None) -> list[Clip]:
        """Every clip of `root` with audio (of `split`; all splits when None), encoded once and then read from the
        cache file. `augment` k: the k-th augmented copy of each clip instead (`augment_wave`, seeded by k and the
        clip), cached on its own."""
        import os
        import tempfile

        from safetensors.torch import load_file, save_file

        from talking_head.data import layout

        path = cls.path_for(cache_dir, root, encoder, layers, augment)
        if augment is not None and split is not None:
            path = path.with_name(path.name.replace(".safetensors", f"-{split}.safetensors"))
        rows = [r for r in layout.read_manifest(Path(root))
                if r.get("audio") and (split is None or r.get("split") == split)]
        if not rows:
            raise ValueError(f"{root}: no prepared clips with audio" + (f" in split {split!r}" if split else ""))
        if not path.is_file():
            import soundfile as sf

            tensors, started = {}, time.perf_counter()
            for i, row in enumerate(rows):
                wave, rate = sf.read(str(Path(root) / row["audio"]), dtype="float32", always_2d=True)
                if rate != SAMPLE_RATE:
                    raise ValueError(f"{root}/{row['audio']}: {rate} Hz, expected {SAMPLE_RATE}")
                wave = wave.mean(axis=1)
                if augment is not None:
                    seed = [int(augment), *(ord(ch) for ch in row["clip_id"][-24:])]
                    wave = augment_wave(wave, np.random.default_rng(seed))
                wave = torch.from_numpy(wave)
                states = encoder.encode(wave[None], layers=list(layers))[0]
                tensors[f"{row['clip_id']}/states"] = states.to(torch.float16).contiguous()
                tensors[f"{row['clip_id']}/level"] = state_levels(wave, states.shape[0]).contiguous()
                if progress and (i + 1) % 100 == 0:
                    print(f"  encoded {i + 1}/{len(rows)} clips of {root} ({time.perf_counter() - started:.0f} s)",
                          file=sys.stderr)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            try:
                save_file(tensors, tmp, metadata={"layers": json.dumps(list(layers)), "root": str(root)})
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        tensors = load_file(str(path))
        name = Path(root).resolve().name
        clips = []
        for row in rows:
            key = row["clip_id"]
            if f"{key}/states" not in tensors:
                raise ValueError(f"{path} lacks clip {key!r}: the dataset changed since it was cached; delete it")
            label = row.get("emotion_id")
            clips.append(Clip(key if augment is None else f"{key}+aug{augment}", name, row.get("split"),
                              str(row.get("speaker")), NULL_EMOTION if label is None else int(label),
                              tensors[f"{key}/states"], tensors[f"{key}/level"], augmented=augment is not None))
        return clips


def load_data(specs, encoder, layers, cache_dir, labelled_only: bool = True, augment_copies: int = 0) -> list[Clip]:
    """The clips of each PREPARED[:SPLIT] in `specs`, and `augment_copies` augmented copies of each."""
    clips = []
    for spec in specs:
        root, split = parse_data_spec(spec)
        got = [c for c in StateCache.load(cache_dir, root, encoder, layers)
               if (split is None or c.split == split) and (not labelled_only or c.label < NUM_EMOTIONS)]
        if not got:
            raise ValueError(f"no {'labelled ' if labelled_only else ''}clips in {spec}")
        for k in range(augment_copies):
            got += [c for c in StateCache.load(cache_dir, root, encoder, layers, augment=k, split=split)
                    if not labelled_only or c.label < NUM_EMOTIONS]
        clips += got
    return clips


# ---------------------------------------------------------------------------------------------- pooling
def layer_states(clip: Clip, layers: list[int], layer: int, d_model: int, final_norm=None) -> torch.Tensor:
    """(T, d_model) float32 states of one cached layer (`final_norm`: a LayerNorm applied to them, e.g. the
    encoder's final layer norm, to emulate an encoder cut at that layer)."""
    k = list(layers).index(layer)
    states = clip.states[:, k * d_model: (k + 1) * d_model].float()
    if final_norm is not None:
        with torch.no_grad():
            states = final_norm(states)
    return states


def pooled_features(clips, layers, layer, d_model, pooling, floor_db, rng=None, crop_min: float = 1.0,
                    final_norm=None) -> torch.Tensor:
    """(N, feature_size) pooled vectors, as `WhisperEmotionHead` pools (a random stretch of each clip with `rng`)."""
    out = []
    for clip in clips:
        states, level = layer_states(clip, layers, layer, d_model, final_norm), clip.level
        n = states.shape[0]
        if rng is not None and crop_min < 1.0 and n > 10:
            length = max(5, int(round(n * rng.uniform(crop_min, 1.0))))
            start = int(rng.integers(0, n - length + 1))
            states, level = states[start: start + length], level[start: start + length]
        mask = level >= level.max() - floor_db if floor_db > 0 else torch.ones_like(level, dtype=torch.bool)
        out.append(pool_states(states[None], mask[None], pooling)[0])
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    layer: int = 4
    pooling: str = "mean_std"
    hidden_size: int = 0
    dropout: float = 0.2
    epochs: int = 150
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    crop_min: float = 0.6
    floor_db: float = 40.0
    label_smoothing: float = 0.0
    seed: int = 0


def class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels, minlength=NUM_EMOTIONS).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def train_head(clips, layers, d_model, s: TrainSettings, epochs: int | None = None, validation=None,
               final_norm=None, encoder_source=None):
    """A head trained on `clips`; with `validation` (clips), also its calibrated-free logits on them after every
    epoch: (head, [ (epoch, logits (V, 8)) ... ])."""
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    config = WhisperEmotionHeadConfig(encoder_layer=s.layer, d_model=d_model, pooling=s.pooling,
                                      hidden_size=s.hidden_size, dropout=s.dropout, active_floor_db=s.floor_db,
                                      encoder_source=encoder_source)
    head = WhisperEmotionHead(config)
    labels = torch.tensor([c.label for c in clips])
    base = pooled_features(clips, layers, s.layer, d_model, s.pooling, s.floor_db, final_norm=final_norm)
    head.feature_mean.copy_(base.mean(0))
    head.feature_std.copy_(base.std(0).clamp_min(1e-4))
    val_x = (pooled_features(validation, layers, s.layer, d_model, s.pooling, s.floor_db, final_norm=final_norm)
             if validation else None)
    weights = class_weights(labels.numpy())
    optimizer = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    curve = []
    for epoch in range(1, (epochs or s.epochs) + 1):
        head.train()
        x = pooled_features(clips, layers, s.layer, d_model, s.pooling, s.floor_db, rng, s.crop_min, final_norm)
        order = torch.from_numpy(rng.permutation(len(clips)))
        for start in range(0, len(clips), s.batch_size):
            idx = order[start: start + s.batch_size]
            logits = head.logits_from_pooled(x[idx], calibrated=False)
            loss = F.cross_entropy(logits, labels[idx], weight=weights, label_smoothing=s.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if val_x is not None:
            head.eval()
            with torch.no_grad():
                curve.append((epoch, head.logits_from_pooled(val_x, calibrated=False)))
    return head.eval(), curve


def speaker_folds(clips, folds: int, seed: int = 0) -> list[set]:
    """`folds` sets of (source, speaker): each corpus's speakers dealt round-robin in a seeded order."""
    rng = np.random.default_rng(seed)
    out = [set() for _ in range(folds)]
    for source in sorted({c.source for c in clips}):
        speakers = sorted({c.speaker for c in clips if c.source == source})
        for i, k in enumerate(rng.permutation(len(speakers))):
            out[i % folds].add((source, speakers[k]))
    return out


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (a 1-D search on log T)."""
    grid = torch.linspace(math.log(0.2), math.log(20.0), 400)
    nll = torch.stack([F.cross_entropy(logits / math.exp(float(g)), labels) for g in grid])
    return float(math.exp(float(grid[int(nll.argmin())])))


# ---------------------------------------------------------------------------------------------- scores
def scores(probs: np.ndarray, labels: np.ndarray, threshold: float, present_only: bool = False) -> dict:
    """The issue's figures for labelled clips: accuracy, balanced accuracy, per-class recall (8-way argmax, or the
    classes present with `present_only`), and, over the 8-way rendering, the calm clips' share drawn neutral or
    nearly so (strength < DRAWN_STRENGTH) and the emotional clips' share drawn right with strength >= it."""
    from talking_head.evaluation.emotion import emotion_scores

    present = np.bincount(labels, minlength=NUM_EMOTIONS) > 0
    allowed = present if present_only else np.ones(NUM_EMOTIONS, bool)
    preds = np.where(allowed[None], probs, -1.0).argmax(axis=1)
    out = emotion_scores(labels, preds)
    index, strength = draw_strength(probs, threshold)
    calm = labels == NEUTRAL
    out["calm_neutral_share"] = float((strength[calm] < DRAWN_STRENGTH).mean()) if calm.any() else None
    emo = ~calm
    out["emotional_right_drawn_share"] = (float(((index == labels) & (strength >= DRAWN_STRENGTH))[emo].mean())
                                          if emo.any() else None)
    out["mean_p_max"] = float(probs.max(axis=1).mean())
    return out


def calm_share(probs: np.ndarray, threshold: float) -> float:
    _, strength = draw_strength(probs, threshold)
    return float((strength < DRAWN_STRENGTH).mean())


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", required=True, help="the frozen audio encoder (WhisperSpeechEncoder folder)")
    p.add_argument("--train_data", action="append", required=True, metavar="PREPARED[:SPLIT]",
                   help="labelled speech to train on (repeat for several corpora), e.g. out/default/data/ravdess:train")
    p.add_argument("--output_dir", required=True, help="where emotion_classifier/ and summary.json are written")
    p.add_argument("--cache_dir", default="out/emotion_head/cache", help="the encoder-state caches (default %(default)s)")
    p.add_argument("--layer", type=int, default=4, help="the encoder layer the head reads (default %(default)s)")
    p.add_argument("--cache_layers", default=None,
                   help="comma-separated layers to cache (default: --layer only; several let one cache serve "
                        "attempts on other layers)")
    p.add_argument("--final_norm", action="store_true",
                   help="apply the encoder's final layer norm to the layer's states (what an encoder cut at that "
                        "layer by convert_whisper.py --keep_layers gives)")
    p.add_argument("--pooling", choices=["mean_std", "mean"], default="mean_std")
    p.add_argument("--hidden_size", type=int, default=0, help="0: a linear head (default); else one hidden layer")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=150, help="most epochs the cross-validation tries (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-2)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--crop_min", type=float, default=0.6,
                   help="each epoch pools a random stretch of at least this fraction of each clip (1 = whole)")
    p.add_argument("--floor_db", type=float, default=40.0,
                   help="states more than this below the clip's loudest are not pooled (0 = all)")
    p.add_argument("--label_smoothing", type=float, default=0.0)
    p.add_argument("--augment_copies", type=int, default=0,
                   help="augmented copies of each training clip (another pitch, equaliser, band, room, noise: "
                        "`augment_wave`), encoded once and cached; they train, they never validate (default 0)")
    p.add_argument("--folds", type=int, default=4, help="speaker folds of the cross-validation (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw_threshold", type=float, default=0.5,
                   help="t of the drawing rule: strength = clip((p_max - t) / (1 - t), 0, 1) (default %(default)s)")
    p.add_argument("--report_data", action="append", default=[], metavar="PREPARED[:SPLIT]",
                   help="score the final head on these sets from the cache (repeatable)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from talking_head.models.whisper_encoder import WhisperSpeechEncoder

    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    encoder = WhisperSpeechEncoder.from_pretrained(args.encoder).float()
    layers = [int(k) for k in args.cache_layers.split(",")] if args.cache_layers else [args.layer]
    if args.layer not in layers:
        raise SystemExit(f"error: --layer {args.layer} is not among --cache_layers {layers}")
    d_model = int(encoder.config.d_model)
    final_norm = encoder.layer_norm.float().eval() if args.final_norm else None
    source = dict(getattr(encoder.config, "source", None) or {})
    source.update(final_norm=bool(args.final_norm))
    settings = TrainSettings(layer=args.layer, pooling=args.pooling, hidden_size=args.hidden_size,
                             dropout=args.dropout, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                             batch_size=args.batch_size, crop_min=args.crop_min, floor_db=args.floor_db,
                             label_smoothing=args.label_smoothing, seed=args.seed)
    started = time.perf_counter()
    clips = load_data(args.train_data, encoder, layers, args.cache_dir, augment_copies=args.augment_copies)
    print(f"{len(clips)} training clips from {sorted({c.source for c in clips})}, "
          f"{len({(c.source, c.speaker) for c in clips})} speakers", file=sys.stderr)

    # 2. Cross-validation over speakers: the epoch count and the temperature.
    folds = speaker_folds([c for c in clips if not c.augmented], args.folds, args.seed)
    fold_curves, fold_labels, fold_ids = [], [], []
    for k, held in enumerate(folds):
        train = [c for c in clips if (c.source, c.speaker) not in held]
        val = [c for c in clips if (c.source, c.speaker) in held and not c.augmented]
        _, curve = train_head(train, layers, d_model, settings, validation=val, final_norm=final_norm)
        fold_curves.append(torch.stack([logits for _, logits in curve]))  # (epochs, V, 8)
        fold_labels.append(torch.tensor([c.label for c in val]))
        fold_ids += [c.clip_id for c in val]
    labels = torch.cat(fold_labels)
    oof = torch.cat(fold_curves, dim=1)  # (epochs, N, 8)
    weights = class_weights(labels.numpy())
    loss = torch.stack([F.cross_entropy(oof[e], labels, weight=weights) for e in range(oof.shape[0])])
    best_epoch = int(loss.argmin()) + 1
    temperature = fit_temperature(oof[best_epoch - 1], labels)
    oof_probs = torch.softmax(oof[best_epoch - 1] / temperature, dim=-1).numpy()
    cv = scores(oof_probs, labels.numpy(), args.draw_threshold)
    print(f"cross-validation ({args.folds} speaker folds): best epoch {best_epoch}, temperature {temperature:.2f}, "
          f"accuracy {cv['accuracy']:.3f}, balanced {cv['balanced_accuracy']:.3f}", file=sys.stderr)

    # 3. The final head on every training speaker.
    head, _ = train_head(clips, layers, d_model, settings, epochs=best_epoch, final_norm=final_norm,
                         encoder_source=source)
    head.config.calibration_temperature = temperature
    head.config.draw_threshold = float(args.draw_threshold)
    out = Path(args.output_dir)
    from talking_head.utils import make_public, write_dir_atomic

    def save(folder):
        head.save_pretrained(folder, safe_serialization=True)
        for file in Path(folder).iterdir():
            make_public(file)

    write_dir_atomic(out / "emotion_classifier", save)
    summary = {"args": vars(args), "train_clips": len(clips), "best_epoch": best_epoch, "temperature": temperature,
               "cv_loss_curve": [round(float(v), 4) for v in loss], "cross_validation": _short(cv),
               "oof": {"clip_ids": fold_ids, "probs": np.round(oof_probs, 4).tolist(),
                       "labels": labels.tolist()},
               "seconds": None, "report": {}}

    # 4. Figures on other sets, from the cache.
    for spec in args.report_data:
        root, split = parse_data_spec(spec)
        items = [c for c in StateCache.load(args.cache_dir, root, encoder, layers) if split is None or c.split == split]
        with torch.no_grad():
            x = pooled_features(items, layers, args.layer, d_model, args.pooling, args.floor_db, final_norm=final_norm)
            probs = torch.softmax(head.logits_from_pooled(x), dim=-1).numpy()
        labelled = np.array([c.label < NUM_EMOTIONS for c in items])
        entry = {"clips": len(items)}
        if labelled.any():
            lab = np.array([c.label for c in items])[labelled]
            entry["scores"] = _short(scores(probs[labelled], lab, args.draw_threshold))
            entry["scores_present_classes"] = _short(scores(probs[labelled], lab, args.draw_threshold, True))
        if (~labelled).any():
            entry["calm_neutral_share"] = calm_share(probs[~labelled], args.draw_threshold)
            entry["heard"] = {EMOTIONS[k]: int(v) for k, v in
                              enumerate(np.bincount(probs[~labelled].argmax(1), minlength=NUM_EMOTIONS)) if v}
            entry["p_max"] = np.round(probs[~labelled].max(1), 3).tolist()
        entry["probs"] = np.round(probs, 4).tolist()
        entry["clip_ids"] = [c.clip_id for c in items]
        summary["report"][spec] = entry
        print(f"{spec}: " + json.dumps({k: v for k, v in entry.items() if k not in ("probs", "clip_ids", "p_max")}),
              file=sys.stderr)
    summary["seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {out / 'emotion_classifier'} ({summary['seconds']:.0f} s)", file=sys.stderr)
    return 0


def _short(s: dict) -> dict:
    keep = ("n", "accuracy", "balanced_accuracy", "per_class_recall", "calm_neutral_share",
            "emotional_right_drawn_share", "mean_p_max", "confusion")
    return {k: s[k] for k in keep if k in s}


if __name__ == "__main__":
    sys.exit(main())
