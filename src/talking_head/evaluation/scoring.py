"""Scoring generated frames against a clip's ground truth as they stream out of the pipeline.

`ClipScorer` is the `frames_callback`: each frame is scored the moment it
arrives (PSNR and SSIM on the face crop at the scoring resolution and inside
the clip's mouth box, dlib landmarks at 256x256 for LD) and only the
per-frame numbers are kept, so memory stays bounded whatever the clip length. The ground truth's landmarks are detected
once per frame and shared by every method and sweep (`GroundTruthLandmarks`).
"""

from __future__ import annotations

import time

import numpy as np
import PIL.Image

from talking_head.evaluation.clips import EvalClip
from talking_head.evaluation.metrics import LD_SIZE, landmark_distance, mean_psnr, psnr, ssim, to_uint8

_UNSET = object()


def resize(image: np.ndarray, size: int, resample=PIL.Image.BILINEAR) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3); PIL's bilinear (antialiased when shrinking), as the datasets do."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(PIL.Image.fromarray(image).resize((size, size), resample))


def identity_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A stored face crop as the pipeline takes it with crop_face=False: its centre square, resized."""
    from talking_head.face import crop_face

    h, w = image.shape[:2]
    return crop_face(image, (w / 2.0, h / 2.0, float(min(h, w))), size)


class LandmarkDetector:
    """dlib 68 landmarks of a frame resized to 256x256 (bicubic), in pixels of that 256x256 frame.

    dlib's HOG face detector runs once without upsampling (as the EAT/MEAD
    evaluator does: a face in a 256x256 crop is far above its ~80 px minimum),
    then the 68-point predictor on the largest face.
    """

    def __init__(self):
        from talking_head.face import FaceLandmarkDetector, dlib_available

        if not dlib_available():
            from talking_head.face import INSTALL_HINT

            raise ImportError(INSTALL_HINT)
        self._detector = FaceLandmarkDetector(upsample=0)
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        started = time.perf_counter()
        img = resize(to_uint8(frame), LD_SIZE, PIL.Image.BICUBIC)
        points = self._detector.detect(img)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return points


class GroundTruthLandmarks:
    """dlib landmarks of the ground-truth frames (at 256x256), detected once and cached."""

    def __init__(self, detector: LandmarkDetector | None):
        self.detector = detector
        self._cache: dict[tuple[str, int], np.ndarray | None] = {}

    def get(self, clip: EvalClip, index: int) -> np.ndarray | None:
        if self.detector is None:
            return None
        key = (clip.clip_id, index)
        if key not in self._cache:
            self._cache[key] = self.detector(clip.frame(index))
        return self._cache[key]


def clip_mouth_box(clip: EvalClip, size: int):
    """The mouth box of a clip (talking_head.mouth_box) in pixels of a `size` x `size` frame: the box around the
    lower face of the reference frame and of every ground-truth frame, as the renderer's box for that clip."""
    from talking_head.mouth_box import MouthBox

    points = np.concatenate([clip.reference_landmarks[None], clip.landmarks[clip.landmark_valid]])
    return MouthBox.from_landmarks(points * (size / clip.size))


class ClipScorer:
    """frames_callback scoring one clip's generated frames in order (see the module docstring).

    driving: (F, 68, 2) landmarks in 256-px units that drove the rendering (drawn on the sample panel).
    panel_writer: an optional callable taking one uint8 panel (256, 768, 3) per frame.
    Generated frames of another size than `size` are resized to it (bilinear), as the ground truth is.
    """

    def __init__(self, clip: EvalClip, size: int, gt_landmarks: GroundTruthLandmarks,
                 detector: LandmarkDetector | None, driving: np.ndarray | None = None, panel_writer=None):
        self.clip = clip
        self.size = int(size)
        self.box = clip_mouth_box(clip, self.size)
        self.gt_landmarks = gt_landmarks
        self.detector = detector
        self.driving = driving
        self.panel_writer = panel_writer
        self.scored = set(clip.scored_indices)
        self.next_index = 0
        self.busy = 0.0  # seconds spent scoring (subtracted from generation timings)
        self.rows: list[dict] = []

    def __call__(self, frames) -> None:
        """Score a run of frames: (B=1, n, H, W, 3) or (n, H, W, 3), float in [0, 1] or uint8."""
        started = time.perf_counter()
        x = np.asarray(frames)
        if x.ndim == 5:
            if x.shape[0] != 1:
                raise ValueError("the evaluator scores one video at a time (batch size 1)")
            x = x[0]
        for frame in x:
            self.add(frame)
        self.busy += time.perf_counter() - started

    def add(self, frame, generated_landmarks=_UNSET) -> None:
        """Score the next frame; `generated_landmarks` skips detection when already known (static frames)."""
        i = self.next_index
        if i >= self.clip.num_frames:
            raise ValueError(f"got more frames than the {self.clip.num_frames} of clip {self.clip.clip_id}")
        self.next_index += 1
        gen = to_uint8(frame)
        if gen.ndim != 3 or gen.shape[2] != 3 or gen.shape[0] != gen.shape[1]:
            raise ValueError(f"generated frames must be square (S, S, 3) face crops, got {gen.shape}")
        gen = resize(gen, self.size)
        gt_full = None
        gen_pts = None
        if i in self.scored or self.panel_writer is not None:
            gt_full = self.clip.frame(i)
        if i in self.scored:
            gt = resize(gt_full, self.size)
            row = {"frame": i, "psnr": psnr(gt, gen), "ssim": ssim(gt, gen)}
            gt_box, gen_box = self._in_box(gt), self._in_box(gen)
            row["box_psnr"], row["box_ssim"] = psnr(gt_box, gen_box), ssim(gt_box, gen_box)
            if self.detector is not None:
                gt_pts = self.gt_landmarks.get(self.clip, i)
                gen_pts = self.detector(gen) if generated_landmarks is _UNSET else generated_landmarks
                row["gt_face"] = gt_pts is not None
                row["face"] = gen_pts is not None
                if gt_pts is not None and gen_pts is not None:
                    row["m_ld"] = float(landmark_distance(gen_pts, gt_pts, "mouth"))
                    row["f_ld"] = float(landmark_distance(gen_pts, gt_pts, "face"))
            self.rows.append(row)
        elif self.panel_writer is not None and self.detector is not None:
            gen_pts = self.detector(gen) if generated_landmarks is _UNSET else generated_landmarks
        if self.panel_writer is not None:
            self.panel_writer(self._panel(i, gen, gt_full, gen_pts))

    def _in_box(self, frame: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box.inside(self.size, self.size)
        return frame[y0:y1, x0:x1]

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict:
        if self.next_index != self.clip.num_frames:
            raise RuntimeError(f"clip {self.clip.clip_id}: scored {self.next_index} of {self.clip.num_frames} frames")
        return summarise(self.rows, self.size, self.detector is not None)

    # ---------------------------------------------------------------- panel
    def _panel(self, i: int, gen: np.ndarray, gt: np.ndarray, gen_pts) -> np.ndarray:
        """generated | ground truth | landmarks, each 256x256."""
        from PIL import ImageDraw

        g = resize(gen, LD_SIZE, PIL.Image.BICUBIC)
        t = resize(gt, LD_SIZE)
        bg = PIL.Image.fromarray((t.astype(np.float32) * 0.35).astype(np.uint8))
        draw = ImageDraw.Draw(bg)
        scale = LD_SIZE / self.clip.size

        def dots(points, colour, r=1.6):
            if points is None:
                return
            for x, y in np.asarray(points, dtype=np.float64):
                if np.isfinite(x) and np.isfinite(y):
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)

        dots(self.clip.landmarks[i] * scale, (60, 220, 60))  # ground truth (the dataset's)
        if self.driving is not None:
            dots(self.driving[i], (235, 60, 60))  # what drove the rendering
        dots(gen_pts, (250, 220, 40), r=1.0)  # detected on the generated frame
        return np.concatenate([g, t, np.asarray(bg)], axis=1)


def summarise(rows: list[dict], size: int, with_landmarks: bool) -> dict:
    """Aggregate per-frame rows of one clip (or pooled rows of several clips)."""
    out: dict = {"frames": len(rows)}
    out["psnr"], out["psnr_identical_frames"] = mean_psnr([r["psnr"] for r in rows], (size, size, 3))
    out["ssim"] = float(np.mean([r["ssim"] for r in rows])) if rows else None
    boxed = [r for r in rows if "box_psnr" in r]
    if boxed:
        out["box_psnr"], _ = mean_psnr([r["box_psnr"] for r in boxed], (size, size, 3))
        out["box_ssim"] = float(np.mean([r["box_ssim"] for r in boxed]))
    if with_landmarks:
        ld = [r for r in rows if "m_ld" in r]
        out["m_ld"] = float(np.mean([r["m_ld"] for r in ld])) if ld else None
        out["f_ld"] = float(np.mean([r["f_ld"] for r in ld])) if ld else None
        out["ld_frames"] = len(ld)
        out["face_detection_rate"] = float(np.mean([r["face"] for r in rows])) if rows else None
        out["gt_face_detection_rate"] = float(np.mean([r["gt_face"] for r in rows])) if rows else None
    return out


def combine(clip_results: list[dict], size: int, with_landmarks: bool) -> dict:
    """Dataset-level figures from per-clip results (each with its per-frame `rows`).

    PSNR and SSIM: the mean over all scored frames (pooled); LD: the mean over
    clips of each clip's mean over its frames with a face found on both sides
    (the EAT/MEAD evaluator's aggregation); detection rates: pooled over frames.
    """
    rows = [r for c in clip_results for r in c["rows"]]
    out = summarise(rows, size, with_landmarks)
    out["clips"] = len(clip_results)
    if with_landmarks:
        per_clip = [c["summary"] for c in clip_results if c["summary"].get("ld_frames")]
        out["m_ld"] = float(np.mean([s["m_ld"] for s in per_clip])) if per_clip else None
        out["f_ld"] = float(np.mean([s["f_ld"] for s in per_clip])) if per_clip else None
        out["ld_clips"] = len(per_clip)
    return out
