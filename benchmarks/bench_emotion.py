"""What the emotion classifier costs in a generation (issue 16: <= 0.3 s for 10 s of speech on the CPU).

    python benchmarks/bench_emotion.py                           # the bundled pipeline's classifier
    python benchmarks/bench_emotion.py --classifier out/emotion/run/emotion_classifier --seconds 0.1,10,600

The speech is the bundled demo speech repeated to each length. Each length is timed --repeats times after one
warm-up call (the median is printed) with `predict_emotion` exactly as the pipeline calls it, on one thread
unless --threads says otherwise; the number of windows scored shows that the work is bounded whatever the
length. Prints one line per length and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from _memory import peak_memory  # benchmarks/_memory.py, beside this script

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier", default=None,
                   help="a classifier folder (model + preprocessor_config.json); default: assets/pipeline's")
    p.add_argument("--seconds", default="0.1,3,10,60,600", help="comma-separated audio lengths")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import numpy as np
    import torch

    from talking_head.audio import load_audio
    from talking_head.models.emotion_classifier import (load_emotion_classifier, load_emotion_feature_extractor,
                                                        predict_emotion)

    torch.set_num_threads(args.threads)
    folder = Path(args.classifier or ASSETS / "pipeline" / "emotion_classifier")
    if not folder.is_dir():
        raise SystemExit(f"no classifier folder at {folder}")
    model = load_emotion_classifier(folder).eval()
    extractor = load_emotion_feature_extractor(folder, model)
    speech = load_audio(str(ASSETS / "demo_speech.wav"))
    print(f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) from "
          f"{folder}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")

    calls = []
    forward = model.forward

    def counting(*a, **k):
        calls.append(next(iter(k.values())).shape[0] if k else a[0].shape[0])
        return forward(*a, **k)

    model.forward = counting
    for seconds in [float(s) for s in args.seconds.split(",")]:
        n = max(1, int(round(seconds * 16000)))
        wave = np.resize(speech, n).astype(np.float32)
        predict_emotion(model, extractor, [wave])  # warm-up
        times = []
        for _ in range(args.repeats):
            calls.clear()
            start = time.perf_counter()
            probs = predict_emotion(model, extractor, [wave])
            times.append(time.perf_counter() - start)
        top = int(probs[0].argmax())
        print(f"{seconds:8.1f} s of speech: {statistics.median(times):.3f} s (median of {args.repeats}), "
              f"{sum(calls)} windows scored, predicted {model.config.id2label[top]} ({float(probs[0, top]):.2f})")
    memory = peak_memory(cuda=False)
    print("peak memory: " + ", ".join(f"{k} {v}" for k, v in memory.items()))


if __name__ == "__main__":
    main()
