"""`talking-head evaluate`: every figure of the protocol (DESIGN.md section 5) from one call.

    evaluate(EvalConfig(data="prepared/obama", pipeline="my-pipeline", output="report"))

For every clip of the split (see talking_head.evaluation.clips) and every method:

* static        the reference frame repeated (the floor: what doing nothing scores);
* warp          the reference's lower face warped onto the ground-truth landmarks (talking_head.warp: no
                model, no learning; the row a renderer must beat, DESIGN 8.1);
* pipeline      the pipeline end to end: audio -> landmark model -> renderer;
* gt_landmarks  the renderer driven by the dataset's ground-truth landmarks instead of
                the landmark model's (the ceiling of the landmark model);

frames are generated from the clip's audio and reference frame, streamed through a
ClipScorer (PSNR, SSIM, dlib LD) and, for the first `samples` clips, into
side-by-side videos. The landmark model is also scored alone (LD of its predicted
landmarks against the dataset's), next to the identity landmarks repeated. Sweeps
over the SDEdit start (`t_start_sweep`) and over samplers (`scheduler_sweep`) run
the `pipeline` method with each setting. The emotion classifier is scored on the
labelled audio of `emotion_data` (or of `data`). With `expression_data` (emotion-labelled faces,
`talking-head prepare cremad`), emotion in the face is scored by a landmark expression classifier and the demo
photo is rendered with each emotion (talking_head.evaluation.expression). Everything lands in
`output/metrics.json` and `output/report.md` (talking_head.evaluation.report).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS, NO_EMOTION, NULL_EMOTION, SAMPLE_RATE
from talking_head.evaluation.clips import EvalClip, load_clips
from talking_head.evaluation.face_measures import FaceMeasures, MeasuredClipScorer, summarise_measures
from talking_head.evaluation.metrics import LD_SIZE, landmark_distance
from talking_head.evaluation.scoring import ClipScorer, GroundTruthLandmarks, LandmarkDetector, combine, identity_crop

METHODS = ("static", "warp", "pipeline", "gt_landmarks")
NO_MODEL_METHODS = ("static", "warp")  # rows that need no pipeline
METHOD_LABELS = {
    "static": "static reference frame (floor)",
    "warp": "warp: the reference's lower face warped onto the ground-truth landmarks (no learning)",
    "pipeline": "pipeline (predicted landmarks)",
    "gt_landmarks": "ground-truth landmarks (ceiling of the landmark model)",
}
PROTOCOLS = ("photo", "dubbing")
DUBBING_LABELS = {**METHOD_LABELS, "static": "frozen mouth: the reference's lower face pasted in (floor)"}
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm": 25}
FORMAT = "talking-head-evaluation"
VERSION = 1


@dataclass
class EvalConfig:
    data: str
    pipeline: str | None = None
    output: str = "evaluation-report"
    split: str = "test"
    protocol: str = "photo"  # photo: the first frame held still; dubbing: the clip itself is the identity video
    methods: tuple = METHODS
    max_clips: int | None = None
    max_seconds: float | None = None
    sampler: str = "ddpm"  # name[:steps] for the method rows and the t_start sweep
    t_start: int = 300  # SDEdit start of the method rows and the sampler sweep
    t_start_sweep: tuple = ()
    scheduler_sweep: tuple = ()  # "name[:steps]" each
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    emotion: str = "auto"  # auto | classifier | an emotion name
    guidance_scale: float = 1.0
    emotion_data: str | None = None
    emotion_split: str | None = None  # default: split
    emotion_classifier: str | None = None  # a classifier checkpoint instead of the pipeline's
    emotion_cross_corpus: str | None = None  # another labelled corpus (DIR or DIR:SPLIT), scored on its own classes
    calm_speech: tuple = ()  # prepared sets (DIR or DIR:SPLIT) for the calm-speech check (issue 38)
    expression_data: str | None = None  # emotion-labelled faces (prepare cremad): emotion in the face (issue 16)
    expression_scale: float = 1.0  # the pipeline's emotion_scale for the generated expressions
    expression_sheet: bool = True  # with expression_data: the demo photo rendered with each emotion
    samples: int = 2
    resolution: int | None = None  # only without a pipeline (static floor alone)
    landmarks: bool = True
    note: str | None = None
    quiet: bool = False
    command: str | None = None


def parse_sampler(spec: str) -> tuple[str, int | None]:
    """"dpm:25" -> ("dpm", 25); "ddpm" -> ("ddpm", None = one step per timestep)."""
    from talking_head.schedulers.scheduling_sdedit import SCHEDULERS

    name, _, steps = str(spec).strip().lower().partition(":")
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {spec!r}; expected NAME[:STEPS] with NAME one of {', '.join(SCHEDULERS)}")
    if not steps:
        return name, DEFAULT_STEPS[name]
    try:
        n = int(steps)
    except ValueError:
        raise ValueError(f"sampler {spec!r}: steps must be a whole number") from None
    if n < 1:
        raise ValueError(f"sampler {spec!r}: steps must be >= 1")
    return name, n


def config_to_command(cfg: EvalConfig) -> str:
    """The `talking-head evaluate ...` command line that reruns `cfg` (options at their default left out)."""
    import shlex

    default = EvalConfig(data=cfg.data)
    opts = [("--pipeline", cfg.pipeline, None), ("--data", cfg.data, ""), ("--split", cfg.split, default.split),
            ("--output", cfg.output, None), ("--protocol", cfg.protocol, default.protocol),
            ("--methods", ",".join(cfg.methods), ",".join(default.methods)),
            ("--max-clips", cfg.max_clips, None), ("--max-seconds", cfg.max_seconds, None),
            ("--sampler", cfg.sampler, default.sampler), ("--base-t-start", cfg.t_start, default.t_start),
            ("--t-start", ",".join(map(str, cfg.t_start_sweep)), ""),
            ("--scheduler", ",".join(cfg.scheduler_sweep), ""), ("--emotion", cfg.emotion, default.emotion),
            ("--guidance-scale", cfg.guidance_scale, default.guidance_scale),
            ("--emotion-data", cfg.emotion_data, None), ("--emotion-split", cfg.emotion_split, None),
            ("--emotion-classifier", cfg.emotion_classifier, None), ("--samples", cfg.samples, default.samples),
            ("--emotion-cross-corpus", cfg.emotion_cross_corpus, None),
            ("--calm-speech", ",".join(cfg.calm_speech), ""),
            ("--expression-data", cfg.expression_data, None),
            ("--expression-scale", cfg.expression_scale, default.expression_scale),
            ("--resolution", cfg.resolution, None), ("--seed", cfg.seed, default.seed),
            ("--device", cfg.device, None), ("--dtype", cfg.dtype, default.dtype), ("--note", cfg.note, None)]
    words = ["talking-head", "evaluate"]
    for flag, value, dflt in opts:
        if value is not None and value != dflt:
            words += [flag, str(value)]
    if not cfg.landmarks:
        words.append("--no-landmarks")
    if cfg.expression_data is not None and not cfg.expression_sheet:
        words.append("--no-expression-sheet")
    return " ".join(shlex.quote(w) for w in words)


def effective_steps(steps: int | None, t_start: int) -> int:
    """Denoising steps actually run from t_start (sdedit_timesteps: at most one per timestep)."""
    return t_start if steps is None else min(int(steps), int(t_start))


def sampler_label(name: str, steps: int | None, t_start: int) -> str:
    return f"{name}:{effective_steps(steps, t_start)}"


# ---------------------------------------------------------------------- environment


def sha256_dir(path) -> str:
    """SHA-256 over a directory's files (relative path + content, sorted): the pipeline's identity."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def sha256_file(path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import diffusers
        import skimage

        info["diffusers"] = diffusers.__version__
        info["scikit_image"] = skimage.__version__
    except ImportError:
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


# ---------------------------------------------------------------------- the run


class Evaluation:
    """One evaluation run (see the module docstring); `run()` returns the metrics dict."""

    def __init__(self, config: EvalConfig, pipe=None):
        self.cfg = config
        self.pipe = pipe
        self.emotion_scales: dict = {}  # clip id -> emotion_scale of a detected emotion (its drawing strength)
        self.detections: dict = {}  # clip id -> (8,) probabilities the pipeline's classifier heard
        self.out = Path(config.output)
        self.log_lines: list[str] = []
        self.metrics: dict = {}
        self.warnings: list[str] = []

    def log(self, text: str) -> None:
        self.log_lines.append(text)
        if not self.cfg.quiet:
            print(f"[evaluate] {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ setup
    def _check_config(self):
        cfg = self.cfg
        if cfg.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
        unknown = [m for m in cfg.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; expected some of {', '.join(METHODS)}")
        if not cfg.methods and not cfg.t_start_sweep and not cfg.scheduler_sweep and cfg.emotion_data is None \
                and cfg.expression_data is None and not cfg.calm_speech:
            raise ValueError("nothing to evaluate: no methods, sweeps or emotion data")
        needs_pipe = any(m not in NO_MODEL_METHODS for m in cfg.methods) or cfg.t_start_sweep or cfg.scheduler_sweep
        if needs_pipe and cfg.pipeline is None and self.pipe is None:
            raise ValueError("--pipeline is required for the pipeline / gt_landmarks rows and the sweeps "
                             "(only --methods static,warp run without one)")
        if cfg.max_seconds is not None and not cfg.max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {cfg.max_seconds}")
        if cfg.max_clips is not None and cfg.max_clips < 1:
            raise ValueError(f"--max-clips must be >= 1, got {cfg.max_clips}")
        if cfg.samples < 0:
            raise ValueError(f"--samples must be >= 0, got {cfg.samples}")
        if cfg.emotion not in ("auto", "classifier", NO_EMOTION) and cfg.emotion not in EMOTIONS:
            raise ValueError(f"--emotion must be auto, classifier, {NO_EMOTION} or one of {', '.join(EMOTIONS)}; "
                             f"got {cfg.emotion!r}")
        from talking_head.schedulers.scheduling_sdedit import validate_t_start

        for t in (cfg.t_start, *cfg.t_start_sweep):
            validate_t_start(t)
        self.sampler = parse_sampler(cfg.sampler)
        self.sweep_samplers = [parse_sampler(s) for s in cfg.scheduler_sweep]

    def _load_pipeline(self):
        import torch

        cfg = self.cfg
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        from talking_head.argtypes import check_device

        check_device(device)
        self.device = device
        if cfg.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"--dtype must be float32, float16 or bfloat16, got {cfg.dtype!r}")
        self.pipeline_info = None
        if self.pipe is None and cfg.pipeline is not None:
            from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

            self.pipe = TalkingHeadPipeline.from_pretrained(cfg.pipeline)
        if self.pipe is not None:
            pipe = self.pipe
            pipe.set_progress_bar_config(disable=True)
            dtype = getattr(torch, cfg.dtype)
            if pipe.unet.dtype != dtype:
                pipe.to(device=device, dtype=dtype)
            else:
                pipe.to(device)
            self.pipe = pipe
            self.base_scheduler = pipe.scheduler
            comps = {k: type(v).__name__ for k, v in pipe.components.items() if v is not None}
            self.pipeline_info = {
                "path": str(cfg.pipeline) if cfg.pipeline else None,
                "sha256": sha256_dir(cfg.pipeline) if cfg.pipeline else None,
                "sample_size": pipe.sample_size,
                "components": comps,
                "clip_frames": pipe.config.clip_frames,
                "clip_overlap": pipe.config.clip_overlap,
                "unet_parameters": int(sum(p.numel() for p in pipe.unet.parameters())),
                "prediction_type": pipe.scheduler.config.get("prediction_type"),
            }
        # The pipeline outputs the photo (here: the stored face crop) at its own resolution: every method is
        # scored on the face crop at the stored size (256), or at --resolution.
        self.size = int(cfg.resolution or self.clips[0].size)
        if self.size < 7:
            raise ValueError(f"resolution {self.size} is too small to score (SSIM needs 7x7)")

    def _emotion_for(self, clip: EvalClip) -> tuple[str, str]:
        """(emotion name used to generate the clip, where it came from)."""
        mode = self.cfg.emotion
        if mode in EMOTIONS or mode == NO_EMOTION:
            return mode, "given"
        if mode == "auto" and clip.emotion is not None:
            return clip.emotion, "label"
        if self.pipe is not None and self.pipe.emotion_classifier is not None:
            probs = self.pipe.classify_emotion([clip.audio])
            self.detections[clip.clip_id] = probs[0]  # the calm-speech check reads them (unlabelled clips)
            heard = EMOTIONS[int(probs[0].argmax())]
            if not self.pipe.draws_detected_emotion(video=self.cfg.protocol == "dubbing"):
                # As the pipeline does for a video identity: what the classifier heard is reported, not drawn.
                return EMOTIONS[0], (f"classifier heard {heard} ({float(probs[0].max()):.2f}); "
                                     "a video keeps its own expression")
            # Drawn as the pipeline draws a detected emotion: only as strongly as the classifier is sure.
            names, strengths = self.pipe.detected_emotion(probs)
            self.emotion_scales[clip.clip_id] = strengths[0]
            return names[0], (f"classifier heard {heard} ({float(probs[0].max()):.2f}), drawn at strength "
                              f"{strengths[0]:.2f}")
        if mode == "classifier":
            raise ValueError("--emotion classifier: the pipeline has no emotion classifier")
        return NO_EMOTION, "default (no label, no classifier: the null class)"

    # ------------------------------------------------------------------ landmark model
    def _predicted_landmarks(self, clip: EvalClip) -> np.ndarray:
        """(F, 68, 2) the landmark model's prediction for the clip, in pixels of a 256x256 crop."""
        import torch

        from talking_head.constants import emotion_label

        pipe = self.pipe
        wave = torch.from_numpy(clip.audio)[None]
        ident = torch.from_numpy(clip.reference_landmarks / float(clip.size))[None].float()
        labels = torch.tensor([emotion_label(self.emotions[clip.clip_id][0])])
        scale = self.emotion_scales.get(clip.clip_id, 1.0)
        pred = pipe.predict_landmarks(wave, ident, clip.num_frames, clip.fps, labels, scale)[0].numpy()
        return (pred * LD_SIZE).astype(np.float32)

    def _evaluate_landmark_model(self) -> dict:
        """M-LD / F-LD, the mouth-opening correlation and the silent-frame opening
        (talking_head.evaluation.lip_motion) of the landmark model and of the identity landmarks repeated."""
        from talking_head.evaluation.lip_motion import clip_lip_motion, summarise_lip_motion

        rows, floor_rows = [], []
        for clip in self.clips:
            gt = clip.landmarks * (LD_SIZE / clip.size)
            keep = [i for i in clip.scored_indices if clip.landmark_valid[i]]
            pred = self.predicted[clip.clip_id]
            ident = np.broadcast_to(clip.reference_landmarks * (LD_SIZE / clip.size), gt.shape)
            gt_posed = posed_ground_truth(gt, ident[0], keep)
            for name, points, out in (("model", pred, rows), ("floor", ident, floor_rows)):
                m = landmark_distance(points[keep], gt[keep], "mouth") if keep else np.zeros(0)
                f = landmark_distance(points[keep], gt[keep], "face") if keep else np.zeros(0)
                m_posed = landmark_distance(points[keep], gt_posed[keep], "mouth") if keep else np.zeros(0)
                lip = clip_lip_motion(points, gt, clip.audio, SAMPLE_RATE, clip.fps, keep=np.asarray(keep, int))
                out.append({"clip_id": clip.clip_id, "frames": len(keep),
                            "m_ld": float(np.mean(m)) if len(keep) else None,
                            "m_ld_posed": float(np.mean(m_posed)) if len(keep) else None,
                            "f_ld": float(np.mean(f)) if len(keep) else None,
                            "mouth_opening_r": lip["r"], "silent_frames": lip["silent_frames"],
                            "silent_opening": lip["silent_opening_pred"],
                            "silent_opening_gt": lip["silent_opening_gt"],
                            "_lip": lip})

        def mean(rs, key):
            v = [r[key] for r in rs if r[key] is not None]
            return float(np.mean(v)) if v else None

        def summary(rs):
            lip = summarise_lip_motion([r.pop("_lip") for r in rs])
            return {"m_ld": mean(rs, "m_ld"), "m_ld_posed": mean(rs, "m_ld_posed"), "f_ld": mean(rs, "f_ld"),
                    "mouth_opening_r": lip["mouth_opening_r"], "r_clips": lip["r_clips"],
                    "silent_opening": lip["silent_opening"], "silent_opening_gt": lip["silent_opening_gt"],
                    "silent_opening_diff": lip["silent_opening_diff"], "silent_frames": lip["silent_frames"],
                    "clips": rs}

        return {
            "model": summary(rows),
            "identity_floor": summary(floor_rows),
            "frames": int(sum(r["frames"] for r in rows)),
            "m_ld_posed_definition": (
                "M-LD against the ground truth moved into the identity frame's head pose: each ground-truth frame "
                "mapped by the similarity transform (rotation, scale, translation; least squares) that takes its "
                "jaw ends and nose points (0, 1, 15, 16, 27-35: they move with the head, not with speech) onto the "
                "identity landmarks' (talking_head.head_pose.align_pose, no smoothing); an audio-only model is "
                "then not charged for the head's motion"),
            "lip_motion_definition": (
                "mouth opening = |p62 - p66| / |p0 - p16| (inner lips over face width); r = Pearson r of the "
                "predicted vs ground-truth opening over a clip's scored frames, averaged over clips (a constant "
                "prediction has r = 0); silent frames = frames whose audio RMS, and that of the 2 frames on each "
                "side, is > 25 dB below the clip's loudest frame or < -60 dBFS; silent opening = mean opening "
                "over all silent scored frames (talking_head.evaluation.lip_motion)"),
        }

    # ------------------------------------------------------------------ methods
    def _set_sampler(self, name: str):
        from talking_head.schedulers.scheduling_sdedit import scheduler_from_name

        self.pipe.scheduler = scheduler_from_name(name, self.base_scheduler)

    def _sample_writer(self, method: str, clip: EvalClip):
        """(panel callback, finish()) writing samples/<method>/<clip>.mp4 and a 3-frame .jpg strip."""
        from talking_head.video import VideoWriter

        folder = self.out / "samples" / method
        folder.mkdir(parents=True, exist_ok=True)
        writer = VideoWriter(folder / f"{clip.clip_id}.mp4", fps=clip.fps, audio=clip.audio, crf=28)
        picks = sorted({int(round(x)) for x in np.linspace(0, clip.num_frames - 1, 3 + 2)[1:-1]})
        strip = []
        state = {"i": 0}

        def write(panel):
            writer.write(panel)
            if state["i"] in picks:
                strip.append(panel)
            state["i"] += 1

        def finish(ok: bool):
            if not ok:
                writer._abort()
                return []
            writer.close()
            files = [str((folder / f"{clip.clip_id}.mp4").relative_to(self.out))]
            if strip:
                import PIL.Image

                jpg = folder / f"{clip.clip_id}.jpg"
                PIL.Image.fromarray(np.concatenate(strip, axis=0)).save(jpg, quality=88)
                files.append(str(jpg.relative_to(self.out)))
            return files

        return write, finish

    def run_method(self, method: str, t_start: int, sampler: tuple[str, int | None], samples: int = 0) -> dict:
        """Generate and score every clip with one method and setting; returns {"summary", "clips"}."""
        clip_results = []
        total_gen, total_seconds = 0.0, 0.0
        name, steps = sampler
        if method not in NO_MODEL_METHODS:
            self._set_sampler(name)
        for k, clip in enumerate(self.clips):
            driving = self._driving(method, clip)
            panel, finish = (None, None)
            if k < samples:
                panel, finish = self._sample_writer(method, clip)
            scorer = MeasuredClipScorer(clip, self.size, self.gt_cache, self.detector, driving=driving,
                                        panel_writer=panel, measures=self.face_measures)
            ok = False
            try:
                if method == "static":
                    self._score_static(clip, scorer)
                    gen_time = 0.0
                elif method == "warp":
                    gen_time = self._score_warp(clip, scorer)
                else:
                    gen_time = self._generate_clip(method, k, clip, t_start, steps, scorer, driving)
                summary = {**scorer.summary(), **summarise_measures(scorer.rows)}
                ok = True
            finally:
                files = finish(ok) if finish is not None else []
            summary["generation_seconds"] = gen_time
            summary["seconds_per_generated_second"] = gen_time / clip.seconds if method != "static" else None
            total_gen += gen_time
            total_seconds += clip.seconds
            clip_results.append({"clip_id": clip.clip_id, "emotion": self.emotions[clip.clip_id][0],
                                 "summary": summary, "rows": scorer.rows, "samples": files})
        with_ld = self.detector is not None
        summary = combine(clip_results, self.size, with_ld)
        summary.update(summarise_measures([r for c in clip_results for r in c["rows"]]))
        summary["generated_seconds"] = total_seconds
        summary["generation_seconds"] = total_gen
        summary["seconds_per_generated_second"] = total_gen / total_seconds if method != "static" else None
        if method not in NO_MODEL_METHODS:
            summary["sampler"] = sampler_label(name, steps, t_start)
            summary["t_start"] = t_start
        return {"summary": summary,
                "clips": [{"clip_id": c["clip_id"], "emotion": c["emotion"], **c["summary"], "samples": c["samples"]}
                          for c in clip_results],
                "frames": {c["clip_id"]: c["rows"] for c in clip_results}}

    def _driving(self, method: str, clip: EvalClip) -> np.ndarray | None:
        """The landmarks a method draws (pixels at LD_SIZE), shown in the sample panels; None if unknown."""
        if method == "pipeline":
            return self.predicted.get(clip.clip_id)
        if method in ("gt_landmarks", "warp"):
            return clip.filled_landmarks() * (LD_SIZE / clip.size)
        if method == "static":
            return np.broadcast_to(clip.reference_landmarks * (LD_SIZE / clip.size), (clip.num_frames, 68, 2))
        return None

    def _score_static(self, clip: EvalClip, scorer: ClipScorer) -> None:
        """The floor: the reference frame held still (photo) or its lower face pasted into every frame (dubbing)."""
        if self.cfg.protocol == "dubbing":
            from talking_head.evaluation.dubbing import frozen_mouth_frames

            for frame in frozen_mouth_frames(clip, getattr(self.pipe, "mask_noise", None)):
                scorer.add(frame)
            return
        frame = identity_crop(clip.reference, self.size)
        pts = self.detector(frame) if self.detector is not None else None
        for _ in range(clip.num_frames):
            scorer.add(frame, generated_landmarks=pts)

    def _score_warp(self, clip: EvalClip, scorer: ClipScorer) -> float:
        """The no-learning probe (DESIGN 8.1): the reference's lower face warped onto each frame's ground-truth
        landmarks, composited as the floor is, on the still reference frame (photo) or on every frame of the clip
        (dubbing). Returns the seconds spent making the frames (scoring excluded)."""
        from talking_head.identity import StillIdentity, VideoIdentity, load_photo
        from talking_head.warp import warped_frames

        started = time.perf_counter()
        targets = clip.filled_landmarks()
        if self.cfg.protocol == "dubbing":
            from talking_head.evaluation.dubbing import clip_video

            frames, _ = clip_video(clip)
            source = VideoIdentity(frames, clip.fps, max_size=max(frames[0].shape[:2]), landmarks=targets,
                                   reference=clip.reference_index)
        else:
            source = StillIdentity(load_photo(clip.reference, clip.reference_landmarks, crop_face=False,
                                              max_size=max(64, *clip.reference.shape[:2])))
        scoring = 0.0
        try:
            for frame in warped_frames(source, targets, getattr(self.pipe, "mask_noise", None)):
                t0 = time.perf_counter()
                scorer.add(frame)
                scoring += time.perf_counter() - t0
        finally:
            source.close()
        return time.perf_counter() - started - scoring

    def _generate_clip(self, method: str, k: int, clip: EvalClip, t_start: int, steps: int | None,
                       scorer: ClipScorer, driving: np.ndarray | None) -> float:
        """Run the pipeline on clip k (seed + k), its frames going straight to `scorer`; returns the seconds
        spent generating (scoring excluded)."""
        import torch

        started = time.perf_counter()
        given = clip.filled_landmarks() if method == "gt_landmarks" else None  # pixels of the stored crop
        generator = torch.Generator(device="cpu").manual_seed(self.cfg.seed + k)
        kwargs = dict(sample_rate=SAMPLE_RATE, identity_landmarks=clip.reference_landmarks,
                      emotion=self.emotions[clip.clip_id][0], t_start=t_start,
                      num_inference_steps=steps, guidance_scale=self.cfg.guidance_scale,
                      fps=clip.fps, generator=generator, output_type=None, frames_callback=scorer,
                      emotion_scale=self.emotion_scales.get(clip.clip_id, 1.0))
        if self.cfg.protocol == "dubbing":
            from talking_head.evaluation.dubbing import clip_video

            frames, lmk = clip_video(clip)
            kwargs.update(identity_landmarks=lmk, reference_frame=clip.reference_index)
            out = self.pipe(clip.audio, frames, landmarks=given, **kwargs)
        else:
            out = self.pipe(clip.audio, clip.reference, landmarks=given, crop_face=False, **kwargs)
        gen_time = time.perf_counter() - started - scorer.busy
        if method == "pipeline" and driving is not None and self.cfg.protocol == "photo":
            diff = float(np.abs(out.landmarks[0] * (LD_SIZE / clip.size) - driving).max())
            if diff > 1e-2:
                self.warnings.append(f"{clip.clip_id}: the pipeline's landmarks differ from the "
                                     f"separately computed prediction by up to {diff:.3g} px")
        return gen_time

    # ------------------------------------------------------------------ emotion
    def _emotion_model(self):
        """(classifier, what it reads: its feature extractor or, for a `WhisperEmotionHead`, the audio encoder,
        where it came from) of --emotion-classifier, else the pipeline's; (None, None, None) when there is none."""
        cfg = self.cfg
        if getattr(self, "_emotion_model_cache", None) is not None:
            return self._emotion_model_cache
        model = reader = source = None
        if cfg.emotion_classifier is not None:
            import json

            from talking_head.models.emotion_head import WhisperEmotionHead, WhisperEmotionHeadConfig

            config_file = Path(cfg.emotion_classifier) / "config.json"
            kind = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
            if kind == WhisperEmotionHeadConfig.model_type:
                model = WhisperEmotionHead.from_pretrained(cfg.emotion_classifier).eval()
                reader = self._audio_encoder_for(Path(cfg.emotion_classifier))
            else:
                from talking_head.models.emotion_classifier import (load_emotion_classifier,
                                                                    load_emotion_feature_extractor)

                model = load_emotion_classifier(cfg.emotion_classifier)
                reader = load_emotion_feature_extractor(cfg.emotion_classifier, model)
            source = str(cfg.emotion_classifier)  # as given: a report names no machine path
        elif self.pipe is not None and self.pipe.emotion_classifier is not None:
            from talking_head.models.emotion_head import WhisperEmotionHead

            model, source = self.pipe.emotion_classifier, "pipeline"
            reader = self.pipe.audio_encoder if isinstance(model, WhisperEmotionHead) else self.pipe.feature_extractor
        self._emotion_model_cache = (model, reader, source) if model is not None else None
        return model, reader, source

    def _audio_encoder_for(self, head_folder: Path):
        """The audio encoder a head given by --emotion-classifier reads: the pipeline's, else the `audio_encoder`
        folder beside the head's (a pipeline folder's)."""
        if self.pipe is not None and self.pipe.audio_encoder is not None:
            return self.pipe.audio_encoder
        beside = head_folder.parent / "audio_encoder"
        if not beside.is_dir():
            raise ValueError(f"--emotion-classifier {head_folder} is a head on the audio encoder's states; give "
                             "--pipeline with an audio_encoder, or a head inside a pipeline folder")
        from talking_head.models.whisper_encoder import WhisperSpeechEncoder

        return WhisperSpeechEncoder.from_pretrained(beside).float()

    def _evaluate_emotion(self):
        cfg = self.cfg
        model, extractor, source = self._emotion_model()
        if model is None:
            return {"skipped": "no emotion classifier (the pipeline has none and --emotion-classifier was not given)"}
        root = cfg.emotion_data or cfg.data
        split = cfg.emotion_split or cfg.split
        try:
            result = evaluate_emotion(model, extractor, root, split)
        except ValueError:
            if cfg.emotion_data is None:  # the video set simply has no emotion labels
                return {"skipped": f"no emotion-labelled {split!r} audio in {root} (pass --emotion-data)"}
            raise
        result["classifier"] = source
        if cfg.emotion_cross_corpus is not None:
            from talking_head.evaluation.calm_speech import parse_data_spec

            root, cross_split = parse_data_spec(cfg.emotion_cross_corpus)
            result["cross_corpus"] = evaluate_emotion(model, extractor, root, cross_split, present_only=True)
        return result

    def _evaluate_calm_speech(self) -> dict | None:
        """The calm-speech check (talking_head.evaluation.calm_speech) on --calm-speech's sets, else on the
        evaluated clips the pipeline's classifier heard (clips without an emotion label); None when neither."""
        from talking_head.evaluation.calm_speech import calm_speech_check, summarise
        from talking_head.evaluation.emotion import emotion_probabilities
        from talking_head.models.emotion_head import DEFAULT_DRAW_THRESHOLD

        cfg = self.cfg
        if cfg.calm_speech:
            model, reader, source = self._emotion_model()
            if model is None:
                return {"skipped": "no emotion classifier (the pipeline has none and --emotion-classifier was not "
                                   "given)"}
            threshold = float(getattr(model.config, "draw_threshold", DEFAULT_DRAW_THRESHOLD))
            result = calm_speech_check(lambda waves: emotion_probabilities(model, reader, waves), threshold,
                                       cfg.calm_speech, log=self.log)
            result["classifier"] = source
            return result
        if self.detections:
            name = Path(cfg.data).name + f":{cfg.split}"
            items = [{"data": name, "clip_id": c, "label": NULL_EMOTION, "probs": p} for c, p in self.detections.items()]
            result = summarise(items, self.pipe.emotion_draw_threshold)
            result["classifier"] = "pipeline"
            return result
        return None

    def _evaluate_expression(self) -> dict:
        """Emotion in the face (talking_head.evaluation.expression): the landmark expression classifier's
        accuracy on real held-out expressions (reference) and on the landmark model's expressions (score), and
        a contact sheet of the demo photo rendered with each emotion."""
        from talking_head.evaluation.expression import contact_sheet, expression_evaluation

        cfg = self.cfg
        t0 = time.perf_counter()
        predict = self.pipe.predict_landmarks if self.pipe is not None else None
        res = expression_evaluation(cfg.expression_data, predict, emotion_scale=cfg.expression_scale, seed=cfg.seed)
        res["data"] = str(cfg.expression_data)
        self.log(f"expression: reference accuracy {res['reference']['accuracy']:.3f} on "
                 f"{res['classifier']['test_clips']} held-out clips (chance {res['chance']:.3f})"
                 + (f"; generated {res['generated']['accuracy']:.3f}" if "generated" in res else ""))
        if self.pipe is not None and cfg.expression_sheet:
            import torch

            from importlib.resources import files

            assets = Path(str(files("talking_head.assets")))
            photo, audio = assets / "demo_identity.jpg", assets / "demo_speech.wav"
            if photo.is_file() and audio.is_file():
                name, steps = self.sampler
                self._set_sampler(name)
                sheet_file = self.out / "expression_contact_sheet.png"
                _, frame = contact_sheet(self.pipe, str(photo), str(audio), emotion_scale=cfg.expression_scale,
                                         output=sheet_file, num_inference_steps=steps, t_start=cfg.t_start,
                                         generator=torch.Generator().manual_seed(cfg.seed), max_size=512)
                self.pipe.scheduler = self.base_scheduler
                res["contact_sheet"] = {"file": sheet_file.name, "photo": photo.name, "audio": audio.name,
                                        "frame": frame}
            else:
                self.warnings.append("expression contact sheet skipped: the demo photo / speech are not installed")
        res["seconds"] = time.perf_counter() - t0
        return res

    # ------------------------------------------------------------------ main
    def run(self) -> dict:
        """Every stage the config asks for, in order; metrics.json is rewritten after each, so a long run that
        stops part-way leaves what it had measured."""
        self.started = time.perf_counter()
        self._check_config()
        self.clips, skipped = load_clips(self.cfg.data, self.cfg.split, self.cfg.max_clips, self.cfg.max_seconds)
        self._load_pipeline()
        self.out.mkdir(parents=True, exist_ok=True)
        self._start_detector()
        self.emotion_scales, self.detections = {}, {}
        self.emotions = {c.clip_id: self._emotion_for(c) for c in self.clips}
        self.metrics.update(self._header(skipped))
        self.frames_out, self.runs, self.predicted = {}, {}, {}
        if self.pipe is not None:
            self._run_landmark_model()
        self._run_methods()
        self._run_sweeps()
        if self.pipe is not None:
            self.pipe.scheduler = self.base_scheduler
        self._run_emotion()
        return self._finish()

    def _save(self) -> None:
        self.metrics["seconds"] = time.perf_counter() - self.started
        from talking_head.evaluation.report import write_json

        write_json(self.out / "metrics.json", self.metrics)
        write_json(self.out / "frames.json", self.frames_out)

    def _start_detector(self) -> None:
        """dlib's landmark detector for M-LD / F-LD (a warning and no LD when dlib is missing)."""
        self.detector = None
        if self.cfg.landmarks:
            try:
                self.detector = LandmarkDetector()
            except ImportError as err:
                self.warnings.append(f"landmark distances skipped: {err}")
        self.gt_cache = GroundTruthLandmarks(self.detector)
        # Identity similarity (dlib's recognition network) goes with the landmark distances (--no-landmarks).
        self.face_measures = FaceMeasures(self.size, enabled=self.cfg.landmarks)
        if self.face_measures.note and self.cfg.landmarks:
            self.warnings.append(self.face_measures.note)
            self.log(self.face_measures.note)
        self.log(f"{len(self.clips)} {self.cfg.split} clips, {sum(c.num_frames for c in self.clips)} frames "
                 f"({sum(c.seconds for c in self.clips):.1f} s) of {self.cfg.data}; scoring at {self.size}x{self.size}")

    def _header(self, skipped) -> dict:
        """metrics.json's description of the run: config, pipeline, data, resolution, machine."""
        from talking_head.evaluation.report import PAPER_TABLE1, PAPER_TABLE2

        cfg = self.cfg
        return {
            "format": FORMAT, "version": VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": cfg.command or config_to_command(cfg), "note": cfg.note,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                       if k not in ("command", "quiet")},
            "pipeline": self.pipeline_info,
            "data": {"path": str(cfg.data), "split": cfg.split,
                     "manifest_sha256": sha256_file(Path(cfg.data) / "manifest.jsonl"),
                     "clips": [{"clip_id": c.clip_id, "frames": c.num_frames, "of_frames": int(c.row["num_frames"]),
                                "fps": c.fps, "seconds": c.seconds, "reference_frame": c.reference_index,
                                "emotion": self.emotions[c.clip_id][0], "emotion_source": self.emotions[c.clip_id][1]}
                               for c in self.clips],
                     "skipped": [{"clip_id": c, "reason": w} for c, w in skipped],
                     "frames": sum(c.num_frames for c in self.clips),
                     "scored_frames": sum(len(c.scored_indices) for c in self.clips)},
            "resolution": {"psnr_ssim": self.size, "landmarks": LD_SIZE if self.detector else None},
            "machine": machine_info(getattr(self, "device", "cpu")),
            "methods": {}, "landmark_model": None, "emotion_classifier": None,
            "sweeps": {}, "paper": {"table1": PAPER_TABLE1, "table2": PAPER_TABLE2},
            "warnings": self.warnings,
        }  # fmt: skip

    def _run_landmark_model(self) -> None:
        t0 = time.perf_counter()
        self.predicted = {c.clip_id: self._predicted_landmarks(c) for c in self.clips}
        lm = self.metrics["landmark_model"] = self._evaluate_landmark_model()
        lm["seconds"] = time.perf_counter() - t0
        self.log(f"landmark model: M-LD {_fmt(lm['model']['m_ld'])} (posed {_fmt(lm['model']['m_ld_posed'])}) "
                 f"F-LD {_fmt(lm['model']['f_ld'])} "
                 f"(identity repeated: {_fmt(lm['identity_floor']['m_ld'])} / {_fmt(lm['identity_floor']['f_ld'])})")
        self._save()

    def _run_once(self, method, t, sampler, samples=0) -> dict:
        """Each (method, t_start, sampler) setting runs once; a sweep row equal to a method row reuses it."""
        name, steps = sampler
        key = method if method in NO_MODEL_METHODS else f"{method} t_start={t} sampler={sampler_label(name, steps, t)}"
        if key not in self.runs:
            res = self.run_method(method, int(t), sampler, samples=samples)
            self.frames_out[key] = res.pop("frames")
            self.runs[key] = res
        else:
            self.log(f"{key}: same setting as above, reused")
        return {"summary": dict(self.runs[key]["summary"]), "clips": self.runs[key]["clips"], "run": key}

    def _run_methods(self) -> None:
        cfg = self.cfg
        for method in cfg.methods:
            self.log(f"{method}: {len(self.clips)} clips ...")
            res = self._run_once(method, cfg.t_start, self.sampler, samples=cfg.samples)
            res["label"] = (DUBBING_LABELS if cfg.protocol == "dubbing" else METHOD_LABELS)[method]
            self.metrics["methods"][method] = res
            self.log(f"{method}: " + _summary_line(res["summary"]))
            self._save()

    def _run_sweeps(self) -> None:
        cfg, sweeps = self.cfg, self.metrics["sweeps"]
        if cfg.t_start_sweep:
            rows = []
            for t in cfg.t_start_sweep:
                res = self._run_once("pipeline", int(t), self.sampler)
                rows.append({**res["summary"], "t_start": int(t), "clips": res["clips"], "run": res["run"]})
                self.log(f"t_start {t}: " + _summary_line(res["summary"]))
                sweeps["t_start"] = {"sampler": cfg.sampler, "rows": rows}
                self._save()
        if self.sweep_samplers:
            rows = []
            for spec, (name, steps) in zip(cfg.scheduler_sweep, self.sweep_samplers):
                res = self._run_once("pipeline", cfg.t_start, (name, steps))
                rows.append({**res["summary"], "sampler": name, "steps": effective_steps(steps, cfg.t_start),
                             "clips": res["clips"], "run": res["run"]})
                self.log(f"sampler {spec}: " + _summary_line(res["summary"]))
                sweeps["scheduler"] = {"t_start": cfg.t_start, "rows": rows}
                self._save()

    def _run_emotion(self) -> None:
        """The expression score of generated landmarks, then the classifier (when there is one to score)."""
        cfg, m = self.cfg, self.metrics
        if cfg.expression_data is not None:
            m["expression"] = self._evaluate_expression()
            self._save()
        if cfg.emotion_data is None and cfg.emotion_classifier is None and self.pipe is None:
            return
        e = m["emotion_classifier"] = self._evaluate_emotion()
        if "accuracy" in e:
            self.log(f"emotion classifier: accuracy {e['accuracy']:.3f} on {e['n']} utterances")
            if "cross_corpus" in e:
                x = e["cross_corpus"]
                self.log(f"emotion classifier, cross-corpus {x['data']}: accuracy {x['accuracy']:.3f} on "
                         f"{x['n']} utterances ({len(x['classes'])} classes)")
        self._save()
        c = self._evaluate_calm_speech()
        if c is not None:
            m["calm_speech"] = c
            if c.get("clips"):
                self.log(f"calm speech: {100 * c['neutral_share']:.1f} % of {c['clips']} calm clips rendered neutral "
                         "or nearly so")
            if c.get("emotional"):
                self.log(f"emotional clips: {100 * c['emotional']['right_drawn_share']:.1f} % of "
                         f"{c['emotional']['clips']} drawn with their own emotion")

    def _finish(self) -> dict:
        """The detector's cost, the verdict, the report."""
        from talking_head.evaluation.report import verdict, write_report

        m = self.metrics
        if self.detector is not None:
            m["landmark_detection"] = {"calls": self.detector.calls, "seconds": self.detector.seconds}
        m["verdict"] = verdict(m)
        if m["verdict"]:
            self.log(f"verdict: the pipeline {m['verdict']['line']}")
        self._save()
        m["files"] = write_report(self.out, m)
        self._save()
        self.log(f"wrote {self.out / 'report.md'} and {self.out / 'metrics.json'} in {m['seconds']:.0f} s")
        return m


def posed_ground_truth(gt: np.ndarray, identity: np.ndarray, keep) -> np.ndarray:
    """(F, 68, 2) ground-truth landmarks, each frame moved into the identity's head pose (align_pose on the points
    that move with the head, not with speech); frames outside `keep` (no face) are returned unchanged."""
    import torch

    from talking_head.head_pose import align_pose

    out = np.array(gt, dtype=np.float64, copy=True)
    if len(keep):
        idx = np.asarray(keep, dtype=np.int64)
        moved = align_pose(torch.from_numpy(out[idx])[None], torch.from_numpy(np.asarray(identity, np.float64))[None])
        out[idx] = moved[0].numpy()
    return out


def evaluate_emotion(model, extractor, root, split, present_only: bool = False):
    from talking_head.evaluation.emotion import evaluate_emotion_classifier

    return evaluate_emotion_classifier(model, extractor, root, split, present_only=present_only)


def _fmt(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _summary_line(s: dict) -> str:
    parts = [f"PSNR {_fmt(s.get('psnr'))}", f"SSIM {_fmt(s.get('ssim'), 3)}"]
    if "m_ld" in s:
        parts += [f"M-LD {_fmt(s.get('m_ld'))}", f"F-LD {_fmt(s.get('f_ld'))}",
                  f"face found {_fmt(100 * s['face_detection_rate'] if s.get('face_detection_rate') is not None else None, 0)}%"]
    if s.get("seconds_per_generated_second") is not None:
        parts.append(f"{s['seconds_per_generated_second']:.1f} s per generated s")
    return ", ".join(parts)


def evaluate(config: EvalConfig | None = None, pipe=None, **kwargs) -> dict:
    """Run the evaluation; `EvalConfig` fields as keyword arguments, or a config. Returns metrics.json's content."""
    if config is None:
        config = EvalConfig(**kwargs)
    elif kwargs:
        raise ValueError("give either a config or keyword arguments, not both")
    return Evaluation(config, pipe=pipe).run()
