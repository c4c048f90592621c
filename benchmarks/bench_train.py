"""Training throughput and peak memory of the diffusion trainer's step (train/train_diffusion.py).

For each preset (tiny, paper) × resolution (128², 256²) × device (CPU, and CUDA when present) it runs
optimizer updates of the 3D UNet on one batch of `--batch-size` clips of `--clip-frames` frames, with
exactly the trainer's code path (talking_head.training.make_diffusion_pair: mask-noise at the landmarks,
noising to a random t, the UNet forward and backward, gradient clipping, an AdamW step), and prints clips/s,
frames/s and the peak memory. Data loading is not included (a fixed random batch; with the prepared JPEG
frames it costs about 2 ms per 256² frame on one core, and --dataloader_num_workers hides it on a GPU).
bf16 autocast on CUDA (the trainer's default there), fp32 on the CPU; --gradient-checkpointing as the flag.
Each configuration runs in its own process so the CPU peak (max RSS) is that configuration's own.

The paper preset at 256² takes minutes per update on a small CPU; `--max-seconds` stops timing a
configuration after the first timed update that goes past it (the figure is then from fewer updates).

    python benchmarks/bench_train.py                              # everything
    python benchmarks/bench_train.py --presets tiny --sizes 128 --devices cpu
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


def run_one(preset: str, size: int, device: str, batch_size: int, clip_frames: int, steps: int, warmup: int,
            max_seconds: float, gradient_checkpointing: bool, prediction_type: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from talking_head.schedulers.scheduling_sdedit import default_ddpm_scheduler
    from talking_head.training import build_mask_noise, build_unet, make_diffusion_pair, sample_timesteps

    torch.manual_seed(0)
    unet = build_unet(preset, size, 7).to(device)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    mask_noise = build_mask_noise(size).to(device)
    scheduler = default_ddpm_scheduler(prediction_type)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=0.0)
    # A plausible face layout (normalised), moving a little from frame to frame.
    lm = np.stack(np.meshgrid(np.linspace(0.3, 0.7, 17), np.linspace(0.35, 0.75, 4)), -1).reshape(-1, 2)[:68]
    landmarks = torch.from_numpy(lm).float()[None, None].repeat(batch_size, clip_frames, 1, 1)
    landmarks = landmarks + 0.01 * torch.randn_like(landmarks)
    batch = {
        "frames": (torch.rand(batch_size, 3, clip_frames, size, size) * 2 - 1).to(device),
        "reference": (torch.rand(batch_size, 3, size, size) * 2 - 1).to(device),
        "landmarks": landmarks.to(device),
        "emotion": torch.zeros(batch_size, dtype=torch.long, device=device),
    }
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def update():
        t = sample_timesteps(batch_size, 1000, "mixed", 300, 0.8, device)
        pair = make_diffusion_pair(batch, mask_noise, scheduler, 7, prediction_type, t, p_uncond=0.1)
        with autocast:
            pred = unet(pair.model_input, pair.timesteps, class_labels=pair.class_labels).sample
        loss = F.mse_loss(pred.float(), pair.target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        update().item()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    timed, start = 0, time.perf_counter()
    while timed < steps:
        update().item()
        sync()
        timed += 1
        if time.perf_counter() - start > max_seconds:
            break
    elapsed = time.perf_counter() - start
    per_update = elapsed / timed
    result = {
        "preset": preset, "size": size, "device": device, "batch_size": batch_size, "clip_frames": clip_frames,
        "updates_timed": timed, "s_per_update": round(per_update, 4),
        "clips_per_s": round(batch_size / per_update, 4), "frames_per_s": round(batch_size * clip_frames / per_update, 3),
        "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3),
        "precision": "bf16 autocast" if cuda else "fp32", "threads": torch.get_num_threads(),
        "gradient_checkpointing": gradient_checkpointing,
    }
    result.update(peak_memory(cuda))
    if cuda:
        result["device_name"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--devices", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per update")
    parser.add_argument("--clip-frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--steps", type=int, default=5, help="timed updates per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop timing a configuration after the update that passes this many seconds")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--prediction-type", default="sample")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per configuration")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(run_one(**json.loads(args.one))))
        return

    import torch

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
          + f"; batch {args.batch_size} x {args.clip_frames} frames per update")
    header = (f"{'preset':6} {'size':>4} {'device':6} {'s/update':>9} {'clips/s':>9} {'frames/s':>9} "
              f"{'peak MB':>9}  note")
    print(header)
    print("-" * len(header))
    for device in devices:
        for preset in args.presets.split(","):
            for size in [int(s) for s in args.sizes.split(",")]:
                cfg = dict(preset=preset, size=size, device=device, batch_size=args.batch_size,
                           clip_frames=args.clip_frames, steps=args.steps, warmup=args.warmup,
                           max_seconds=args.max_seconds, gradient_checkpointing=args.gradient_checkpointing,
                           prediction_type=args.prediction_type)
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                    print(f"{preset:6} {size:>4} {device:6}  FAILED: {last}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                note = (f"{r['precision']}, {r['peak_mem_kind']}, {r['updates_timed']} updates timed, "
                        f"UNet {r['unet_params_M']} M params")
                print(f"{preset:6} {size:>4} {device:6} {r['s_per_update']:>9.3f} {r['clips_per_s']:>9.3f} "
                      f"{r['frames_per_s']:>9.2f} {r['peak_mem_MB']:>9.0f}  {note}", flush=True)
                if args.json:
                    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
