"""Which Whisper layers carry the lips? A ridge regression from encoder states (+-3 video frames) to the mouth
opening, trained on the training speakers, scored (Pearson r per clip, averaged) on voices it never heard.

    python experiments/whisper_lip_motion/probe_layers.py --encoder out/whisper/base_full --encoder out/whisper/tiny_full \
        --train out/default/data/obama out/default/data/grid_full out/default/data/cremad \
        --test out/default/data/grid_speakers out/default/data/cremad out/default/data/obama

Test sets use their `test` split only (for grid_speakers everything is test). Prints one row per encoder and layer.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from talking_head.evaluation.lip_motion import mouth_opening, pearson_r
from talking_head.models.whisper_encoder import WhisperSpeechEncoder

CONTEXT = 3  # video frames on each side


def clips(root, split, limit):
    rows = [json.loads(line) for line in open(Path(root) / "manifest.jsonl")]
    rows = [r for r in rows if r.get("kind") == "video" and r.get("split") == split]
    if limit and len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    return rows


def features(encoder, root, row, layers):
    wave, sr = sf.read(str(Path(root) / row["audio"]), dtype="float32")
    if wave.ndim > 1:
        wave = wave.mean(1)
    states = encoder.encode(torch.from_numpy(wave)[None], layers=layers)[0].numpy()  # (T, L*D)
    lms = np.load(Path(root) / row["landmarks"])
    fps = float(row["fps"])
    n = len(lms)
    centre = np.round((np.arange(n) + 0.5) / fps * 50).astype(int)
    idx = np.clip(centre[:, None] + 2 * np.arange(-CONTEXT, CONTEXT + 1)[None], 0, len(states) - 1)
    x = states[idx]  # (F, 7, L, D) flattened per layer later
    return x, mouth_opening(lms)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", action="append", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--train_limit", type=int, default=150, help="clips per training set")
    p.add_argument("--alpha", type=float, default=100.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for path in args.encoder:
        enc = WhisperSpeechEncoder.from_pretrained(path).float()
        layers = list(range(0, enc.config.encoder_layers + 1))
        d = enc.config.d_model

        def collect(roots, split, limit):
            xs, ys, groups = [], [], []
            for root in roots:
                sp = "test" if split == "test" and "grid_speakers" in root else split
                for k, row in enumerate(clips(root, sp, limit)):
                    x, y = features(enc, root, row, layers)
                    ok = np.isfinite(y)
                    xs.append(x[ok])
                    ys.append(y[ok])
                    groups += [(Path(root).name, k)] * int(ok.sum())
            return np.concatenate(xs), np.concatenate(ys), groups

        xtr, ytr, _ = collect(args.train, "train", args.train_limit)
        tests = {Path(r).name: collect([r], "test", 0) for r in args.test}
        for li, layer in enumerate(layers):
            def take(x):
                return x[:, :, li * d:(li + 1) * d].reshape(len(x), -1)
            a = take(xtr)
            mu, sd = a.mean(0), a.std(0) + 1e-6
            a = (a - mu) / sd
            w = np.linalg.solve(a.T @ a + args.alpha * np.eye(a.shape[1]), a.T @ (ytr - ytr.mean()))
            row = []
            for name, (x, y, g) in tests.items():
                pred = ((take(x) - mu) / sd) @ w
                g = np.array([k for _, k in g])
                rs = [pearson_r(pred[g == k], y[g == k]) for k in np.unique(g)]
                rs = [r for r in rs if r is not None]
                row.append(f"{name} {np.mean(rs):.3f}")
            print(f"{Path(path).name} layer {layer}: " + "  ".join(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
