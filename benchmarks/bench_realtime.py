"""Real-time factor of the bundled default pipeline, end to end, with a per-stage breakdown (issue 15).

    python benchmarks/bench_realtime.py                       # 10 s and 60 s of speech, 1 and 2 threads
    python benchmarks/bench_realtime.py --seconds 10 --threads 2 --steps 1,4,10
    python benchmarks/bench_realtime.py --seconds 10,60 --steps 1 --dtypes float32,bfloat16

The input is the demo photo (1280x720) and the demo speech repeated to `--seconds`; the output is the
full-resolution MP4 (1024x576), written as `talking-head generate` writes it. Real-time factor = seconds of
video per wall-clock second (>= 1 keeps up with the audio). Stages, timed inside the one call:
audio decoding, face detection + crop, landmark model, UNet calls, the rest of the renderer (mouth boxes,
masks, heatmaps, scheduler), compositing into the photo, and H.264 encoding (the writer's time in the
frames callback). Each configuration runs in its own process (its own thread count and peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _memory import peak_memory  # benchmarks/_memory.py, beside this script

ASSETS = Path(__file__).resolve().parents[1] / "assets"


class Stopwatch:
    """Wraps callables so the seconds spent inside them add up per stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return timed

    def wrap_generator(self, stage: str, fn):
        """A generator function whose time inside each `next` adds up to `stage`."""
        def timed(*args, **kwargs):
            items = fn(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
                yield item

        return timed


def run_one(seconds: float, threads: int, steps: int, sampler: str, pipeline: str, dtype: str = "float32") -> dict:
    import numpy as np
    import torch

    import talking_head.pipelines.pipeline_talking_head as module
    from talking_head.audio import load_audio
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
    from talking_head.schedulers import scheduler_from_name
    from talking_head.video import VideoWriter

    torch.set_num_threads(threads)
    speech = load_audio(str(ASSETS / "demo_speech.wav"))
    wave = np.tile(speech, int(np.ceil(seconds * 16000 / len(speech))))[: int(seconds * 16000)]
    folder = Path(tempfile.mkdtemp())
    wav = folder / "speech.wav"
    import soundfile as sf

    sf.write(wav, wave, 16000)
    pipe = TalkingHeadPipeline.from_pretrained(pipeline)
    pipe.scheduler = scheduler_from_name(sampler, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    if dtype != "float32":  # the landmark model stays float32 (KFusion keeps itself there)
        pipe.to(dtype=getattr(torch, dtype))

    watch = Stopwatch()
    module.load_audio = watch.wrap("audio decoding", module.load_audio)
    pipe.prepare_identity = watch.wrap("face detection + crop", pipe.prepare_identity)
    # The landmark model runs chunk by chunk as the renderer asks for frames: its time is inside "renderer (all)".
    pipe.landmark_chunks = watch.wrap_generator("landmark model", pipe.landmark_chunks)
    if getattr(pipe, "audio_encoder", None) is not None:  # inside the landmark chunks: reported on its own
        pipe.audio_encoder.encode = watch.wrap("audio encoder (Whisper)", pipe.audio_encoder.encode)
    pipe.unet.forward = watch.wrap("UNet", pipe.unet.forward)
    from talking_head.mouth_box import BoxTrack

    BoxTrack.composite = watch.wrap("compositing", BoxTrack.composite)
    render = watch.wrap("renderer (all)", pipe._render)
    pipe._render = render

    start = time.perf_counter()
    first = {}
    with VideoWriter(folder / "out.mp4", fps=25.0, audio=wave) as writer:
        write = watch.wrap("H.264 encoding", writer.write)

        def on_frames(frames):
            first.setdefault("t", time.perf_counter() - start)
            write(frames[0])

        out = pipe(str(wav), str(ASSETS / "demo_identity.jpg"), num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(0), output_type=None, frames_callback=on_frames,
                   frames_callback_dtype="uint8")
        close_start = time.perf_counter()
    watch.seconds["H.264 encoding"] = watch.seconds.get("H.264 encoding", 0.0) + time.perf_counter() - close_start
    wall = time.perf_counter() - start
    frames = out.landmarks.shape[1]
    stages = dict(watch.seconds)
    # Nested stages: the renderer's own share excludes the UNet, compositing and (inside the callback) encoding.
    inner = sum(stages.get(k, 0.0) for k in ("UNet", "compositing", "H.264 encoding", "landmark model"))
    stages["renderer (boxes, masks, scheduler)"] = max(0.0, stages.pop("renderer (all)", 0.0) - inner)
    # The encoder runs inside the landmark chunks: the landmark model's own share excludes it.
    stages["landmark model"] = max(0.0, stages.get("landmark model", 0.0) - stages.get("audio encoder (Whisper)", 0.0))
    stages["other"] = max(0.0, wall - sum(stages.values()))
    result = {"seconds": seconds, "threads": threads, "steps": steps, "sampler": sampler, "dtype": dtype,
              "frames": frames,
              "video_seconds": frames / 25.0, "wall": wall, "rtf": frames / 25.0 / wall,
              "first_frame_s": first.get("t"), "stages": stages,
              "size": list(writer.frame_size or (0, 0))}
    result.update(peak_memory(False))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default="10,60", help="speech lengths, comma-separated")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--steps", default="10", help="sampler steps, comma-separated (the demo uses 10)")
    parser.add_argument("--sampler", default="dpm", choices=["dpm", "ddim", "ddpm"])
    parser.add_argument("--dtypes", default="float32",
                        help="UNet dtypes, comma-separated: float32, bfloat16 (fast where the CPU has AMX / AVX-512 BF16)")
    parser.add_argument("--pipeline", default=str(ASSETS / "pipeline"), help="pipeline folder (default: the bundled one)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}; bundled default, demo photo, {args.sampler}")
    results = []
    for seconds in [float(s) for s in args.seconds.split(",")]:
        for threads in [int(t) for t in args.threads.split(",")]:
            for steps, dtype in [(int(s), d) for s in args.steps.split(",") for d in args.dtypes.split(",")]:
                cfg = dict(seconds=seconds, threads=threads, steps=steps, sampler=args.sampler, pipeline=args.pipeline,
                           dtype=dtype)
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                                      text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                if proc.returncode != 0:
                    print(f"{cfg}: FAILED: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(r)
                shares = ", ".join(f"{k} {100 * v / r['wall']:.0f} %" for k, v in
                                   sorted(r["stages"].items(), key=lambda kv: -kv[1]) if v / r["wall"] >= 0.005)
                print(f"{seconds:5.0f} s audio, {threads} thread(s), {steps:2d} steps, {dtype}: real-time factor "
                      f"{r['rtf']:.2f} ({r['frames']} frames {r['size'][1]}x{r['size'][0]} in {r['wall']:.1f} s), "
                      f"first frame {r['first_frame_s']:.2f} s, peak {r['peak_mem_MB']:.0f} MB; {shares}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
