"""Wall-clock budgets and clean stops for the shared training loop (`talking_head.training.UpdateLoop`).

* `--max_train_minutes M` (every trainer): training stops after M minutes of training time, summed over
  resumed runs (the time so far travels in each checkpoint's `training_state.json` as `train_seconds`),
  with a final checkpoint and the saved model, as at `--max_train_steps`. The LR schedule then spans
  whichever ends first: its progress is max(updates / max_train_steps, time / budget)
  (`budget_lr_scheduler`), so a cosine schedule reaches 0 at the budget.
* A stop request (`request_stop`, e.g. from a SIGTERM handler: `stop_on_signals`): the loop finishes the
  update in progress, saves a checkpoint and raises `TrainingStopped`; the same command with
  `--resume_from_checkpoint latest` continues from there.
* `set_progress_hook(fn)`: `fn(step, loss, lr)` after every update (for a caller's own progress display;
  the loop's tqdm bar is then off).

The clock is per process and module-level (one training run at a time per process).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

BUDGET_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


class TrainingStopped(Exception):
    """Training stopped on request (a signal) after saving `checkpoint`."""

    def __init__(self, signum: int | None, checkpoint=None):
        self.signum, self.checkpoint = signum, checkpoint
        name = signal.Signals(signum).name if signum else "a stop request"
        super().__init__(f"stopped on {name}; the last checkpoint is {checkpoint}")


class TrainClock:
    """Training seconds of this run (since `start`) plus those of the runs it resumes (`previous`)."""

    def __init__(self):
        self.configure(None)

    def configure(self, budget_minutes: float | None) -> None:
        self.budget = None if budget_minutes is None else float(budget_minutes) * 60.0
        self.previous, self.started = 0.0, None

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.previous + (time.monotonic() - self.started if self.started is not None else 0.0)

    def fraction(self) -> float:
        """Share of the budget used (0 without a budget)."""
        return min(1.0, self.elapsed() / self.budget) if self.budget else 0.0

    def exhausted(self) -> bool:
        return self.budget is not None and self.elapsed() >= self.budget


CLOCK = TrainClock()
_STOP: dict = {"signum": None, "hook": None, "in_loop": False}


def request_stop(signum: int | None = signal.SIGTERM) -> None:
    _STOP["signum"] = signum or signal.SIGTERM


def stop_requested() -> int | None:
    return _STOP["signum"]


def clear_stop() -> None:
    _STOP["signum"] = None


def set_in_loop(active: bool) -> None:
    """The training loop is running (a stop request is then honoured at the end of the update)."""
    _STOP["in_loop"] = bool(active)


def set_progress_hook(fn) -> None:
    _STOP["hook"] = fn


def progress_hook():
    return _STOP["hook"]


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """While inside: a SIGINT / SIGTERM during training asks the loop to stop after this update (checkpoint
    saved); outside the loop (data preparation, evaluation), or a second signal, raises at once
    (KeyboardInterrupt / SystemExit(128 + signum))."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop_requested() or not _STOP["in_loop"]:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        request_stop(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class BudgetLambda:
    """LambdaLR multiplier: linear warm-up over `warmup` scheduler steps, then `kind` over the progress
    max(steps after warm-up / the rest of `total`, CLOCK.fraction()). A callable object, so that LambdaLR's
    state_dict (saved with the checkpoints) holds its settings."""

    def __init__(self, kind: str, warmup: int, total: int):
        self.kind, self.warmup, self.total = kind, int(warmup), int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / max(1, self.warmup)
        if self.kind == "constant_with_warmup" or self.kind == "constant":
            return 1.0
        by_steps = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(1.0, max(by_steps, CLOCK.fraction()))
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def budget_lr_scheduler(kind: str, optimizer, warmup: int, total: int):
    if kind not in BUDGET_SCHEDULES:
        raise ValueError(f"--max_train_minutes works with --lr_scheduler {', '.join(BUDGET_SCHEDULES)}; "
                         f"got {kind}")
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, BudgetLambda(kind, 0 if kind == "constant" else warmup,
                                                                     total))
