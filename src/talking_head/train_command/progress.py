"""One progress display for the whole `talking-head train` run: a status line on stderr.

    [renderer 3/5] 2:10 elapsed, 1:05 of the budget left | update 64, loss 0.0312

On a terminal the line is rewritten in place (twice a second at most, and every second by a timer while a
stage runs without updates); when stderr is not a terminal (a log file, CI) a line is printed when a stage
starts and every 30 s.
"""

from __future__ import annotations

import sys
import threading
import time


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class StatusLine:
    def __init__(self, budget_seconds: float, used_seconds: float = 0.0, stream=None, interval: float = 1.0):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.budget, self.used_before = budget_seconds, used_seconds
        self.started = time.monotonic()
        self.stage, self.detail, self.stage_used = "starting", "", (lambda: 0.0)
        self.last_print, self.width = 0.0, 0
        self.interval = interval if self.tty else 30.0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    # what the stages report
    def set_stage(self, stage: str, used=None) -> None:
        """A new stage; `used()` gives the budget seconds it has used so far (for the 'left' figure)."""
        with self._lock:
            self.stage, self.detail, self.stage_used = stage, "", used or (lambda: 0.0)
        self.show(force=True)

    def add_used(self, seconds: float) -> None:
        self.used_before += seconds

    def update(self, step: int, loss: float, lr: float | None = None) -> None:
        self.detail = f"update {step}, loss {loss:.4g}"
        self.show()

    def left(self) -> float:
        return self.budget - self.used_before - self.stage_used()

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        left = self.left()
        budget = f"{clock(left)} of the budget left" if left >= 0 else f"{clock(-left)} over the budget"
        return f"[{self.stage}] {clock(elapsed)} elapsed, {budget}" + (f" | {self.detail}" if self.detail else "")

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < (0.5 if self.tty else self.interval):
            return
        with self._lock:
            self.last_print = now
            line = self.text()
            if self.tty:
                pad = max(0, self.width - len(line))
                self.width = len(line)
                self.stream.write("\r" + line + " " * pad)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def say(self, message: str) -> None:
        """A line of its own (the status line is redrawn below it)."""
        with self._lock:
            if self.tty and self.width:
                self.stream.write("\r" + " " * self.width + "\r")
                self.width = 0
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.show()
