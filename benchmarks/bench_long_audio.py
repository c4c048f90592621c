"""Peak memory and time of generating long audio, streamed to an MP4.

Renders 10 s, 60 s and 600 s of speech (the bundled clip repeated) with a fixed
random pipeline of the tiny preset, exactly as `talking-head generate` does:
frames go to the `VideoWriter` as each clip finishes (`output_type=None`), so
nothing proportional to the video's length is kept in memory. Each length runs
in its own process; the peak is that process's max RSS.

    python benchmarks/bench_long_audio.py                     # 10, 60, 600 s
    python benchmarks/bench_long_audio.py --seconds 10,60 --steps 2
    python benchmarks/bench_long_audio.py --video ../shared/data/talking/obama/address_clip2.mp4 \
        --pipeline assets/pipeline                            # dubbing: the video is the identity (ping-pong)

With `--video` the identity is that video (dubbing, DESIGN 7.4): its frames are decoded, tracked with dlib
and kept on disk, played forward and backward when the speech is longer; frames are streamed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(seconds: float, steps: int, size: int, video: str | None = None, pipeline: str | None = None) -> dict:
    import numpy as np
    import torch

    from talking_head.audio import load_audio
    from talking_head.presets import build_pipeline
    from talking_head.schedulers import scheduler_from_name
    from talking_head.video import VideoWriter

    # OMP_NUM_THREADS, when set, caps the threads (e.g. 1 on a machine shared with training jobs).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1)
    import soundfile as sf

    speech = load_audio(REPO / "assets" / "speech_demo.wav")
    reps = int(np.ceil(seconds * 16000 / len(speech)))
    work = tempfile.TemporaryDirectory()
    wav = Path(work.name) / "speech.wav"
    sf.write(wav, np.tile(speech, reps)[: int(seconds * 16000)], 16000)
    del speech
    # As `talking-head generate` does: the file is decoded once, the pipeline and the MP4 writer share it.
    audio = load_audio(wav)
    if pipeline:
        from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

        pipe = TalkingHeadPipeline.from_pretrained(pipeline)
    else:
        pipe = build_pipeline("tiny", sample_size=size, seed=0)
    pipe.scheduler = scheduler_from_name("dpm", pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    # A synthetic face layout: this measures generation and streaming, not face detection.
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.linspace(0.3, 0.7, 17), np.linspace(0.35, 0.75, 4)), -1).reshape(-1, 2)[:68]
    identity = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "long.mp4"
        start = time.perf_counter()
        with VideoWriter(out_path, fps=25.0, audio=audio) as writer:
            face = dict(identity_landmarks=grid * size) if video is None else {}
            result = pipe(audio, video or identity, sample_rate=16000, emotion="neutral", num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(0), output_type=None,
                          frames_callback=lambda frames: writer.write(frames[0]),
                          frames_callback_dtype="uint8", **face)
        elapsed = time.perf_counter() - start
        mp4_mb = out_path.stat().st_size / 2**20
    work.cleanup()
    return {
        "seconds": seconds, "frames": int(result.landmarks.shape[1]), "wall_s": round(elapsed, 1),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_setup_MB": round(rss_before / 1024, 1), "mp4_MB": round(mp4_mb, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default="10,60,600")
    parser.add_argument("--steps", type=int, default=1, help="DPM-Solver steps per clip (memory does not depend on it)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--video", default=None, help="dub this video instead of animating a synthetic photo")
    parser.add_argument("--pipeline", default=None, help="a pipeline folder (default: a random tiny one)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count()
    what = args.pipeline or f"tiny preset {args.size}²"
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {threads} thread(s), load {os.getloadavg()[0]:.1f}; "
          f"{what}, DPM-Solver {args.steps} step(s)" + (f"; dubbing {args.video}" if args.video else ""))
    print(f"{'audio s':>8} {'frames':>7} {'wall s':>8} {'s/gen s':>8} {'peak RSS MB':>12} {'x of first':>10} {'MP4 MB':>7}")
    first = None
    for seconds in [float(s) for s in args.seconds.split(",")]:
        cfg = json.dumps({"seconds": seconds, "steps": args.steps, "size": args.size, "video": args.video,
                          "pipeline": args.pipeline})
        proc = subprocess.run([sys.executable, __file__, "--one", cfg], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{seconds:>8g} FAILED: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        first = first or r["peak_rss_MB"]
        print(f"{seconds:>8g} {r['frames']:>7} {r['wall_s']:>8.1f} {r['wall_s'] / seconds:>8.2f} {r['peak_rss_MB']:>12.0f} "
              f"{r['peak_rss_MB'] / first:>10.2f} {r['mp4_MB']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
