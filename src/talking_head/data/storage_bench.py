"""Measure storage formats for prepared 256x256 frames (how the format in prepare.py was chosen).

    python -m talking_head.data.storage_bench VIDEO [--frames 250] [--windows 30]

Decodes up to --frames frames of VIDEO (resized to 256x256 if needed) and, for
each candidate format, reports the write time per frame, bytes per frame on
disk, the time to read a random 16-frame window back (mean of --windows
windows, cold process caches not flushed: this is the in-training case where
the dataset fits the page cache), and the PSNR of what is read back. The
results that decided the format are recorded in talking_head.data.prepare.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

WINDOW = 16


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _decode(path, limit: int) -> np.ndarray:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", "scale=256:256"])
    meta = next(gen)
    w, h = meta["size"]
    frames = []
    for buf in gen:
        frames.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
        if len(frames) >= limit:
            gen.close()
            break
    return np.stack(frames)


def _folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _image_format(ext: str, **save_kwargs):
    def write(frames, folder: Path):
        folder.mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(folder / f"{i:06d}.{ext}", **save_kwargs)
        return folder

    def read(folder: Path, start: int):
        return np.stack(
            [np.asarray(Image.open(folder / f"{i:06d}.{ext}").convert("RGB"))
             for i in range(start, start + WINDOW)]
        )

    return write, read


def _zip_write(frames, folder: Path):
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i, f in enumerate(frames):
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, "JPEG", quality=95)
            z.writestr(f"{i:06d}.jpg", buf.getvalue())
    return path


def _zip_read(path: Path, start: int):
    with zipfile.ZipFile(path) as z:
        return np.stack(
            [np.asarray(Image.open(io.BytesIO(z.read(f"{i:06d}.jpg"))).convert("RGB"))
             for i in range(start, start + WINDOW)]
        )


def _npy_write(frames, folder: Path):
    path = folder.with_suffix(".npy")
    np.save(path, frames)
    return path


def _npy_read(path: Path, start: int):
    return np.array(np.load(path, mmap_mode="r")[start : start + WINDOW])


def _video_format(codec_args, ext):
    def write(frames, folder: Path):
        from talking_head.audio import ffmpeg_exe

        path = folder.with_suffix(ext)
        n, h, w, _ = frames.shape
        cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", "25", "-i", "pipe:0", *codec_args, str(path)]  # fmt: skip
        subprocess.run(cmd, input=frames.tobytes(), check=True)
        return path

    def read(path: Path, start: int):
        import imageio_ffmpeg

        # Accurate seek: ffmpeg decodes from the keyframe before `start` (GOP = 16 here).
        gen = imageio_ffmpeg.read_frames(
            str(path), input_params=["-ss", f"{start / 25:.4f}"],
            output_params=["-frames:v", str(WINDOW)],
        )  # fmt: skip
        meta = next(gen)
        w, h = meta["size"]
        out = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
        return np.stack(out[:WINDOW])

    return write, read


FORMATS = {
    "npy uint8 (memmap)": (_npy_write, _npy_read),
    "PNG per frame (level 6)": _image_format("png", compress_level=6),
    "PNG per frame (level 1)": _image_format("png", compress_level=1),
    "JPEG q95 4:2:0 per frame": _image_format("jpg", quality=95),
    "JPEG q95 4:4:4 per frame": _image_format("jpg", quality=95, subsampling=0),
    "JPEG q90 4:2:0 per frame": _image_format("jpg", quality=90),
    "JPEG q95 in one zip": (_zip_write, _zip_read),
    "H.264 lossless rgb (mkv, g=16)": _video_format(
        ["-c:v", "libx264rgb", "-crf", "0", "-preset", "fast", "-g", "16"], ".mkv"
    ),
    "FFV1 (mkv, g=16)": _video_format(["-c:v", "ffv1", "-g", "16"], ".mkv"),
}


def run(video, frames: int = 250, windows: int = 30, seed: int = 0) -> list[dict]:
    data = _decode(video, frames)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - WINDOW, size=windows)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="th_storage_bench_"))
    try:
        for name, (write, read) in FORMATS.items():
            folder = tmp / name.split()[0].lower().replace(".", "")
            folder = folder.with_name(f"{folder.name}_{len(rows)}")
            t0 = time.perf_counter()
            path = write(data, folder)
            t_write = (time.perf_counter() - t0) / len(data)
            read(path, 0)  # warm-up (imports, page cache)
            t_read, psnr = 0.0, []
            for s in starts:
                t0 = time.perf_counter()
                window = read(path, int(s))
                t_read += (time.perf_counter() - t0) / len(starts)
                psnr.append(_psnr(window, data[s : s + WINDOW]))
            rows.append({
                "format": name, "write_ms_per_frame": 1000 * t_write,
                "kB_per_frame": _folder_size(path) / len(data) / 1000,
                "read_ms_per_16_window": 1000 * t_read, "psnr_db": float(np.mean(psnr)),
            })  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--windows", type=int, default=30)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = run(args.video, args.frames, args.windows)
    print(f"{'format':34s} {'write ms/f':>10s} {'kB/frame':>9s} {'read ms/16':>10s} {'PSNR dB':>8s}")
    for r in rows:
        print(f"{r['format']:34s} {r['write_ms_per_frame']:10.2f} {r['kB_per_frame']:9.1f} "
              f"{r['read_ms_per_16_window']:10.1f} {r['psnr_db']:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
