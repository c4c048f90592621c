"""What the three trainers in `train/` share (DESIGN.md 4: diffusers-style scripts on Accelerate).

Each script (`train_diffusion.py`, `train_landmarks.py`, `train_emotion.py`) keeps its own model, data,
loss and validation in plain sight, as diffusers' `examples/` do. The bookkeeping they have in common lives
here, once:

* `add_common_args`: the flags every trainer takes, with diffusers' names (`--output_dir`,
  `--train_batch_size`, `--gradient_accumulation_steps`, `--lr_scheduler`, `--checkpointing_steps`, ...).
* `make_accelerator`: gradient accumulation, mixed precision (bf16 on a GPU, fp32 on a CPU unless asked),
  trackers (TensorBoard by default), and CPU-only multi-process runs (gloo) started with
  `accelerate launch --multi_gpu` (DESIGN 6).
* Checkpoints (`save_checkpoint`, `resolve_resume_checkpoint`, `load_checkpoint`): `accelerator.save_state`
  into a hidden temporary folder, flushed, then renamed to `checkpoint-<step>`. Only complete checkpoints
  carry that name, so a run killed in the middle of a save never leaves a half-written "latest". Pruned to
  `--checkpoints_total_limit` after each successful save.
* A resumable data order (`ResumableRandomSampler`, `epoch_dataloader`): epoch e's order is a permutation
  drawn from (seed, e), the same on every process; `--resume_from_checkpoint` skips the batches the run had
  already trained on in that epoch, so the resumed run sees exactly the batches the uninterrupted one
  would have. With per-step seeding (`seed_step`: noise, timesteps, dropout from (seed, process, step)),
  a resumed run repeats the uninterrupted one step for step.
* Logging helpers: a JSON-lines metrics log, per-process batch-id logs (`--log_batch_ids`, for checking
  data order and sharding), validation videos written as MP4 and logged to TensorBoard as an animated GIF
  (what `SummaryWriter.add_video` writes, without needing moviepy).
* The diffusion training pair (DESIGN 2.5, `make_diffusion_pair`) and the landmark distance metric
  (DESIGN 5, `landmark_distance`), so the trainer, the tests and `benchmarks/bench_train.py` use one copy.

Testing aid: the environment variable `TALKING_HEAD_TRAIN_STEP_DELAY` (seconds) makes the training loops
sleep after every optimizer step, so a test can reliably kill a tiny run between two checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from talking_head.constants import MOUTH_SLICE, NULL_EMOTION
from talking_head.utils import make_public, replace_dir_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE = "training_state.json"  # written last into a checkpoint, before the rename
METRICS_FILE = "metrics.jsonl"
STEP_DELAY_ENV = "TALKING_HEAD_TRAIN_STEP_DELAY"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_CHECKPOINT_RE = re.compile(r"^\.checkpoint-(\d+)\.tmp$")

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


# ------------------------------------------------------------------------------------------------- arguments
def add_common_args(parser: argparse.ArgumentParser, *, output_dir: str, train_batch_size: int,
                    max_train_steps: int, learning_rate: float, checkpointing_steps: int,
                    validation_steps: int, lr_warmup_steps: int = 0, max_grad_norm: float = 1.0) -> None:
    """The flags every trainer takes (script-specific defaults are passed in)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", type=str, default=None,
                      help="a prepared dataset (`talking-head prepare ...`); its 'train' split is trained on, "
                           "its 'test' split validated on")
    data.add_argument("--synthetic", action="store_true",
                      help="without --data_dir: make a small synthetic dataset in OUTPUT_DIR/synthetic_data "
                           "(once) and train on it; for trying the tooling")
    data.add_argument("--dataloader_num_workers", type=int, default=0,
                      help="data loading processes (0: in the main process)")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", type=str, default=output_dir,
                       help="checkpoints, logs, validation media and the final model go here")
    train.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and noise")
    train.add_argument("--train_batch_size", type=int, default=train_batch_size, help="batch size per process")
    train.add_argument("--max_train_steps", type=int, default=max_train_steps,
                       help="optimizer updates in total (the LR schedule spans them)")
    train.add_argument("--max_train_minutes", type=float, default=None,
                       help="also stop after this many minutes of training (summed over resumed runs), with a "
                            "final checkpoint and the saved model; the LR schedule then ends at whichever of "
                            "the two limits comes first (talking_head.trainers.budget)")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="batches accumulated per optimizer update")
    train.add_argument("--learning_rate", type=float, default=learning_rate, help="peak learning rate")
    train.add_argument("--lr_scheduler", type=str, default="cosine", choices=LR_SCHEDULERS,
                       help="diffusers' get_scheduler: cosine anneals to 0 over --max_train_steps")
    train.add_argument("--lr_warmup_steps", type=int, default=lr_warmup_steps, help="linear warm-up updates")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=0.0,
                       help="decoupled weight decay (AdamW); 0 = plain Adam")
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--max_grad_norm", type=float, default=max_grad_norm,
                       help="clip the gradient norm on every update (0 = no clipping)")
    train.add_argument("--use_ema", action="store_true",
                       help="keep an exponential moving average of the weights (diffusers' EMAModel); "
                            "validation and the final save use it")
    train.add_argument("--ema_decay", type=float, default=0.9999,
                       help="maximum EMA decay (reached gradually: EMA warm-up, power 3/4)")
    train.add_argument("--gradient_checkpointing", action="store_true",
                       help="recompute activations in the backward pass: less memory, ~30%% slower")
    train.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                       help="default: what `accelerate launch`/config says, else bf16 on a GPU and no on a CPU")
    train.add_argument("--allow_tf32", action="store_true", help="allow TF32 matmuls on Ampere+ GPUs")
    train.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--checkpointing_steps", type=int, default=checkpointing_steps,
                      help="save the full training state (accelerator.save_state) every N updates and at the end")
    ckpt.add_argument("--checkpoints_total_limit", type=int, default=None,
                      help="keep only the newest N checkpoints")
    ckpt.add_argument("--resume_from_checkpoint", type=str, default=None,
                      help="'latest' (the newest complete checkpoint in OUTPUT_DIR, or a fresh start if none), "
                           "or a checkpoint folder; continues at its global step with the same data order and LR")

    log = parser.add_argument_group("logging and validation")
    log.add_argument("--report_to", type=str, default="tensorboard",
                     choices=["tensorboard", "wandb", "all", "none"], help="experiment tracker")
    log.add_argument("--logging_dir", type=str, default="logs", help="tracker folder, relative to OUTPUT_DIR")
    log.add_argument("--tracker_project_name", type=str, default=None, help="run name in the tracker")
    log.add_argument("--validation_steps", type=int, default=validation_steps,
                     help="validate on the held-out split every N updates and at the end (0 = only at the end)")
    log.add_argument("--log_batch_ids", action="store_true",
                     help="each process writes the ids of the items it trained on, its loss and LR per batch, "
                          "and a checksum of its final weights to OUTPUT_DIR/batch_ids/rank<r>.jsonl")


def check_common_args(args: argparse.Namespace) -> None:
    for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}")
    if args.validation_steps < 0 or args.lr_warmup_steps < 0 or args.dataloader_num_workers < 0:
        raise ValueError("--validation_steps, --lr_warmup_steps and --dataloader_num_workers must be >= 0")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.max_train_minutes is not None and not args.max_train_minutes > 0:
        raise ValueError(f"--max_train_minutes must be > 0, got {args.max_train_minutes}")
    if args.data_dir is None and not args.synthetic:
        raise ValueError("give --data_dir (a prepared dataset, see `talking-head prepare --help`) or --synthetic")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data_dir {args.data_dir} is not a folder")


# ----------------------------------------------------------------------------------------------- accelerator
def resolve_mixed_precision(requested: str | None, cpu: bool) -> str:
    """The flag, else `accelerate launch`'s setting, else bf16 on a bf16-capable GPU, else no."""
    if requested is not None:
        return requested
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if env:
        return env
    if not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False):
    """An Accelerator for `args` (see the module docstring); also sets up logging like diffusers' examples."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    output_dir = Path(args.output_dir)
    # CPU-only multi-process runs (`accelerate launch --multi_gpu` / torchrun on a machine without CUDA) must
    # be told to use the CPU, or Accelerate picks NCCL (DESIGN 6).
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = bool(args.cpu) or (world_size > 1 and not torch.cuda.is_available())
    handlers = [InitProcessGroupKwargs(timeout=timedelta(minutes=60))]  # validation runs on one process
    if find_unused_parameters:
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    report_to = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(args.mixed_precision, cpu),
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / args.logging_dir)),
        cpu=cpu,
        kwargs_handlers=handlers,
    )
    # --seed makes the initialisation reproducible (and the same on every process).
    from accelerate.utils import set_seed

    set_seed(args.seed)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO)
    import diffusers
    import transformers

    from talking_head.trainers.budget import progress_hook

    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
        # A caller with its own progress display (talking-head train) keeps diffusers' save messages out of it.
        verbosity = diffusers.utils.logging.WARNING if progress_hook() else diffusers.utils.logging.INFO
        diffusers.utils.logging.set_verbosity(verbosity)
    else:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        clean_partial_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    return accelerator


def init_trackers(accelerator, args: argparse.Namespace, default_name: str) -> None:
    """Start the trackers on the main process with the run's flags as hyper-parameters."""
    if accelerator.is_main_process and args.report_to != "none":
        config = {}
        for key, value in vars(args).items():
            config[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        accelerator.init_trackers(args.tracker_project_name or default_name, config=config)


def finish(accelerator) -> None:
    """Clean end of a (possibly distributed) run: DESIGN 6 - without this some gloo runs abort at exit.

    The caller drops its own references to models and optimizers first.
    """
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drops Accelerate's references to the prepared models and optimizers
    gc.collect()
    accelerator.end_training()  # closes the trackers and destroys the process group
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------ checkpoints
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


# ----------------------------------------------------------------------------------------------- data order
def make_lr_scheduler(args, optimizer, accelerator):
    """diffusers' `get_scheduler` over the run (warm-up and length in updates; the prepared scheduler steps once
    per process, hence the scaling). With --max_train_minutes the schedule also ends at the time budget
    (talking_head.trainers.budget.budget_lr_scheduler); this also starts the budget's clock afresh."""
    from diffusers.optimization import get_scheduler

    from talking_head.trainers.budget import CLOCK, budget_lr_scheduler

    minutes = getattr(args, "max_train_minutes", None)
    CLOCK.configure(minutes)
    if minutes is not None:
        return budget_lr_scheduler(args.lr_scheduler, optimizer, args.lr_warmup_steps * accelerator.num_processes,
                                   args.max_train_steps * accelerator.num_processes)
    return get_scheduler(args.lr_scheduler, optimizer=optimizer,
                         num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                         num_training_steps=args.max_train_steps * accelerator.num_processes)


def make_ema(accelerator, args, model, model_cls=None):
    """diffusers' `EMAModel` of the prepared (on every process identical) weights, saved with the checkpoints;
    None without `--use_ema`. `model_cls` (a diffusers model class) lets the EMA be saved as that model."""
    if not args.use_ema:
        return None
    from diffusers.training_utils import EMAModel

    unwrapped = accelerator.unwrap_model(model)
    extra = {"model_cls": model_cls, "model_config": unwrapped.config} if model_cls is not None else {}
    ema = EMAModel(unwrapped.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4, **extra)
    accelerator.register_for_checkpointing(ema)
    return ema


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


class ResumableRandomSampler(torch.utils.data.Sampler):
    """Epoch `e` visits the items in the order `default_rng([seed, e]).permutation(n)`.

    Stateless apart from the epoch, so it is the same on every process (Accelerate then gives each process
    its own batches of it) and the same after a resume.
    """

    def __init__(self, num_items: int, seed: int = 0):
        if num_items < 1:
            raise ValueError("the dataset is empty")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items).tolist())

    def __len__(self) -> int:
        return self.num_items


def make_dataloader(dataset, batch_size: int, seed: int, num_workers: int, collate_fn):
    """A DataLoader over `dataset` in the resumable order; returns (dataloader, sampler)."""
    sampler = ResumableRandomSampler(len(dataset), seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        drop_last=False, persistent_workers=False,
        # Its own generator, so creating an iterator does not consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def epoch_dataloader(accelerator, dataloader, sampler: ResumableRandomSampler, epoch: int, skip_batches: int = 0):
    """The prepared `dataloader` set to `epoch` (sampler and dataset), minus its first `skip_batches` batches."""
    sampler.set_epoch(epoch)
    dataset = dataloader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # random windows / references / crops of this epoch
    loader = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
    if hasattr(loader, "set_epoch"):
        # Accelerate's loaders set their sampler's epoch from their own counter when iterated; align it.
        loader.set_epoch(epoch)
    return loader


def seed_for_step(seed: int, process_index: int, global_step: int, micro_step: int) -> int:
    return int(np.random.SeedSequence([seed, process_index, global_step, micro_step]).generate_state(1)[0])


def seed_step(seed: int, process_index: int, global_step: int, micro_step: int) -> None:
    """Seed the global RNGs (torch CPU and CUDA, numpy, random) for one batch: noise, timesteps, dropout,
    LayerDrop and SpecAugment masks (transformers draws those with numpy) then depend only on (seed, process,
    update, batch within the update), so a resumed run repeats the uninterrupted one."""
    value = seed_for_step(seed, process_index, global_step, micro_step)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def step_delay() -> None:
    """Testing aid: sleep TALKING_HEAD_TRAIN_STEP_DELAY seconds (see the module docstring)."""
    delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


# ------------------------------------------------------------------------------------------------- logging
class UpdateLoop:
    """The training loop all three trainers share, around their own forward/backward/step.

        loop = UpdateLoop(accelerator, args, ...)
        for batch in loop:                       # epochs, resume position and per-step seeds handled here
            with accelerator.accumulate(model):
                loss = ...; loop.backward_and_step(loss, batch_size, optimizer, lr_scheduler, params)
            loop.end_micro_step(batch, loss.item(), lr_scheduler)

    After each optimizer update (`sync_gradients`): EMA step, progress bar, `train/loss` and `train/lr` logging,
    `save_state` every `--checkpointing_steps`, `validate()` every `--validation_steps` (main process), and a
    checkpoint plus validation at the last update. `global_step` and `epoch` are read by the caller afterwards.
    The last update is the `--max_train_steps`-th, or the first to end past `--max_train_minutes`; after a stop
    request (talking_head.trainers.budget) the loop saves a checkpoint and raises `TrainingStopped`.
    """

    def __init__(self, accelerator, args, *, train_dataloader, sampler, output_dir, run_shape: dict,
                 global_step: int, first_epoch: int, skip_batches: int, metrics, batches, validate,
                 ema=None, ema_model=None, loss_format: str = ".4f"):
        from tqdm.auto import tqdm

        self.accelerator, self.args = accelerator, args
        self.train_dataloader, self.sampler = train_dataloader, sampler
        self.output_dir, self.run_shape = output_dir, run_shape
        self.global_step, self.epoch = global_step, first_epoch
        self.first_epoch, self.skip_batches = first_epoch, skip_batches
        self.metrics, self.batches, self.validate = metrics, batches, validate
        self.ema, self.ema_model, self.loss_format = ema, ema_model, loss_format
        from talking_head.trainers.budget import CLOCK, progress_hook

        self.clock, self.hook = CLOCK, progress_hook()
        self.micro_step, self.accumulated_loss = 0, 0.0
        self.done = global_step >= args.max_train_steps or CLOCK.exhausted()
        self.progress = tqdm(range(args.max_train_steps), initial=global_step, desc="updates",
                             disable=not accelerator.is_local_main_process or self.hook is not None)

    def __iter__(self):
        from talking_head.trainers.budget import set_in_loop

        args, accelerator = self.args, self.accelerator
        self.clock.start()
        set_in_loop(True)
        try:
            while not self.done:
                skip = self.skip_batches if self.epoch == self.first_epoch else 0
                for batch in epoch_dataloader(accelerator, self.train_dataloader, self.sampler, self.epoch, skip):
                    seed_step(args.seed, accelerator.process_index, self.global_step, self.micro_step)
                    yield batch
                    if self.done:
                        break
                else:
                    self.epoch += 1
        finally:
            set_in_loop(False)
        self.progress.close()

    def backward_and_step(self, loss, batch_size: int, optimizer, lr_scheduler, parameters) -> None:
        """Inside `accelerator.accumulate`: add the loss (averaged over processes) to the update's logged loss,
        backward, clip the gradients of `parameters` on the syncing micro-step, optimizer and LR steps."""
        accelerator = self.accelerator
        mean_loss = accelerator.gather(loss.detach().repeat(batch_size)).mean()
        self.accumulated_loss += mean_loss.item() / accelerator.gradient_accumulation_steps
        accelerator.backward(loss)
        if accelerator.sync_gradients and self.args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def end_micro_step(self, batch: dict, loss: float, lr_scheduler) -> None:
        args, accelerator = self.args, self.accelerator
        self.batches.write(step=self.global_step, micro=self.micro_step, epoch=self.epoch, ids=batch_ids(batch),
                           loss=loss, lr=lr_scheduler.get_last_lr()[0])
        self.micro_step += 1
        if not accelerator.sync_gradients:
            return
        self.micro_step = 0
        if self.ema is not None:
            self.ema.step(self.ema_model.parameters())
        self.global_step += 1
        self.progress.update(1)
        lr = lr_scheduler.get_last_lr()[0]
        log_scalars(accelerator, self.metrics, {"train/loss": self.accumulated_loss, "train/lr": lr}, self.global_step)
        self.progress.set_postfix(loss=format(self.accumulated_loss, self.loss_format), lr=f"{lr:.2e}")
        if self.hook is not None and accelerator.is_local_main_process:
            self.hook(self.global_step, self.accumulated_loss, lr)
        self.accumulated_loss = 0.0
        out_of_time, stop = self._budget_or_stop()
        self.done = self.global_step >= args.max_train_steps or out_of_time
        if self.global_step % args.checkpointing_steps == 0 or self.done or stop:
            path = save_checkpoint(accelerator, self.output_dir, self.global_step,
                                   {**self.run_shape, "epoch": self.epoch, "train_seconds": self.clock.elapsed()},
                                   args.checkpoints_total_limit)
            if stop:
                from talking_head.trainers.budget import TrainingStopped, set_in_loop

                set_in_loop(False)
                self.progress.close()
                raise TrainingStopped(stop, path)
        if (args.validation_steps and self.global_step % args.validation_steps == 0) or self.done:
            if accelerator.is_main_process:
                self.validate()
        step_delay()

    def _budget_or_stop(self) -> tuple[bool, int | None]:
        """(past --max_train_minutes, the signal of a stop request or None), the same on every process."""
        from talking_head.trainers.budget import stop_requested

        out_of_time, stop = self.clock.exhausted(), stop_requested()
        if self.accelerator.num_processes > 1 and (self.clock.budget is not None or self.hook is not None):
            flags = torch.tensor([float(out_of_time), float(stop or 0)], device=self.accelerator.device)
            flags = self.accelerator.reduce(flags, reduction="max")
            out_of_time, stop = bool(flags[0] > 0), (int(flags[1]) or None)
        return out_of_time, stop


class TrainingRun:
    """What every trainer sets up the same way before its loop, in one call (`prepare_training`): AdamW over
    `params`, the resumable data loader, the LR schedule, `accelerator.prepare`, the EMA (started from the prepared
    weights, identical on every process), trackers, the metrics and batch logs, and the resume position."""

    def __init__(self, accelerator, args, output_dir, name: str, model, params, train_dataset, collate_fn,
                 ema_cls=None, **shape):
        self.accelerator, self.args, self.output_dir = accelerator, args, output_dir
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
        loader, self.sampler = make_dataloader(train_dataset, args.train_batch_size, args.seed,
                                               args.dataloader_num_workers, collate_fn)
        # The prepared scheduler steps once per process per update (Accelerate), hence the factor inside.
        lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
        self.model, self.optimizer, self.train_dataloader, self.lr_scheduler = accelerator.prepare(
            model, optimizer, loader, lr_scheduler)
        self.ema = make_ema(accelerator, args, self.model, ema_cls)
        init_trackers(accelerator, args, name)
        self.metrics = metrics_log(accelerator, output_dir)
        self.batches = batch_log(accelerator, args)
        self.run_shape, self.global_step, self.first_epoch, self.skip_batches = start_or_resume(
            accelerator, args, output_dir, self.train_dataloader, self.ema, **shape)

    def shape_line(self) -> str:
        """'P process(es) x batch B x accumulation A; N updates', for each trainer's opening log line."""
        return (f"{self.accelerator.num_processes} process(es) x batch {self.args.train_batch_size} x accumulation "
                f"{self.accelerator.gradient_accumulation_steps}; {self.args.max_train_steps} updates")

    def update_loop(self, validate, loss_format: str = ".4f") -> "UpdateLoop":
        """The shared `UpdateLoop` over this run's loader, from its resume position."""
        return UpdateLoop(self.accelerator, self.args, train_dataloader=self.train_dataloader, sampler=self.sampler,
                          output_dir=self.output_dir, run_shape=self.run_shape, global_step=self.global_step,
                          first_epoch=self.first_epoch, skip_batches=self.skip_batches, metrics=self.metrics,
                          batches=self.batches, validate=validate, ema=self.ema, ema_model=self.model,
                          loss_format=loss_format)

    @contextlib.contextmanager
    def averaged_weights(self, model):
        """Inside: `model` (the unwrapped one) holds the EMA weights, for validation; its own come back after."""
        if self.ema is None:
            yield model
            return
        self.ema.store(model.parameters())
        self.ema.copy_to(model.parameters())
        try:
            yield model
        finally:
            self.ema.restore(model.parameters())

    def finish_weights(self, model, global_step: int) -> None:
        """After the loop: wait for every process, put the EMA weights into `model` (the unwrapped one) and close
        the batch log with the final weights' checksum."""
        self.accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(model.parameters())
        if self.args.log_batch_ids:
            self.batches.write(final=True, step=global_step, checksum=weights_checksum(model))


class JsonlLog:
    """Append-only JSON-lines file (one object per line); a no-op when `path` is None."""

    def __init__(self, path):
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def metrics_log(accelerator, output_dir) -> JsonlLog:
    """OUTPUT_DIR/metrics.jsonl on the main process (train loss, LR, validation figures per step)."""
    return JsonlLog(Path(output_dir) / METRICS_FILE if accelerator.is_main_process else None)


def batch_log(accelerator, args) -> JsonlLog:
    path = Path(args.output_dir) / "batch_ids" / f"rank{accelerator.process_index}.jsonl" if args.log_batch_ids else None
    return JsonlLog(path)


def batch_ids(batch: dict) -> list[str]:
    """Readable ids of a batch's items: `clip_id@start_frame` for video windows, `clip_id` for audio."""
    clips = batch.get("clip_id", [])
    if "start_frame" in batch:
        return [f"{c}@{int(s)}" for c, s in zip(clips, batch["start_frame"].tolist())]
    return list(clips)


def weights_checksum(model: torch.nn.Module, buffers: bool = False) -> str:
    """sha256 of a model's parameters (names, shapes, values): equal iff the weights are equal. With
    `buffers`, of the whole state dict (running statistics of normalisation layers included, which
    DistributedDataParallel only syncs from rank 0 at the start of each forward pass)."""
    digest = hashlib.sha256()
    tensors = model.state_dict() if buffers else dict(model.named_parameters())
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        data = tensor.detach().cpu()
        digest.update(str(tuple(data.shape)).encode())
        digest.update((data.float() if data.is_floating_point() else data).contiguous().numpy().tobytes())
    return digest.hexdigest()


def log_scalars(accelerator, metrics: JsonlLog, values: dict, step: int) -> None:
    accelerator.log(values, step=step)
    metrics.write(step=int(step), **{k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
                                      for k, v in values.items()})


def upscale_frames(frames: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 (T, H, W, 3) until the short side is >= min_side (for viewing)."""
    factor = max(1, math.ceil(min_side / min(frames.shape[1:3])))
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def to_uint8_video(clip: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    clip = ((clip.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return clip.permute(1, 2, 3, 0).cpu().numpy()


def log_video(accelerator, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
    """Log uint8 (T, H, W, 3) frames as a video: an animated GIF image summary in TensorBoard (what
    `SummaryWriter.add_video` writes, made here with PIL so moviepy is not needed), `wandb.Video` in W&B."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            from PIL import Image
            from tensorboard.compat.proto.summary_pb2 import Summary

            buf = io.BytesIO()
            images = [Image.fromarray(f) for f in frames]
            images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(20, int(round(1000 / fps))), loop=0)
            image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                                  encoded_image_string=buf.getvalue())
            writer = tracker.writer
            writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
            writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Video(frames.transpose(0, 3, 1, 2), fps=int(round(fps)), format="mp4")},
                        step=step)


def write_validation_mp4(path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None) -> Path | None:
    """MP4 (H.264, + AAC audio when given) of uint8 frames; a failure is logged, never fatal to training."""
    from talking_head.video import write_video

    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # H.264 in yuv420 wants even sides.
        h, w = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
        return write_video(path, frames[:, :h, :w], fps, audio=audio)
    except Exception as err:  # noqa: BLE001 - validation media must not stop a training run
        logger.warning(f"could not write {path}: {err}")
        return None


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of two images/clips in [-1, 1] (data range 2)."""
    mse = torch.mean((pred.float().clamp(-1, 1) - target.float()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


# ------------------------------------------------------------------------------------------- data folders
def resolve_data_dir(args, accelerator, kind: str, size: int = 64) -> Path:
    """`--data_dir`, or with `--synthetic` a synthetic set made once in OUTPUT_DIR/synthetic_data.

    kind: "video" (drawn talking faces: frames, landmarks, audio; 4 emotions, train + test clips) or
    "emotion" (labelled voice-like utterances of 6 speakers, 2 of them held out).
    """
    if args.data_dir is not None:
        return Path(args.data_dir)
    from talking_head.data.synthetic import make_synthetic_dataset, make_synthetic_emotion_audio

    root = Path(args.output_dir) / "synthetic_data"
    if accelerator.is_main_process and not (root / "manifest.jsonl").is_file():
        logger.info(f"--synthetic: writing a synthetic {kind} dataset to {root}")
        if kind == "video":
            make_synthetic_dataset(root, num_speakers=1, clips_per_emotion=2,
                                   emotions=("neutral", "happy", "sad", "angry"), seconds=3.0,
                                   size=max(32, int(size)), seed=args.seed)
        else:
            make_synthetic_emotion_audio(root, num_speakers=6, utterances_per_emotion=4, seconds=1.5,
                                         seed=args.seed, test_speakers=2)
    accelerator.wait_for_everyone()
    return root


# ---------------------------------------------------------------------------------------------- model presets
# The landmark model's sizes. "paper" is KFusionLandmarkModel's defaults (0.5M parameters; pass
# --wav2vec2_model to train_landmarks.py for the paper's wav2vec 2.0 Context domain).
LANDMARK_PRESETS = {
    "tiny": dict(n_mels=40, global_channels=32, context_channels=32, identity_dim=16, emotion_dim=8,
                 num_temporal_blocks=1, kan_hidden_dims=(32,)),
    "paper": {},
}


def build_mask_noise(resolution: int, noise_type: str = "uniform_replace", mask_mode: str = "region",
                     region_points=None):
    """GaussianMaskNoise for boxes of `resolution`: the region mode's sizes are relative to the box; the
    landmarks mode's 256²-tuned blob size is scaled to `resolution` (as talking_head.presets does)."""
    from talking_head.models.mask_noise import GaussianMaskNoise

    ref = GaussianMaskNoise()
    scale = resolution / 256.0
    kernel = max(1, int(round(ref.config.kernel_size * scale)) | 1)
    extra = {} if region_points is None else {"region_points": tuple(int(i) for i in region_points)}
    return GaussianMaskNoise(kernel_size=kernel, sigma=max(0.5, ref.config.sigma * scale),
                             threshold=ref.config.threshold, noise_type=noise_type, mask_mode=mask_mode, **extra)


def build_unet(preset: str, resolution: int, in_channels: int = 13, condition_skip: bool = False,
               residual_channel: int | None = None):
    """A freshly initialised ClassConditionedUNet3DModel of a talking_head.presets preset at `resolution`."""
    from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel
    from talking_head.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    factor = 2 ** (len(spec["block_out_channels"]) - 1)
    if resolution % factor:
        raise ValueError(f"--resolution {resolution} must be divisible by {factor} for the {preset} UNet")
    return ClassConditionedUNet3DModel(sample_size=resolution, in_channels=in_channels, out_channels=3,
                                       block_out_channels=spec["block_out_channels"],
                                       layers_per_block=spec["layers_per_block"], condition_skip=condition_skip,
                                       residual_channel=residual_channel)


# ------------------------------------------------------------------------------------- diffusion training pair
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SAMPLING = ("uniform", "below_t_start", "mixed")


def sample_timesteps(batch_size: int, num_train_timesteps: int, mode: str, t_start: int, bias: float,
                     device) -> torch.Tensor:
    """Training timesteps (int64, from torch's global RNG).

    uniform: U{0..T-1}. below_t_start: U{0..t_start-1}, the range SDEdit sampling from t_start visits.
    mixed: below_t_start with probability `bias`, else uniform (keeps larger t_start usable).
    """
    if mode not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {mode!r}")
    full = torch.randint(0, num_train_timesteps, (batch_size,), device=device)
    if mode == "uniform":
        return full
    low = torch.randint(0, min(t_start, num_train_timesteps), (batch_size,), device=device)
    if mode == "below_t_start":
        return low
    return torch.where(torch.rand(batch_size, device=device) < bias, low, full)


@dataclass
class DiffusionPair:
    model_input: torch.Tensor  # (B, 13, F, S, S): pipelines.pipeline_talking_head.unet_input
    timesteps: torch.Tensor  # (B,)
    class_labels: torch.Tensor  # (B,), NULL_EMOTION where dropped for classifier-free guidance
    target: torch.Tensor  # (B, 3, F, S, S): what the UNet is trained to predict
    noisy: torch.Tensor  # x_t
    sample: torch.Tensor  # x0, the target mouth boxes
    cond: torch.Tensor  # the context: the target boxes with the region replaced by mask noise
    mask: torch.Tensor  # (B, 1, F, S, S): the region
    heatmaps: torch.Tensor  # (B, 3, F, S, S): the target landmarks
    reference: torch.Tensor  # (B, 3, S, S): the reference frame's box


def mouth_boxes(batch: dict, sample_size: int, jitter: bool = False, indices=None) -> dict:
    """Cut every clip of a batch to its mouth box (talking_head.mouth_box, DESIGN 7.2 item 2).

    batch: frames (B, 3, F, H, W) at the stored face-crop resolution, landmarks (B, F, 68, 2) and
    reference (B, 3, H, W) / reference_landmarks (B, 68, 2), normalised to the crop. One box per clip covers
    the lower face of its frames and of its reference, as the pipeline's box covers the photo's and every
    generated frame's (`indices`: the landmarks it is placed on, the mask-noise layer's region_points;
    default the lower face). jitter: scale the box by U(0.95, 1.15) and shift it by up to 4 % of its side (torch's
    global RNG), so the model sees the mouth at the positions and sizes a video's box can give it.
    Returns frames (B, 3, F, S, S), reference (B, 3, S, S), landmarks (B, F, 68, 2) and reference_landmarks
    (B, 68, 2) normalised to the box.
    """
    from talking_head.models.mask_noise import LOWER_FACE_POINTS
    from talking_head.mouth_box import BOX_SCALE, MouthBox

    indices = LOWER_FACE_POINTS if indices is None else tuple(indices)

    frames, ref = batch["frames"], batch["reference"]
    height, width = frames.shape[-2:]
    scale = frames.new_tensor((width, height))
    out = {"frames": [], "reference": [], "landmarks": [], "reference_landmarks": []}
    for b in range(frames.shape[0]):
        points = torch.cat([batch["landmarks"][b], batch["reference_landmarks"][b][None]]) * scale
        factor = BOX_SCALE * (float(torch.empty(()).uniform_(0.95, 1.15)) if jitter else 1.0)
        box = MouthBox.from_landmarks(points, scale=factor, indices=indices)
        if jitter:
            dx, dy = (torch.rand(2) * 0.08 - 0.04) * box.side
            box = MouthBox(box.x0 + int(round(float(dx))), box.y0 + int(round(float(dy))), box.side)
        out["frames"].append(box.cut(frames[b].transpose(0, 1), sample_size).transpose(0, 1))
        out["reference"].append(box.cut(ref[b][None], sample_size)[0])
        out["landmarks"].append(box.normalise(batch["landmarks"][b] * scale))
        out["reference_landmarks"].append(box.normalise(batch["reference_landmarks"][b] * scale))
    return {k: torch.stack(v) for k, v in out.items()}


def make_diffusion_pair(batch: dict, mask_noise, scheduler, sample_size: int, prediction_type: str,
                        timesteps: torch.Tensor, p_uncond: float = 0.0, jitter: bool = False,
                        first_step: torch.Tensor | None = None) -> DiffusionPair:
    """One training example per clip (DESIGN 7.2 item 4), built exactly as TalkingHeadPipeline builds its input.

    x0 = the clip's mouth boxes. context = the same boxes with the lower-face region (covering the clip's and
    the reference's landmarks) replaced by mask noise; reference = another frame of the person (the dataset
    picks one with a different mouth opening, so the target mouth cannot be copied); heatmaps = the target
    landmarks. x_t = scheduler.add_noise(x0, noise, t), except for the clips flagged in `first_step` (B,) bool:
    there x_t is what the pipeline's first SDEdit step sees, the box with the REFERENCE's mouth in the region
    noised to `timesteps` (t_start - 1), so the model learns not to keep that mouth but to draw the heatmaps'
    (without them it learns to trust x_t's mouth at t < t_start, and the photo's mouth leaks into the
    video). The UNet sees `unet_input(x_t, context, mask,
    heatmaps, reference)` and the clip's emotion, replaced by NULL_EMOTION with probability p_uncond for
    classifier-free guidance. Its target follows `prediction_type` (the scheduler's, which the saved pipeline
    keeps): the noise, x0, or v = sqrt(ab) noise - sqrt(1 - ab) x0.
    """
    from talking_head.pipelines.pipeline_talking_head import unet_input

    boxes = mouth_boxes(batch, sample_size, jitter=jitter, indices=mask_noise.config.region_points)
    x0 = boxes["frames"]
    device = x0.device
    mask = mask_noise.compute_mask(boxes["landmarks"], sample_size, sample_size,
                                   extra_landmarks=boxes["reference_landmarks"][:, None]).to(x0.dtype)
    context = mask_noise.apply_noise(x0, mask)
    heatmaps = mask_noise.heatmaps(boxes["landmarks"], sample_size, sample_size)
    noise = torch.randn(x0.shape, device=device, dtype=x0.dtype)
    timesteps = timesteps.to(device)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    if first_step is not None and bool(first_step.any()):
        init = x0 * (1 - mask) + boxes["reference"][:, :, None] * mask
        flag = first_step.to(device).view(-1, 1, 1, 1, 1)
        noisy = torch.where(flag, scheduler.add_noise(init, noise, timesteps), noisy)
    model_input = unet_input(noisy, context, mask, heatmaps, boxes["reference"])
    labels = batch["emotion"].to(device).clone()
    if p_uncond > 0:
        drop = torch.rand(labels.shape, device=device) < p_uncond
        labels = torch.where(drop, torch.full_like(labels, NULL_EMOTION), labels)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = x0
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DiffusionPair(model_input=model_input, timesteps=timesteps, class_labels=labels, target=target,
                         noisy=noisy, sample=x0, cond=context, mask=mask, heatmaps=heatmaps,
                         reference=boxes["reference"])


STRUCTURE_LOSSES = ("none", "ssim", "edge")


def region_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, structure: str = "none",
                structure_weight: float = 0.2) -> torch.Tensor:
    """L1 inside the region (B, 1, F, S, S) of x0 predictions (B, 3, F, S, S), plus an optional structural term.

    "ssim": 1 - SSIM (11-tap Gaussian window, sigma 1.5) averaged over the region; "edge": L1 of the horizontal
    and vertical image gradients inside the region (sharp lip and teeth edges instead of an average blur).
    """
    pred, target = pred.float(), target.float()
    weight = mask.float().expand_as(pred)
    denom = weight.sum().clamp_min(1.0)
    loss = ((pred - target).abs() * weight).sum() / denom
    if structure == "none":
        return loss
    if structure == "edge":
        gx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
        gy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
        wx, wy = weight[..., :, 1:] * weight[..., :, :-1], weight[..., 1:, :] * weight[..., :-1, :]
        term = (((gx(pred) - gx(target)).abs() * wx).sum() + ((gy(pred) - gy(target)).abs() * wy).sum()) / (
            wx.sum() + wy.sum()).clamp_min(1.0)
    elif structure == "ssim":
        term = ((1.0 - ssim_map(pred, target)) * weight).sum() / denom
    else:
        raise ValueError(f"structure must be one of {STRUCTURE_LOSSES}, got {structure!r}")
    return loss + structure_weight * term


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, F, H, W) images in [-1, 1] (data range 2), same shape."""
    from talking_head.models.mask_noise import gaussian_blur

    b, c, f, h, w = x.shape
    x2, y2 = x.transpose(1, 2).reshape(b * f, c, h, w), y.transpose(1, 2).reshape(b * f, c, h, w)
    blur = lambda t: gaussian_blur(t, 1.5)  # noqa: E731
    mx, my = blur(x2), blur(y2)
    vx, vy, cov = blur(x2 * x2) - mx * mx, blur(y2 * y2) - my * my, blur(x2 * y2) - mx * my
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(b, f, c, h, w).transpose(1, 2)


def predicted_sample(prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, scheduler,
                     prediction_type: str) -> torch.Tensor:
    """The x0 estimate implied by a model output, for any prediction type (comparable validation MSE)."""
    if prediction_type == "sample":
        return prediction
    alphas = scheduler.alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps]
    shape = (-1,) + (1,) * (noisy.ndim - 1)
    a, s = alphas.sqrt().view(shape), (1 - alphas).sqrt().view(shape)
    if prediction_type == "epsilon":
        return (noisy.float() - s * prediction.float()) / a
    if prediction_type == "v_prediction":
        return a * noisy.float() - s * prediction.float()
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


# ----------------------------------------------------------------------------------------- landmark metric
def landmark_distance(pred: torch.Tensor, target: torch.Tensor, size: float = 256.0) -> tuple[float, float]:
    """(M-LD, F-LD) as in DESIGN 5: per frame, both landmark sets are mean-centred (translation removed),
    then the mean Euclidean distance per point in pixels of a `size`² frame, over the 20 mouth points (M) or
    all 68 (F). `pred`, `target`: (..., 68, 2) normalised landmarks."""
    p = pred.detach().float() * size
    t = target.detach().float() * size
    p = p - p.mean(dim=-2, keepdim=True)
    t = t - t.mean(dim=-2, keepdim=True)
    dist = (p - t).norm(dim=-1)  # (..., 68)
    return float(dist[..., MOUTH_SLICE].mean()), float(dist.mean())


# ------------------------------------------------------------------------------------------------ saving
def save_component_atomic(model, path, extras=(), **kwargs) -> Path:
    """`model.save_pretrained(path)` (and `extra.save_pretrained(path)` for each of `extras`, e.g. a feature
    extractor) written to a temporary sibling first, then renamed into place (the component-level twin of
    talking_head.utils.save_pipeline_atomic)."""
    import tempfile

    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, **kwargs)
        for extra in extras:
            extra.save_pretrained(tmp)
        make_public(tmp, directory=True)
        replace_dir_atomic(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def draw_landmarks(frames: np.ndarray, *point_sets: tuple[np.ndarray, tuple[int, int, int]]) -> np.ndarray:
    """Draw normalised landmark sets ((F, 68, 2), colour) as dots on uint8 frames (F, H, W, 3)."""
    from PIL import Image, ImageDraw

    out = []
    for f, frame in enumerate(frames):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        h, w = frame.shape[:2]
        r = max(1, round(min(h, w) / 128))
        for points, colour in point_sets:
            for x, y in points[f]:
                px, py = x * w, y * h
                draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
        out.append(np.asarray(image))
    return np.stack(out)


def held_out(factory, data_dir):
    """`factory(split)` for the held-out split: "test", or "train" (with a warning) when the dataset has no
    usable test split (none, or clips shorter than the training window)."""
    try:
        return factory("test")
    except ValueError as err:
        logger.warning(f"{data_dir}: no usable 'test' split ({err}); validating on training data")
        return factory("train")
