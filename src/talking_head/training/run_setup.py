"""The flags every trainer takes and what they build from them: the Accelerator (mixed precision,
trackers, CPU multi-process runs), the learning-rate schedule and the EMA."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
from datetime import timedelta
from pathlib import Path

import torch

from talking_head.training.checkpoints import clean_partial_checkpoints

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


def parse_json_kwargs(parser: argparse.ArgumentParser, value: str | None, flag: str = "--model_kwargs") -> dict | None:
    """`flag`'s value (a JSON object of overrides: --model_kwargs, --feature_kwargs) as a dict; a parser error
    when it is not one."""
    if value is None:
        return None
    try:
        kwargs = json.loads(value)
    except json.JSONDecodeError as err:
        parser.error(f"{flag} is not JSON: {err}")
    if not isinstance(kwargs, dict):
        parser.error(f"{flag} must be a JSON object")
    return kwargs


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


# ------------------------------------------------------------------------------------- schedule and EMA
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
