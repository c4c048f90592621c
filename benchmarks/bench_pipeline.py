"""Generation speed and peak memory of TalkingHeadPipeline.

For each preset (tiny, paper) × resolution (128², 256²) × sampler (300-step DDPM,
25-step DPM-Solver) × device (CPU, and CUDA when present) it generates one clip
of `--seconds` of audio from a fixed random pipeline and prints frames generated
per second of wall time and the peak memory. Each configuration runs in its own
process so that the CPU peak (max RSS) belongs to that configuration alone.

On a CPU, 300 DDPM steps of the paper UNet at 256² take a long time per clip;
`--max-steps N` times only the first N denoising steps of each clip and scales
the time to the full count (printed as "extrapolated"), which is exact up to the
fixed per-clip cost because every denoising step costs the same.

    python benchmarks/bench_pipeline.py                       # everything
    python benchmarks/bench_pipeline.py --presets tiny --sizes 128 --devices cpu
    python benchmarks/bench_pipeline.py --bundled              # the bundled default, demo photo and speech

`--bundled` runs the bundled default pipeline end to end on the demo photo (1280x720, face detection
included) and speech (3 s), at the demo's settings and at 300 DDPM steps (extrapolated from `--max-steps`
like above), and prints seconds of wall time per generated second of video and the peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from _memory import peak_memory  # benchmarks/_memory.py, beside this script


def run_one(preset: str, size: int, sampler: str, device: str, seconds: float, max_steps: int | None) -> dict:
    import numpy as np
    import torch

    from talking_head.presets import build_pipeline
    from talking_head.schedulers import scheduler_from_name

    torch.set_num_threads(os.cpu_count() or 1)
    pipe = build_pipeline(preset, sample_size=size, seed=0)
    name, steps = {"ddpm300": ("ddpm", 300), "dpm25": ("dpm", 25)}[sampler]
    pipe.scheduler = scheduler_from_name(name, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
             + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    # A synthetic face layout: the benchmark measures compute, not detection.
    lm = np.stack(np.meshgrid(np.linspace(0.3, 0.7, 17), np.linspace(0.35, 0.75, 4)), -1).reshape(-1, 2)[:68]
    identity = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    landmarks = (lm * size).astype(np.float32)

    run_steps = steps if max_steps is None else min(steps, max_steps)
    counter = {"n": 0}

    def count_steps(p, i, t_, kwargs):
        counter["n"] += 1
        return kwargs

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    # Timing with the step count cut to run_steps: each clip runs run_steps steps.
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    out = pipe(audio, identity, sample_rate=sr, identity_landmarks=landmarks, emotion="neutral",
               t_start=300, num_inference_steps=run_steps, generator=generator, output_type="np",
               callback_on_step_end=count_steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    frames = out.frames.shape[1]
    clips = len(pipe.clip_starts(frames))
    per_step = elapsed / max(1, counter["n"])
    full = elapsed if run_steps == steps else elapsed + per_step * clips * (steps - run_steps)
    result = {
        "preset": preset, "size": size, "sampler": sampler, "device": device, "frames": frames,
        "clips": clips, "steps": steps, "steps_timed": run_steps, "seconds": round(full, 3),
        "frames_per_s": round(frames / full, 4), "extrapolated": run_steps != steps,
        "unet_params_M": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 3),
    }
    result.update(peak_memory(device.startswith("cuda")))
    return result


def run_bundled(sampler: str, device: str, max_steps: int | None, threads: int) -> dict:
    """The bundled default on the demo photo and speech: seconds per generated second, peak memory."""
    from pathlib import Path

    import torch

    from talking_head.cli import DEMO_SAMPLER, DEMO_STEPS
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
    from talking_head.schedulers import scheduler_from_name

    torch.set_num_threads(threads)
    assets = Path(__file__).resolve().parents[1] / "assets"
    pipe = TalkingHeadPipeline.from_pretrained(assets / "pipeline")
    name, steps = {"demo": (DEMO_SAMPLER, DEMO_STEPS), "ddpm300": ("ddpm", 300)}[sampler]
    pipe.scheduler = scheduler_from_name(name, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    run_steps = steps if max_steps is None else min(steps, max_steps)
    counter = {"n": 0}

    def count_steps(p, i, t_, kwargs):
        counter["n"] += 1
        return kwargs

    start = time.perf_counter()
    out = pipe(str(assets / "demo_speech.wav"), str(assets / "demo_identity.jpg"), num_inference_steps=run_steps,
               generator=torch.Generator().manual_seed(0), output_type=None, frames_callback=lambda f: None,
               callback_on_step_end=count_steps)
    elapsed = time.perf_counter() - start
    frames = out.landmarks.shape[1]
    clips = len(pipe.clip_starts(frames))
    per_step = elapsed / max(1, counter["n"])
    full = elapsed if run_steps == steps else elapsed + per_step * clips * (steps - run_steps)
    result = {"sampler": f"{name}:{steps}", "device": device, "threads": threads, "frames": frames,
              "video_seconds": frames / out.fps, "seconds": round(full, 3),
              "s_per_generated_s": round(full / (frames / out.fps), 3), "extrapolated": run_steps != steps}
    result.update(peak_memory(device.startswith("cuda")))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--samplers", default="ddpm300,dpm25")
    parser.add_argument("--devices", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--seconds", type=float, default=0.64, help="audio length (0.64 s = one 16-frame clip at 25 fps)")
    parser.add_argument("--max-steps", type=int, default=10,
                        help="time at most this many denoising steps per clip and extrapolate (0 = run all)")
    parser.add_argument("--bundled", action="store_true", help="the bundled default on the demo photo and speech")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (--bundled)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one configuration, JSON on stdout
        cfg = json.loads(args.one)
        print(json.dumps(run_bundled(**cfg) if "threads" in cfg else run_one(**cfg)))
        return

    import torch

    if args.bundled:
        print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
        for sampler in ("demo", "ddpm300"):
            cfg = dict(sampler=sampler, device="cpu", threads=args.threads,
                       max_steps=(args.max_steps or None) if sampler == "ddpm300" else None)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{sampler}: FAILED: {proc.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            note = " (extrapolated)" if r["extrapolated"] else ""
            print(f"bundled default, {r['sampler']:9} on {r['device']}: {r['frames']} frames ({r['video_seconds']:.2f} s) "
                  f"in {r['seconds']:.2f} s = {r['s_per_generated_s']:.2f} s per generated s{note}, "
                  f"peak {r['peak_mem_MB']:.0f} MB", flush=True)
        return

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    header = f"{'preset':6} {'size':>4} {'sampler':8} {'device':6} {'frames':>6} {'s':>9} {'frames/s':>9} {'peak MB':>9}  note"
    print(header)
    print("-" * len(header))
    for device in devices:
        for preset in args.presets.split(","):
            for size in [int(s) for s in args.sizes.split(",")]:
                for sampler in args.samplers.split(","):
                    cfg = dict(preset=preset, size=size, sampler=sampler, device=device, seconds=args.seconds,
                               max_steps=(args.max_steps or None) if device == "cpu" else None)
                    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"{preset:6} {size:>4} {sampler:8} {device:6}  FAILED: {proc.stderr.strip().splitlines()[-1]}")
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    note = f"extrapolated from {r['steps_timed']}/{r['steps']} steps" if r["extrapolated"] else ""
                    print(f"{preset:6} {size:>4} {sampler:8} {device:6} {r['frames']:>6} {r['seconds']:>9.2f} "
                          f"{r['frames_per_s']:>9.3f} {r['peak_mem_MB']:>9.0f}  {note} (UNet {r['unet_params_M']} M params)",
                          flush=True)


if __name__ == "__main__":
    main()
