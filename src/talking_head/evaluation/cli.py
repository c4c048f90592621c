"""`talking-head evaluate`: the evaluation protocol of DESIGN.md section 5 as one rerunnable command.

    talking-head evaluate --pipeline DIR --data PREPARED [--split test] [--output REPORT_DIR]
        [--methods static,warp,pipeline,gt_landmarks] [--max-clips N] [--max-seconds S]
        [--sampler ddpm|ddim[:N]|dpm[:N]] [--base-t-start 300]
        [--t-start 100,200,300,400,500,1000] [--scheduler ddpm:300,ddim:50,dpm:25]
        [--emotion-data PREPARED] [--samples 2] [--note TEXT]
        [--expression-data PREPARED_CREMAD] [--expression-scale 1] [--no-expression-sheet]
"""

from __future__ import annotations

import argparse
import sys

from talking_head.argtypes import non_negative_int, positive_float, positive_int
from talking_head.constants import EMOTIONS


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _str_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand to `subparsers`; it sets `handler=cmd_evaluate`."""
    p = subparsers.add_parser(
        "evaluate", help="score a pipeline on a prepared dataset's test clips (PSNR, SSIM, M-LD, F-LD, ...)",
        description="Generate every test clip from its audio and reference frame, score it against the "
                    "ground truth (PSNR/SSIM at the pipeline's resolution, dlib M-LD/F-LD at 256x256), with the "
                    "static-frame floor and the ground-truth-landmark ceiling, optional t_start and sampler "
                    "sweeps and the emotion classifier; writes metrics.json, report.md, plots and sample videos.")
    p.add_argument("--pipeline", default=None,
                   help="pipeline directory (save_pretrained / talking-head init); optional with --methods static,warp")
    p.add_argument("--data", required=True, help="prepared dataset folder (talking-head prepare)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--protocol", choices=("photo", "dubbing"), default="photo",
                   help="photo (default): each clip's first frame is the identity, held still, floor = that frame "
                        "repeated; dubbing: the clip itself is the identity video, its lower face regenerated from "
                        "its audio, floor = the reference's lower face pasted into every frame (DESIGN 7.5)")
    p.add_argument("--output", default="evaluation-report", help="report folder (default: ./evaluation-report)")
    p.add_argument("--methods", type=_str_list, default=("static", "warp", "pipeline", "gt_landmarks"),
                   help="comma-separated rows: static (floor), warp (the reference's lower face warped onto the "
                        "ground-truth landmarks, no model), pipeline, gt_landmarks (ceiling); default all")
    p.add_argument("--max-clips", type=positive_int, default=None, help="evaluate at most this many clips")
    p.add_argument("--max-seconds", type=positive_float, default=None,
                   help="evaluate only the first S seconds of each clip (default: whole clips)")
    p.add_argument("--sampler", default="ddpm",
                   help="sampler of the method rows and the t-start sweep: ddpm, ddim or dpm, optionally :STEPS "
                        "(default ddpm = one step per timestep; ddim 50, dpm 25)")
    p.add_argument("--base-t-start", type=positive_int, default=300,
                   help="SDEdit start of the method rows and the sampler sweep (default 300, the paper's)")
    p.add_argument("--t-start", type=_int_list, default=(), metavar="T1,T2,...",
                   help="t_start sweep, e.g. 100,200,300,400,500,1000 (the paper's Table 2)")
    p.add_argument("--scheduler", type=_str_list, default=(), metavar="NAME:STEPS,...",
                   help="sampler sweep, e.g. ddpm:300,ddim:50,dpm:25 (quality and seconds per generated second)")
    p.add_argument("--emotion", default="auto",
                   help="emotion to generate with: auto (the clip's label, else the classifier, else none), "
                        f"classifier, none (the null class), or one of {', '.join(EMOTIONS)}")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="emotion guidance; 1 = off")
    p.add_argument("--emotion-data", default=None,
                   help="prepared emotion-audio dataset for the classifier (default: --data's labelled audio)")
    p.add_argument("--emotion-split", default=None, help="its split (default: --split)")
    p.add_argument("--emotion-classifier", default=None,
                   help="a classifier checkpoint directory to score instead of the pipeline's")
    p.add_argument("--emotion-cross-corpus", default=None, metavar="PREPARED[:SPLIT]",
                   help="another emotion-labelled corpus (e.g. talking-head prepare cremad): the classifier is "
                        "also scored on all of it (or on SPLIT, e.g. :test for the actors a head trained on its "
                        ":train never heard), choosing among the classes that corpus has")
    p.add_argument("--calm-speech", type=_str_list, default=(), metavar="PREPARED[:SPLIT],...",
                   help="the calm-speech check (issue 38): the share of clips without an acted emotion (no label, "
                        "or neutral) rendered neutral or nearly so (drawn strength < 0.3), and of emotional clips "
                        "drawn with their own emotion (default: the evaluated clips, when they have no labels)")
    p.add_argument("--expression-data", default=None,
                   help="emotion-labelled faces split by actor (talking-head prepare cremad): score emotion in the "
                        "face with a landmark expression classifier (real held-out vs generated), and render the "
                        "demo photo with each emotion (expression_contact_sheet.png)")
    p.add_argument("--expression-scale", type=float, default=1.0,
                   help="emotion_scale of the generated expressions (default 1)")
    p.add_argument("--no-expression-sheet", action="store_true",
                   help="with --expression-data: skip the contact sheet (no renderer runs)")
    p.add_argument("--samples", type=non_negative_int, default=2,
                   help="write side-by-side sample videos for the first N clips of each method (default 2)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="scoring resolution without a pipeline (static / warp only; default: the stored size)")
    p.add_argument("--no-landmarks", action="store_true", help="skip dlib landmark distances (faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--note", default=None, help="a line shown at the top of the report (e.g. 'UNTRAINED')")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(handler=cmd_evaluate)
    return p


def cmd_evaluate(args) -> int:
    from talking_head.evaluation.runner import EvalConfig, evaluate

    config = EvalConfig(
        data=args.data, pipeline=args.pipeline, output=args.output, split=args.split, protocol=args.protocol,
        methods=tuple(args.methods), max_clips=args.max_clips, max_seconds=args.max_seconds,
        sampler=args.sampler, t_start=args.base_t_start, t_start_sweep=tuple(args.t_start),
        scheduler_sweep=tuple(args.scheduler), seed=args.seed, device=args.device, dtype=args.dtype,
        emotion=args.emotion, guidance_scale=args.guidance_scale, emotion_data=args.emotion_data,
        emotion_split=args.emotion_split, emotion_classifier=args.emotion_classifier, samples=args.samples,
        emotion_cross_corpus=args.emotion_cross_corpus, calm_speech=tuple(args.calm_speech),
        resolution=args.resolution, landmarks=not args.no_landmarks, note=args.note, quiet=args.quiet,
        expression_data=args.expression_data, expression_scale=args.expression_scale,
        expression_sheet=not args.no_expression_sheet,
    )  # fmt: skip
    metrics = evaluate(config)
    main = metrics["methods"]
    for name, res in main.items():
        s = res["summary"]
        print(f"{name}: PSNR {s['psnr']:.2f} SSIM {s['ssim']:.3f}" if s.get("psnr") is not None else name, end="")
        if s.get("m_ld") is not None:
            print(f" M-LD {s['m_ld']:.2f} F-LD {s['f_ld']:.2f}", end="")
        print()
    if metrics.get("verdict"):
        print(f"verdict: the pipeline {metrics['verdict']['line']}")
    calm = metrics.get("calm_speech") or {}
    if calm.get("clips"):
        print(f"calm speech: {100 * calm['neutral_share']:.1f} % of {calm['clips']} clips rendered neutral or nearly so")
    if calm.get("emotional"):
        print(f"emotional clips: {100 * calm['emotional']['right_drawn_share']:.1f} % of "
              f"{calm['emotional']['clips']} drawn with their own emotion")
    print(f"wrote {args.output}/report.md")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (`python -m talking_head.evaluation.cli ...`), with the main CLI's error handling."""
    parser = argparse.ArgumentParser(prog="talking-head")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        print(f"talking-head evaluate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
