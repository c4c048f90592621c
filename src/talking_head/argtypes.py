"""argparse `type=` converters shared by every `talking-head` command: a bad value becomes one clear line."""

from __future__ import annotations

import argparse
import math


def whole_number(minimum: int):
    """A converter to int that refuses values below `minimum`."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return convert


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def check_device(device: str) -> str:
    """`device` if torch can run on it here, else a ValueError naming the problem (before any model loads)."""
    import torch

    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU")
    return device
