"""Checkpoints that are never half-written: `accelerator.save_state` into a hidden temporary folder,
flushed, then renamed to `checkpoint-<step>`; pruning, resuming (`start_or_resume`) and saving a finished
component the same way (`save_component_atomic`)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

from talking_head.utils import replace_dir_atomic, write_dir_atomic

logger = logging.getLogger(__name__)


CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state.json"  # written last into a checkpoint, before the rename
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_CHECKPOINT_RE = re.compile(r"^\.checkpoint-(\d+)\.tmp$")


def list_checkpoints(output_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as (global_step, path), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / TRAINING_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def clean_partial_checkpoints(output_dir) -> None:
    """Delete the temporary folders of saves that never finished (a run killed while saving)."""
    root = Path(output_dir)
    if root.is_dir():
        for path in root.iterdir():
            if _TMP_CHECKPOINT_RE.match(path.name) and path.is_dir():
                logger.info(f"removing the unfinished checkpoint {path}")
                shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(output_dir, total_limit: int | None) -> list[Path]:
    """Delete all but the newest `total_limit` complete checkpoints; returns the deleted paths."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    removed = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in removed:
        logger.info(f"removing old checkpoint {path} (--checkpoints_total_limit {total_limit})")
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    """Flush every file of `root` to disk, so the rename that publishes it never precedes the data."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def save_checkpoint(accelerator, output_dir, global_step: int, state: dict, total_limit: int | None = None) -> Path:
    """`accelerator.save_state` as `OUTPUT_DIR/checkpoint-<global_step>`, atomically, then prune.

    Every process calls this (each saves its RNG state; DeepSpeed saves its shards). The state goes to
    `.checkpoint-<step>.tmp` first; the main process adds TRAINING_STATE (`state` plus the step), flushes
    everything and renames the folder into place. `output_dir` must be on storage all processes share,
    as for `accelerator.save_state` itself.
    """
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{global_step}"
    tmp = root / f".{CHECKPOINT_PREFIX}{global_step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_atomic(tmp / TRAINING_STATE, {**state, "global_step": int(global_step)})
        _fsync_tree(tmp)
        replace_dir_atomic(tmp, final)  # an older checkpoint of the same step is replaced, never mixed
        logger.info(f"saved {final}")
        prune_checkpoints(root, total_limit)
    accelerator.wait_for_everyone()
    return final


def resolve_resume_checkpoint(value: str | None, output_dir) -> Path | None:
    """`--resume_from_checkpoint`: None, 'latest' (None when there is no checkpoint yet), or a folder.

    A bare name such as `checkpoint-500` is looked up in OUTPUT_DIR.
    """
    if value is None:
        return None
    if value == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            logger.info(f"--resume_from_checkpoint latest: no checkpoint in {output_dir} yet, starting fresh")
        return path
    path = Path(value)
    if not path.exists() and not path.is_absolute():
        path = Path(output_dir) / value
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    if not (path / TRAINING_STATE).is_file():
        raise ValueError(f"--resume_from_checkpoint {value}: {path} is not a complete checkpoint "
                         f"(it has no {TRAINING_STATE})")
    return path


def load_checkpoint(accelerator, path) -> dict:
    """`accelerator.load_state(path)`; returns the checkpoint's TRAINING_STATE (with `global_step`)."""
    path = Path(path)
    with open(path / TRAINING_STATE) as f:
        state = json.load(f)
    accelerator.load_state(str(path))
    return state


def check_resume_compatible(state: dict, current: dict) -> None:
    """Warn where the resumed run differs from the saved one in a way that changes the data order or LR."""
    for key, now in current.items():
        then = state.get(key)
        if then is not None and then != now:
            logger.warning(f"resuming with {key}={now!r}, the checkpoint was made with {key}={then!r}: the data "
                           "order or learning-rate schedule will not continue exactly")


def resume_position(global_step: int, updates_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int]:
    """(epoch, batches of that epoch already trained on) after `global_step` optimizer updates."""
    epoch = global_step // updates_per_epoch
    batches = (global_step % updates_per_epoch) * gradient_accumulation_steps
    return epoch, batches


def start_or_resume(accelerator, args, output_dir, train_dataloader, ema=None, **shape) -> tuple[dict, int, int, int]:
    """The run's shape and where training starts: `(run_shape, global_step, first_epoch, skip_batches)`.

    With `--resume_from_checkpoint`, loads the checkpoint (after `accelerator.prepare` and
    `register_for_checkpointing`), warns if the run's shape changed and returns its position; otherwise step 0.
    `shape` adds script-specific entries to the run shape (e.g. the prediction type).
    """
    run_shape = {"num_processes": accelerator.num_processes, "train_batch_size": args.train_batch_size,
                 "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
                 "max_train_steps": args.max_train_steps, "seed": args.seed, "lr_scheduler": args.lr_scheduler,
                 **shape}
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if resume is None:
        return run_shape, 0, 0, 0
    state = load_checkpoint(accelerator, resume)
    from talking_head.trainers.budget import CLOCK

    CLOCK.previous = float(state.get("train_seconds", 0.0))  # --max_train_minutes counts earlier runs' time
    if ema is not None:
        ema.to(accelerator.device)
    check_resume_compatible(state, run_shape)
    global_step = int(state["global_step"])
    updates_per_epoch = math.ceil(len(train_dataloader) / accelerator.gradient_accumulation_steps)
    first_epoch, skip_batches = resume_position(global_step, updates_per_epoch,
                                                accelerator.gradient_accumulation_steps)
    logging.getLogger(__name__).info(f"resumed from {resume} at global step {global_step} (epoch {first_epoch}, "
                                     f"skipping {skip_batches} batches of it)")
    return run_shape, global_step, first_epoch, skip_batches


# ------------------------------------------------------------------------------------------------ saving
def save_component_atomic(model, path, extras=(), **kwargs) -> Path:
    """`model.save_pretrained(path)` (and `extra.save_pretrained(path)` for each of `extras`, e.g. a feature
    extractor) written to a temporary sibling first, then renamed into place (talking_head.utils.write_dir_atomic,
    as the pipeline is saved)."""

    def write(folder):
        model.save_pretrained(folder, **kwargs)
        for extra in extras:
            extra.save_pretrained(folder)

    return write_dir_atomic(path, write)
