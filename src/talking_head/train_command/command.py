"""`talking-head train VIDEO... --output DIR [--minutes 30] [--device cpu|cuda] [--resume] [--from-scratch]`.

Checks the videos, prepares them, fine-tunes the bundled landmark model and renderer (or trains them from
scratch) within the time budget, publishes the pipeline in DIR, evaluates it on the held-out tail and prints
the verdict, the report and the `talking-head generate` command. DIR/train_command.json records the run
(videos, settings, the time each stage took); the same command again resumes it: preparation skips what is
done, each trainer continues from its last checkpoint with what is left of its budget.

Ctrl-C / SIGTERM: the update in progress ends, a checkpoint is saved, the run exits with 130 / 143.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from talking_head.cli_common import UsageError
from talking_head.train_command import checks, stages
from talking_head.train_command.progress import StatusLine, clock

STATE = "train_command.json"
FORMAT = "talking-head-train"


def add_train_parser(sub):
    from talking_head.argtypes import positive_float

    p = sub.add_parser("train", help="your own talking head: train a pipeline from videos of one person",
                       description="Train a pipeline of one person from videos of them, within a time budget: "
                                   "prepare the videos, fine-tune the bundled landmark model and renderer, publish "
                                   "the pipeline in --output, evaluate it on the held-out last 10 % of each video "
                                   "and print the verdict, the report and the generate command. The same command "
                                   "again resumes a stopped run; Ctrl-C / SIGTERM stop it with a checkpoint.")
    p.add_argument("videos", nargs="+", help="videos of one person (>= 10 s each, 60 s or more recommended; "
                                             "frontal, steady light, speaking throughout); audio inside or in a "
                                             "sibling .wav")
    p.add_argument("--output", required=True, help="the pipeline folder to write (a report and the work files go "
                                                   "inside it)")
    p.add_argument("--minutes", type=positive_float, default=30.0,
                   help="time budget for training and evaluation (default 30; preparation comes on top)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output even if its settings (minutes, device) differ")
    p.add_argument("--from-scratch", action="store_true",
                   help="train both models from random weights instead of fine-tuning the bundled ones")
    p.set_defaults(handler=cmd_train)
    return p


# ------------------------------------------------------------------------------------------------- state
def video_keys(videos) -> list[dict]:
    out = []
    for v in videos:
        st = v.path.stat()
        out.append({"path": str(v.path.resolve()), "size": st.st_size, "seconds": round(v.seconds, 3)})
    return out


def load_or_start(output: Path, videos, args) -> dict:
    """The run's state: a fresh one, or the one in `output` when this is the same run (see --resume)."""
    settings = {"minutes": args.minutes, "device": args.device, "from_scratch": bool(args.from_scratch)}
    fresh = {"format": FORMAT, "videos": video_keys(videos), "settings": settings, "stages": {}, "finished": False}
    path = output / STATE
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    if not path.is_file():
        if output.is_dir() and any(output.iterdir()):
            raise UsageError(f"--output {output} already holds something else; give a new or empty folder")
        if args.resume:
            raise UsageError(f"--resume: {output} holds no run of talking-head train to resume")
        return fresh
    state = json.loads(path.read_text())
    if state.get("format") != FORMAT:
        raise UsageError(f"--output {output} already holds something else ({path})")
    if [v["path"] for v in state["videos"]] != [v["path"] for v in fresh["videos"]] or \
            [v["size"] for v in state["videos"]] != [v["size"] for v in fresh["videos"]]:
        raise UsageError(f"--output {output} holds a run on other videos; give another folder")
    if state["settings"]["from_scratch"] != settings["from_scratch"]:
        raise UsageError(f"--output {output} holds a run "
                         f"{'from scratch' if state['settings']['from_scratch'] else 'fine-tuning the bundled model'}"
                         "; give another folder to compare")
    if state["settings"] != settings:
        if not args.resume:
            raise UsageError(f"--output {output} holds a run with other settings ({state['settings']}); add "
                             "--resume to continue it with these, or give another folder")
        state["settings"] = settings
    return state


def save_state(output: Path, state: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / f".{STATE}.part"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(output / STATE)


# -------------------------------------------------------------------------------------------------- run
def resolve_device(device: str | None) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU")
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_train(args) -> int:
    output = Path(args.output)
    videos = [checks.check_video(v) for v in args.videos]
    state = load_or_start(output, videos, args)
    device = resolve_device(args.device)
    checks.check_disk(output, sum(v.seconds for v in videos))
    budget, total = args.minutes * 60.0, sum(v.seconds for v in videos)
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in stages.SHARES.items())
    print(f"talking-head train: {len(videos)} video(s), {total:.0f} s of one face with speech; "
          f"{'from scratch' if args.from_scratch else 'fine-tuning the bundled model'} on {device}; budget "
          f"{args.minutes:g} min: {shares} (preparation on top)" + ("; resuming" if state["stages"] else ""),
          flush=True)
    if total < checks.RECOMMENDED_SECONDS:
        print(f"note: {total:.0f} s of video in all; {checks.RECOMMENDED_SECONDS:g} s or more give a better model "
              "(the last 10 % of each video is held out for the report)", flush=True)
    save_state(output, state)
    run = Run(stages.Work(output), state, budget, device, bool(args.from_scratch))
    report = run.work.report / "metrics.json"
    if state.get("finished") and report.is_file() and (output / "model_index.json").is_file():
        print(f"{output} is finished already (to train longer, give a new --output); its summary:")
        return run.summary(json.loads(report.read_text()))
    return run.main()


class Run:
    def __init__(self, work, state: dict, budget: float, device: str, from_scratch: bool):
        self.work, self.state, self.budget, self.device, self.from_scratch = work, state, budget, device, from_scratch
        self.status = None

    def used(self, *names) -> float:
        return sum(self.state["stages"].get(n, {}).get("seconds", 0.0) for n in names)

    def record(self, name: str, seconds: float, **extra) -> None:
        self.state["stages"][name] = {**self.state["stages"].get(name, {}), "seconds": seconds, **extra}
        save_state(self.work.output, self.state)

    def main(self) -> int:
        from diffusers.utils import logging as diffusers_logging

        from talking_head.trainers import budget as tb

        diffusers_logging.disable_progress_bar()
        self.status = StatusLine(self.budget, used_seconds=self.used("landmarks", "renderer"))
        undo_logs = stages.log_to_file(self.work.logs / "train.log")
        tb.clear_stop()
        tb.set_progress_hook(self.status.update)
        try:
            with tb.stop_on_signals():
                self.stage_prepare()
                self.stage_train()
                self.check_stop()
                metrics = self.stage_evaluate()
        except tb.TrainingStopped as stop:
            return self.stopped(stop.signum, stop.checkpoint)
        except KeyboardInterrupt:  # a signal outside the training loop: what is done so far is kept
            return self.stopped(signal.SIGINT, None)
        except SystemExit as stop:
            if not isinstance(stop.code, int) or stop.code <= 128:
                raise
            return self.stopped(stop.code - 128, None)
        except OSError as err:
            if checks.is_disk_full(err):
                raise UsageError(f"the disk is full ({err.strerror}) while writing in {self.work.output}; "
                                 f"{self.last_checkpoint()}: free some space and run the same command "
                                 "again") from None
            raise
        finally:
            tb.set_progress_hook(None)
            tb.set_in_loop(False)
            diffusers_logging.enable_progress_bar()
            undo_logs()
            self.status.close()
        self.state["finished"] = True
        save_state(self.work.output, self.state)
        return self.summary(metrics)

    def last_checkpoint(self) -> str:
        from talking_head.training import latest_checkpoint

        found = [p for p in (latest_checkpoint(self.work.renderer), latest_checkpoint(self.work.landmarks)) if p]
        return f"the last checkpoint ({found[0]}) is intact" if found else "no checkpoint was saved yet"

    def check_stop(self) -> None:
        from talking_head.trainers import budget as tb

        if tb.stop_requested():
            raise tb.TrainingStopped(tb.stop_requested(), None)

    def stopped(self, signum, checkpoint) -> int:
        self.status.close()
        where = f" (checkpoint {checkpoint})" if checkpoint else ""
        print(f"talking-head train: stopped on {signal.Signals(signum).name}{where}; run the same command again "
              "to resume from there", file=sys.stderr, flush=True)
        return 128 + int(signum)

    def stage_prepare(self) -> None:
        self.status.set_stage("preparing the videos")
        t0 = time.monotonic()
        summary = stages.prepare(self.work, [checks.VideoInfo(Path(v["path"]), v["seconds"], None)
                                             for v in self.state["videos"]])
        self.record("prepare", self.used("prepare") + time.monotonic() - t0, test_clips=summary["test"],
                    frames=summary["frames"])
        self.check_stop()

    def _train(self, name: str, minutes: float, fn, *args) -> None:
        from talking_head.trainers.budget import CLOCK

        if self.state["stages"].get(name, {}).get("done"):
            return
        self.status.set_stage(name, used=CLOCK.elapsed)
        fn(self.work, minutes, self.from_scratch, self.device, *args)
        self.record(name, CLOCK.elapsed(), done=True, minutes_budget=round(minutes, 3))
        self.status.add_used(CLOCK.elapsed())
        CLOCK.configure(None)

    def stage_train(self) -> None:
        self.check_stop()
        landmark_minutes = self.budget * stages.SHARES["landmarks"] / 60.0
        self._train("landmarks", landmark_minutes, stages.train_landmarks)
        self.check_stop()
        left = self.budget * (stages.SHARES["landmarks"] + stages.SHARES["renderer"]) - self.used("landmarks")
        self._train("renderer", max(left, 0.05 * self.budget) / 60.0, stages.train_renderer,
                    self.work.landmarks / "landmark_model")

    def stage_evaluate(self) -> dict:
        self.status.set_stage("assembling the pipeline")
        trained = self.work.renderer / "pipeline"
        info = {"from_scratch": self.from_scratch, "videos": [v["path"] for v in self.state["videos"]],
                "minutes_budget": self.budget / 60.0,
                "stage_seconds": {k: round(v["seconds"], 1) for k, v in self.state["stages"].items()}}
        stages.assemble(self.work, trained, info)
        self.status.set_stage("evaluating on the held-out tail")
        t0 = time.monotonic()
        share = max(self.budget - self.used("landmarks", "renderer"), self.budget * stages.SHARES["evaluation"])
        max_seconds = stages.evaluation_seconds_per_clip(share, self.state["stages"]["prepare"]["test_clips"])
        note = (f"talking-head train, {'from scratch' if self.from_scratch else 'fine-tuned from the bundled model'}, "
                f"{self.budget / 60:g} min budget; photo protocol on the held-out last 10 % of each video")
        metrics = stages.evaluate(self.work, trained, self.device, max_seconds, note)
        self.record("evaluation", time.monotonic() - t0)
        return metrics

    def summary(self, metrics: dict) -> int:
        out = self.work.output
        s = {k: round(v["seconds"]) for k, v in self.state["stages"].items()}
        print("time per stage: " + ", ".join(f"{k} {clock(v)}" for k, v in s.items()))
        pipe, floor = metrics["methods"]["pipeline"]["summary"], metrics["methods"]["static"]["summary"]
        row = ", ".join(f"{name} {pipe[k]:.{d}f} (still photo {floor[k]:.{d}f})"
                        for k, name, d in (("psnr", "PSNR", 2), ("ssim", "SSIM", 3), ("m_ld", "M-LD", 2),
                                           ("f_ld", "F-LD", 2)) if pipe.get(k) is not None)
        print(f"held-out tail: {row}")
        print(f"verdict: {metrics.get('verdict', {}).get('line', 'n/a')}")
        samples = [f for c in metrics["methods"]["pipeline"]["clips"] for f in c["samples"] if f.endswith(".mp4")]
        print(f"report: {self.work.report / 'report.md'}" + (f" (sample video: {self.work.report / samples[0]}; "
                                                             f"contact sheet: {self.work.report / 'contact_sheet.jpg'})"
                                                             if samples else ""))
        print(f"pipeline: {out} (the work files in {self.work.work} can be deleted)")
        print(f"use it:  talking-head generate --pipeline {out} --audio speech.wav --identity photo.jpg "
              f"--scheduler dpm --steps 10 --output talking.mp4")
        return 0
