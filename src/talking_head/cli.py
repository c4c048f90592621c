"""`talking-head`: the command line.

    talking-head init --preset tiny --output DIR        a randomly initialised, loadable pipeline
    talking-head generate --pipeline DIR --audio speech.wav --identity photo.png --output out.mp4
    talking-head demo --output out/demo.mp4             the bundled clip and photo, end to end

Errors in what the user gave (a missing file, a bad argument) print one line
and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from talking_head.argtypes import positive_float, positive_int
from talking_head.cli_common import DEMO_SAMPLER, DEMO_STEPS, UsageError, assets_dir, emotion_line
from talking_head.constants import DEFAULT_FPS, EMOTIONS, NO_EMOTION

# UsageError, DEMO_SAMPLER, DEMO_STEPS and assets_dir are shared with the commands this module wires (app, train),
# so they live below it in cli_common; they stay importable from here, as before (never from inside the package).
_assets_dir = assets_dir  # the former name: tests and scripts import it from talking_head.cli


class _Parser(argparse.ArgumentParser):
    """argparse answering a bad argument with one line, not the whole usage (subcommands inherit it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _emotion_scale_arg(text: str) -> float:
    """--emotion-scale: a finite number >= 0 (the pipeline's emotion_scale)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"emotion_scale must be a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"emotion_scale must be a finite number >= 0 (0 = neutral, 1 = as "
                                         f"learned, > 1 = exaggerated), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="talking-head", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a randomly initialised pipeline of a preset size")
    p.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    p.add_argument("--output", required=True, help="pipeline directory to write")
    p.add_argument("--sample-size", type=positive_int, default=None, help="frame size (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-emotion-classifier", action="store_true",
                   help="leave the classifier out (generate then uses --emotion, or the null class)")

    for name, help_text in (("generate", "generate a talking-head MP4 from speech and a photo"),
                            ("demo", "generate the demo video from the bundled speech clip and photo")):
        p = sub.add_parser(name, help=help_text)
        if name == "generate":
            p.add_argument("--pipeline", default=None,
                           help="pipeline directory (save_pretrained / init; default: the bundled trained one)")
            p.add_argument("--audio", required=True, help="speech: wav, flac, mp3, m4a or a video file")
            p.add_argument("--identity", required=True,
                           help="photo of the person (png, jpg, ...), or a video of them to dub (mp4, mov, mkv, ...): "
                                "its frames are kept and only the lower face is redrawn from the new speech")
            p.add_argument("--reference-frame", type=int, default=None,
                           help="with a video identity: the frame whose mouth is the texture reference "
                                "(default: the frame with the most closed mouth)")
            p.add_argument("--output", required=True, help="MP4 to write")
        else:
            p.add_argument("--pipeline", default=None,
                           help="pipeline directory (default: the bundled one, or a fresh tiny one)")
            p.add_argument("--output", default="out/demo.mp4", help="MP4 to write")
        p.add_argument("--emotion", choices=[*EMOTIONS, NO_EMOTION], default=None,
                       help="emotion to show (default: detected from the audio by the pipeline's classifier; "
                            "none, the unconditional output, when it has none)")
        p.add_argument("--emotion-scale", type=_emotion_scale_arg, default=1.0,
                       help="how much of the emotion the face shows: 0 = neutral, 1 = as learned (default), "
                            "> 1 = exaggerated (the landmark model's emotion minus its neutral, scaled)")
        p.add_argument("--t-start", type=positive_int, default=300, help="SDEdit start timestep (paper: 300)")
        p.add_argument("--steps", type=positive_int, default=None if name == "generate" else DEMO_STEPS,
                       help=f"denoising steps (default: {DEMO_STEPS} for dpm, t-start for ddpm, 50 for ddim)")
        # dpm:10 by default, as the demo, the app and every report: measured as good as 300 DDPM steps and ~30x
        # faster (docs/results/lower-face-renderer/sweeps/).
        p.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm"], default=DEMO_SAMPLER,
                       help=f"sampler (default {DEMO_SAMPLER}; ddpm is the paper's, 300 steps from t-start 300)")
        p.add_argument("--guidance-scale", type=float, default=1.0, help="emotion guidance; 1 = off")
        p.add_argument("--fps", type=positive_float, default=DEFAULT_FPS)
        p.add_argument("--max-size", type=positive_int, default=1024,
                       help="longest side of the output video in pixels; larger photos are scaled down (default 1024)")
        p.add_argument("--crop", action="store_true",
                       help="write the square face crop instead of the whole photo")
        p.add_argument("--stream", action="store_true",
                       help="print the live real-time factor (seconds of video made per second) as frames are "
                            "written; frames always go to the MP4 as they are made")
        p.add_argument("--min-size", type=positive_int, default=256,
                       help="scale smaller frames up to this side in the MP4, for viewing (default 256; 1 = off)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when present)")
        p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    # Data preparation and evaluation commands live with their code.
    from talking_head.data.prepare import add_prepare_parser
    from talking_head.data.preview import add_preview_parser
    from talking_head.evaluation.cli import add_evaluate_parser

    add_prepare_parser(sub)
    add_preview_parser(sub)
    add_evaluate_parser(sub)
    from talking_head.train_command import add_train_parser

    add_train_parser(sub)  # talking-head train: your own person, one command
    _add_app_parser(sub)
    return parser


def cmd_init(args) -> int:
    from talking_head.presets import build_pipeline
    from talking_head.utils import save_pipeline_atomic

    pipe = build_pipeline(args.preset, sample_size=args.sample_size, seed=args.seed,
                          with_emotion_classifier=not args.no_emotion_classifier)
    out = save_pipeline_atomic(pipe, args.output)
    print(f"wrote a randomly initialised {args.preset} pipeline ({pipe.sample_size}x{pipe.sample_size}) to {out}")
    return 0


def _generate(args, pipeline_dir, audio, identity, output) -> int:
    import torch

    from talking_head.audio import load_audio
    from talking_head.identity import is_video
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
    from talking_head.schedulers.scheduling_sdedit import scheduler_from_name
    from talking_head.video import VideoWriter

    out_path = Path(output)
    if out_path.suffix.lower() != ".mp4":
        raise UsageError(f"--output must end in .mp4, got {output}")
    if out_path.exists() and out_path.is_dir():
        raise UsageError(f"--output {output} is a directory")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a torch device") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU")
    dtype = getattr(torch, args.dtype)

    waveform = load_audio(audio, name="audio")  # decode once: the pipeline and the MP4 share it
    pipe = TalkingHeadPipeline.from_pretrained(pipeline_dir)
    pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler)
    steps = args.steps or {"ddpm": None, "ddim": 50, "dpm": DEMO_STEPS}[args.scheduler]
    pipe.to(device=device)
    if pipe.unet.dtype != dtype:  # diffusers warns on every dtype cast, even to the dtype it has
        pipe.to(dtype=dtype)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)

    started = time.perf_counter()
    min_size = args.min_size if args.min_size > 1 else None
    live = _LiveRate(args.fps, started) if getattr(args, "stream", False) else None

    def write(frames):
        writer.write(frames[0])
        if live is not None:
            live(frames.shape[1])

    with VideoWriter(out_path, fps=args.fps, audio=waveform, min_size=min_size) as writer:
        result = pipe(waveform, identity, sample_rate=16000, emotion=args.emotion, t_start=args.t_start,
                      num_inference_steps=steps, guidance_scale=args.guidance_scale, fps=args.fps,
                      emotion_scale=getattr(args, "emotion_scale", 1.0),
                      max_size=args.max_size, output_crop=args.crop, generator=generator, output_type=None,
                      reference_frame=getattr(args, "reference_frame", None),
                      frames_callback=write, frames_callback_dtype="uint8")
    if live is not None:
        live.done()
    seconds = time.perf_counter() - started
    frames = result.landmarks.shape[1]
    kept = not args.emotion and result.emotion_probs is not None and not pipe.draws_detected_emotion(is_video(identity))
    print(f"emotion: {emotion_line(result, given=bool(args.emotion))}"
          + (" (a video keeps its own expression; --emotion NAME draws one)" if kept else ""))
    how = "given" if args.emotion else ("detected" if result.emotion_probs is not None else "no classifier")
    height, width = writer.frame_size or (0, 0)
    print(f"wrote {out_path}: {frames} frames of {width}x{height} at {args.fps:g} fps ({frames / args.fps:.2f} s), "
          f"emotion {result.emotion[0]} ({how}), {seconds:.1f} s on {device}"
          + (f"; {result.frames_without_face[0]} frames without a face passed through unchanged"
             if result.frames_without_face and result.frames_without_face[0] else ""))
    return 0


class _LiveRate:
    """--stream: one status line on stderr, rewritten as frames arrive: frames written, real-time factor."""

    def __init__(self, fps: float, started: float):
        self.fps, self.started, self.frames, self.first = fps, started, 0, None

    def __call__(self, n: int) -> None:
        now = time.perf_counter()
        self.first = self.first if self.first is not None else now - self.started
        self.frames += n
        rate = self.frames / self.fps / max(now - self.started, 1e-9)
        print(f"\rstreaming: {self.frames} frames ({self.frames / self.fps:.1f} s of video), real-time factor "
              f"{rate:.2f}, first frame after {self.first:.2f} s", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        print(file=sys.stderr, flush=True)


def _bundled_pipeline() -> Path | None:
    bundled = assets_dir() / "pipeline"
    return bundled if (bundled / "model_index.json").is_file() else None


def cmd_generate(args) -> int:
    pipeline_dir = args.pipeline or _bundled_pipeline()
    if pipeline_dir is None:
        raise UsageError("no --pipeline given and no trained pipeline is bundled in talking_head/assets/pipeline")
    return _generate(args, pipeline_dir, args.audio, args.identity, args.output)


def cmd_demo(args) -> int:
    from skimage import data

    assets = assets_dir()
    pipeline_dir = args.pipeline
    speech, identity = assets / "demo_speech.wav", assets / "demo_identity.jpg"
    if not (speech.is_file() and identity.is_file()):
        # The bundled person is missing (a trimmed install): the synthetic voice and a public-domain photo.
        speech, identity = assets / "speech_demo.wav", data.astronaut()
    if pipeline_dir is None:
        bundled = _bundled_pipeline()
        if bundled is not None:
            pipeline_dir = str(bundled)
        else:
            # No trained pipeline ships yet: make (once) and use a random tiny one, and say so.
            pipeline_dir = os.path.join(os.path.dirname(os.path.abspath(args.output)) or ".", "demo-tiny-pipeline")
            if not os.path.isfile(os.path.join(pipeline_dir, "model_index.json")):
                from talking_head.presets import build_pipeline
                from talking_head.utils import save_pipeline_atomic

                save_pipeline_atomic(build_pipeline("tiny"), pipeline_dir)
            print(f"note: no trained pipeline is bundled yet; using the UNTRAINED tiny pipeline in {pipeline_dir} "
                  "(the video shows the tooling end to end, not a trained result)", file=sys.stderr)
    identity = identity if not isinstance(identity, Path) else str(identity)
    return _generate(args, pipeline_dir, str(speech), identity, args.output)


def _add_app_parser(sub) -> None:
    p = sub.add_parser("app", help="serve a web page to try it: a photo or a video and speech in, the MP4 out")
    p.add_argument("--pipeline", default=None, help="pipeline directory (default: the bundled trained one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=7860)
    p.add_argument("--max-seconds", type=positive_float, default=60.0,
                   help="longest speech (and dubbing video) the page accepts, in seconds (default 60)")
    p.add_argument("--max-size", type=positive_int, default=1024,
                   help="longest side of the output video in pixels (default 1024)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.set_defaults(handler=cmd_app)


def cmd_app(args) -> int:
    pipeline_dir = args.pipeline or _bundled_pipeline()
    if pipeline_dir is None:
        raise UsageError("no --pipeline given and no trained pipeline is bundled in talking_head/assets/pipeline")
    try:
        from talking_head.app import serve
    except ModuleNotFoundError as err:
        raise UsageError(f"the app needs {err.name}: pip install -e '.[app]' (make install does)") from None
    return serve(pipeline_dir, host=args.host, port=args.port, max_seconds=args.max_seconds,
                 max_size=args.max_size, device=args.device)


def _exit_on_sigterm(signum, frame):
    # Raise instead of dying, so every `with` block (MP4 writers, dataset writers) removes its temp files.
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main_thread else None
    try:
        return _run(argv)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"init": cmd_init, "generate": cmd_generate, "demo": cmd_demo}
    handler = handlers.get(args.command) or args.handler  # data commands set `handler` themselves
    try:
        return handler(args)
    except (UsageError, ValueError, FileNotFoundError, ImportError, NotADirectoryError, IsADirectoryError,
            RuntimeError) as err:
        print(f"talking-head {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"talking-head {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
