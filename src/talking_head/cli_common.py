"""What the `talking-head` command and the modules it wires share, below all of them.

`talking_head.cli` imports `talking_head.app` and `talking_head.train_command` to wire their commands; they in
turn need the command's one-line error and the demo's settings. Those live here, so every import points down
to this module and none back up to `cli` (tests/test_import_cycle.py fails on any cycle). Import nothing from
the package's commands here.
"""

from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def assets_dir() -> Path:
    """The installed `talking_head.assets` folder: the demo's photo and speech, the bundled pipeline."""
    from importlib.resources import files

    return Path(str(files("talking_head.assets")))


# The demo's sampler (the bundled default is a sample-predicting model: a few steps are enough).
DEMO_SAMPLER, DEMO_STEPS = "dpm", 10


def emotion_line(result, given: bool = False) -> str:
    """What the classifier heard and what was drawn, for the command's and the web page's messages (issue 38):
    "heard happy (0.41); drawn: neutral (strength 0.00)", "heard sad (0.80); drawn: angry (given, strength 1.00)",
    "no emotion classifier; drawn: none". `result` is the pipeline's output (item 0)."""
    import numpy as np

    from talking_head.constants import EMOTIONS, NO_EMOTION

    if result.emotion_probs is None:
        heard = "no emotion classifier"
    else:
        probs = np.asarray(result.emotion_probs)[0]
        heard = f"heard {EMOTIONS[int(np.argmax(probs))]} ({float(np.max(probs)):.2f})"
    drawn = result.emotion[0]
    strengths = getattr(result, "emotion_strength", None)
    strength = strengths[0] if strengths else None
    if drawn == NO_EMOTION or strength is None:
        return f"{heard}; drawn: {drawn}" + (" (given)" if given else "")
    return f"{heard}; drawn: {drawn} ({'given, ' if given else ''}strength {float(strength):.2f})"
