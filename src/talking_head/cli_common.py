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
