"""Logging helpers: a JSON-lines metrics log, per-process batch-id logs, validation videos (MP4, and an
animated GIF for TensorBoard) and landmark overlays."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


METRICS_FILE = "metrics.jsonl"


class JsonlLog:
    """Append-only JSON-lines file (one object per line); a no-op when `path` is None."""

    def __init__(self, path):
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def metrics_log(accelerator, output_dir) -> JsonlLog:
    """OUTPUT_DIR/metrics.jsonl on the main process (train loss, LR, validation figures per step)."""
    return JsonlLog(Path(output_dir) / METRICS_FILE if accelerator.is_main_process else None)


def batch_log(accelerator, args) -> JsonlLog:
    path = Path(args.output_dir) / "batch_ids" / f"rank{accelerator.process_index}.jsonl" if args.log_batch_ids else None
    return JsonlLog(path)


def batch_ids(batch: dict) -> list[str]:
    """Readable ids of a batch's items: `clip_id@start_frame` for video windows, `clip_id` for audio."""
    clips = batch.get("clip_id", [])
    if "start_frame" in batch:
        return [f"{c}@{int(s)}" for c, s in zip(clips, batch["start_frame"].tolist())]
    return list(clips)


def weights_checksum(model: torch.nn.Module, buffers: bool = False) -> str:
    """sha256 of a model's parameters (names, shapes, values): equal iff the weights are equal. With
    `buffers`, of the whole state dict (running statistics of normalisation layers included, which
    DistributedDataParallel only syncs from rank 0 at the start of each forward pass)."""
    digest = hashlib.sha256()
    tensors = model.state_dict() if buffers else dict(model.named_parameters())
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        data = tensor.detach().cpu()
        digest.update(str(tuple(data.shape)).encode())
        digest.update((data.float() if data.is_floating_point() else data).contiguous().numpy().tobytes())
    return digest.hexdigest()


def log_scalars(accelerator, metrics: JsonlLog, values: dict, step: int) -> None:
    accelerator.log(values, step=step)
    metrics.write(step=int(step), **{k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
                                      for k, v in values.items()})


def upscale_frames(frames: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 (T, H, W, 3) until the short side is >= min_side (for viewing)."""
    factor = max(1, math.ceil(min_side / min(frames.shape[1:3])))
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def to_uint8_video(clip: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    clip = ((clip.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return clip.permute(1, 2, 3, 0).cpu().numpy()


def log_video(accelerator, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
    """Log uint8 (T, H, W, 3) frames as a video: an animated GIF image summary in TensorBoard (what
    `SummaryWriter.add_video` writes, made here with PIL so moviepy is not needed), `wandb.Video` in W&B."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            from PIL import Image
            from tensorboard.compat.proto.summary_pb2 import Summary

            buf = io.BytesIO()
            images = [Image.fromarray(f) for f in frames]
            images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(20, int(round(1000 / fps))), loop=0)
            image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                                  encoded_image_string=buf.getvalue())
            writer = tracker.writer
            writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
            writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Video(frames.transpose(0, 3, 1, 2), fps=int(round(fps)), format="mp4")},
                        step=step)


def write_validation_mp4(path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None) -> Path | None:
    """MP4 (H.264, + AAC audio when given) of uint8 frames; a failure is logged, never fatal to training."""
    from talking_head.video import write_video

    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # H.264 in yuv420 wants even sides.
        h, w = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
        return write_video(path, frames[:, :h, :w], fps, audio=audio)
    except Exception as err:  # noqa: BLE001 - validation media must not stop a training run
        logger.warning(f"could not write {path}: {err}")
        return None


def draw_landmarks(frames: np.ndarray, *point_sets: tuple[np.ndarray, tuple[int, int, int]]) -> np.ndarray:
    """Draw normalised landmark sets ((F, 68, 2), colour) as dots on uint8 frames (F, H, W, 3)."""
    from PIL import Image, ImageDraw

    out = []
    for f, frame in enumerate(frames):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        h, w = frame.shape[:2]
        r = max(1, round(min(h, w) / 128))
        for points, colour in point_sets:
            for x, y in points[f]:
                px, py = x * w, y * h
                draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
        out.append(np.asarray(image))
    return np.stack(out)
