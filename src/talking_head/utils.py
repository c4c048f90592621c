"""Small shared helpers: writing directories so an interruption never loses a saved pipeline; smoothing a
sequence over time."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def replace_dir_atomic(tmp_dir: Path, target: Path) -> None:
    """Move the finished directory `tmp_dir` to `target`, replacing any old one.

    The old directory is moved aside first and deleted only once the new one is in
    place, so at every moment one complete copy exists under a known name.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory")
    backup = None
    if target.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(backup)
        os.replace(target, backup)
    os.replace(tmp_dir, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def make_public(path, directory: bool = False) -> None:
    """Give a file or folder made by `tempfile` (always private, 0600/0700) the mode a plain `open`/`mkdir`
    would have given it under the current umask, before it is renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def write_dir_atomic(output, write) -> Path:
    """`write(folder)` into a temporary sibling of `output`, then that folder renamed into place: `output` is
    either the old folder or the complete new one, never half-written."""
    target = Path(output).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        make_public(tmp, directory=True)
        replace_dir_atomic(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_pipeline_atomic(pipe, output, **kwargs) -> Path:
    """`pipe.save_pretrained(output)` written to a temporary sibling first, then renamed into place."""
    return write_dir_atomic(output, lambda folder: pipe.save_pretrained(folder, safe_serialization=True, **kwargs))


def smooth_over_time(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, F, ...) values blurred along F by a Gaussian of `sigma` frames (0: unchanged); the first and last
    frames repeat beyond the ends."""
    if sigma <= 0 or values.shape[1] < 2:
        return values
    radius = int(np.ceil(4 * sigma))
    taps = torch.arange(-radius, radius + 1)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(values.dtype).reshape(1, 1, -1, *([1] * (values.dim() - 2)))
    index = (torch.arange(values.shape[1])[:, None] + taps[None]).clamp(0, values.shape[1] - 1)  # (F, taps)
    return (values[:, index] * kernel).sum(dim=2)


def save_safetensors_atomic(tensors: dict, path, metadata: dict | None = None) -> Path:
    """`safetensors.torch.save_file` to a temporary sibling of `path`, then renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        make_public(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
