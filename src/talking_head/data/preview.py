"""`talking-head preview`: look at a prepared clip with its landmarks drawn on.

    talking-head preview --data DIR [--clip ID] --output sheet.png    a contact sheet (N frames)
    talking-head preview --data DIR [--clip ID] --output clip.mp4     every frame, with the audio

Landmarks are drawn as connected iBUG-68 contours (jaw, brows, nose, eyes,
lips) in distinct colours; frames where no face was found get a red border
and "no face". The sheet's header names the clip, its labels and coverage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from talking_head.data import layout

# iBUG-68 contours: (first, last inclusive, closed, colour)
CONTOURS = (
    (0, 16, False, (255, 220, 0)),  # jaw
    (17, 21, False, (255, 128, 0)),  # right brow (image left)
    (22, 26, False, (255, 128, 0)),
    (27, 30, False, (0, 200, 255)),  # nose bridge
    (31, 35, False, (0, 200, 255)),  # nostrils
    (36, 41, True, (0, 255, 120)),  # eyes
    (42, 47, True, (0, 255, 120)),
    (48, 59, True, (255, 60, 160)),  # outer lip
    (60, 67, True, (255, 160, 220)),  # inner lip
)


def draw_landmarks(frame: np.ndarray, points, scale: float = 1.0, valid: bool = True) -> Image.Image:
    """`frame` (H, W, 3) uint8 enlarged by `scale`, with (68, 2) crop-pixel `points` drawn on."""
    img = Image.fromarray(np.asarray(frame, np.uint8))
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    pts = None if points is None else np.asarray(points, np.float64) * scale
    if valid and pts is not None and np.isfinite(pts).all():
        xy = pts - 0.5  # continuous coordinates -> PIL pixel-index coordinates
        width = max(1, round(img.width / 256))
        r = max(1.0, img.width / 200)
        for a, b, closed, colour in CONTOURS:
            seq = [tuple(p) for p in xy[a : b + 1]]
            if closed:
                seq.append(seq[0])
            draw.line(seq, fill=colour, width=width)
            for x, y in xy[a : b + 1]:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    else:
        w = max(2, round(img.width / 64))
        draw.rectangle((0, 0, img.width - 1, img.height - 1), outline=(255, 0, 0), width=w)
        draw.text((w + 2, w + 2), "no face", fill=(255, 0, 0))
    return img


def _pick_clip(root: Path, clip: str | None) -> dict:
    rows = [r for r in layout.read_manifest(root) if r.get("kind") == "video"]
    if not rows:
        raise ValueError(f"{root} has no video clips to preview")
    if clip is None:
        return rows[0]
    for r in rows:
        if r["clip_id"] == clip:
            return r
    near = [r["clip_id"] for r in rows if clip.lower() in r["clip_id"].lower()]
    if len(near) == 1:
        return next(r for r in rows if r["clip_id"] == near[0])
    shown = near or [r["clip_id"] for r in rows]
    raise ValueError(f"no clip {clip!r} in {root}; clips: {', '.join(shown[:12])}"
                     + (" ..." if len(shown) > 12 else ""))  # fmt: skip


def contact_sheet(root, clip: str | None = None, num_frames: int = 16, columns: int = 4) -> Image.Image:
    """A grid of `num_frames` evenly spaced frames of the clip with landmarks drawn on."""
    root = Path(root)
    row = _pick_clip(root, clip)
    lms = layout.load_landmarks(root, row)
    n = row["num_frames"]
    idx = np.unique(np.linspace(0, n - 1, min(num_frames, n)).round().astype(int))
    size = row["size"]
    scale = max(1.0, 256.0 / size)
    tiles = []
    for i in idx:
        frame = layout.load_frame(root, row, int(i))
        valid = bool(np.isfinite(lms[i]).all())
        tile = draw_landmarks(frame, lms[i], scale=scale, valid=valid)
        ImageDraw.Draw(tile).text((4, tile.height - 14), f"{i}", fill=(255, 255, 255))
        tiles.append(tile)
    cols = min(columns, len(tiles))
    rows_n = (len(tiles) + cols - 1) // cols
    t = tiles[0].width
    header = 34
    sheet = Image.new("RGB", (cols * t, rows_n * t + header), (24, 24, 24))
    d = ImageDraw.Draw(sheet)
    d.text((6, 4), f"{row['clip_id']}  [{row['split']}]  speaker {row['speaker']}  "
                   f"emotion {row.get('emotion') or '-'}  level {row.get('level') or '-'}", fill=(255, 255, 255))
    d.text((6, 18), f"{n} frames at {row['fps']:g} fps, {size}x{size}, landmarks on "
                    f"{100 * row['landmark_coverage']:.1f} % of frames", fill=(200, 200, 200))  # fmt: skip
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * t, header + (k // cols) * t))
    return sheet


def preview_video(root, output, clip: str | None = None) -> Path:
    """Every frame of the clip with its landmarks, muxed with the clip's audio, as an MP4."""
    from talking_head.video import VideoWriter

    root = Path(root)
    row = _pick_clip(root, clip)
    lms = layout.load_landmarks(root, row)
    import soundfile as sf

    audio, rate = sf.read(root / row["audio"], dtype="float32")
    scale = max(1.0, 256.0 / row["size"])
    with VideoWriter(output, fps=row["fps"], audio=audio, sample_rate=rate) as w:
        for i in range(row["num_frames"]):
            frame = layout.load_frame(root, row, i)
            img = draw_landmarks(frame, lms[i], scale=scale, valid=bool(np.isfinite(lms[i]).all()))
            w.write(np.asarray(img))
    return Path(output)


def add_preview_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("preview", help="draw a prepared clip's landmarks on its frames (PNG sheet or MP4)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--clip", default=None, help="clip id (default: the first clip in the manifest)")
    p.add_argument("--output", required=True, help="sheet.png (contact sheet) or clip.mp4 (all frames)")
    p.add_argument("--frames", type=int, default=16, help="frames on a contact sheet (default 16)")
    p.add_argument("--columns", type=int, default=4, help="columns of a contact sheet (default 4)")
    p.set_defaults(handler=cmd_preview)
    return p


def cmd_preview(args) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg", ".mp4", ".mkv", ".mov"):
        raise ValueError(f"--output must end in .png/.jpg (contact sheet) or .mp4 (video), got {out}")
    if args.frames < 1 or args.columns < 1:
        raise ValueError("--frames and --columns must be at least 1")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".png", ".jpg", ".jpeg"):
        sheet = contact_sheet(args.data, args.clip, args.frames, args.columns)
        tmp = out.with_name(f".{out.name}.part{suffix}")
        sheet.save(tmp)
        tmp.replace(out)
    else:
        preview_video(args.data, out, args.clip)
    print(f"wrote {out}")
    return 0
