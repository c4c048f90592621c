"""Cost of the audio stage (the Whisper `audio_encoder` and the landmark model, chunk by chunk) against the length
of the speech: seconds per second of speech and the process's peak memory, each length in a fresh process.

    .venv/bin/python benchmarks/bench_audio_encoder.py [--pipeline assets/pipeline] [--seconds 10,600] [--threads 1]
    .venv/bin/python benchmarks/bench_audio_encoder.py --encoder out/whisper/tiny_full   # an encoder alone

Prints one line per length: encoder s/s, landmark stage s/s (encoder included), peak RSS in MB, and the ratio of
each length's peak to the shortest's (issue 36's goal: <= 1.2 at 600 s against 10 s).
"""

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from talking_head.audio import load_audio
speech = load_audio(args["speech"])
n = int(args["seconds"] * 16000)
wave = torch.from_numpy(np.tile(speech, n // len(speech) + 1)[:n].astype(np.float32))[None]
out = {}
if args["encoder"]:
    from talking_head.models.whisper_encoder import WhisperSpeechEncoder
    enc = WhisperSpeechEncoder.from_pretrained(args["encoder"])
    enc.encode(wave[:, :16000])
    t = time.perf_counter(); enc.encode(wave); out["encoder_s"] = time.perf_counter() - t
else:
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
    pipe = TalkingHeadPipeline.from_pretrained(args["pipeline"])
    ident = torch.full((1, 68, 2), 0.5) + torch.randn(1, 68, 2) * 0.1
    frames = int(args["seconds"] * 25)
    seconds = {"encode": 0.0}
    if pipe.audio_encoder is not None:
        encode = pipe.audio_encoder.encode
        def timed(*a, **k):
            t = time.perf_counter(); r = encode(*a, **k); seconds["encode"] += time.perf_counter() - t; return r
        pipe.audio_encoder.encode = timed
    t = time.perf_counter()
    lm = pipe.predict_landmarks(wave, ident, frames, 25.0, torch.tensor([8]))
    out["stage_s"] = time.perf_counter() - t
    out["encoder_s"] = seconds["encode"]
    out["finite"] = bool(torch.isfinite(lm).all())
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="assets/pipeline")
    p.add_argument("--encoder", default=None, help="time a saved encoder alone instead of a pipeline's audio stage")
    p.add_argument("--seconds", default="10,600")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speech", default="assets/demo_speech.wav")
    args = p.parse_args(argv)
    rows = []
    for seconds in [float(s) for s in args.seconds.split(",")]:
        spec = {"seconds": seconds, "threads": args.threads, "pipeline": args.pipeline, "encoder": args.encoder,
                "speech": args.speech}
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-2000:])
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["seconds"], row["wall"] = seconds, time.perf_counter() - start
        rows.append(row)
        base = rows[0]["peak_mb"]
        stage = f", landmark stage {row['stage_s'] / seconds:.4f} s/s" if "stage_s" in row else ""
        print(f"{seconds:6.0f} s of speech: encoder {row['encoder_s'] / seconds:.4f} s/s{stage}, peak "
              f"{row['peak_mb']:.0f} MB ({row['peak_mb'] / base:.2f} x the {rows[0]['seconds']:.0f} s run)", flush=True)


if __name__ == "__main__":
    main()
