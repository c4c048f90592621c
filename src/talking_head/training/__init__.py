"""What the three trainers in `train/` share (DESIGN.md 4: diffusers-style scripts on Accelerate).

Each script (`train_diffusion.py`, `train_landmarks.py`, `train_emotion.py`) keeps its own model, data,
loss and validation in plain sight, as diffusers' `examples/` do. The bookkeeping they have in common lives
here, once, one stage per file:

* `run_setup`: the flags every trainer takes, with diffusers' names (`--output_dir`, `--train_batch_size`,
  `--gradient_accumulation_steps`, `--lr_scheduler`, `--checkpointing_steps`, ...); `make_accelerator`:
  gradient accumulation, mixed precision (bf16 on a GPU, fp32 on a CPU unless asked), trackers (TensorBoard
  by default), and CPU-only multi-process runs (gloo) started with `accelerate launch --multi_gpu` (DESIGN 6);
  the learning-rate schedule and the EMA.
* `checkpoints`: `accelerator.save_state` into a hidden temporary folder, flushed, then renamed to
  `checkpoint-<step>`. Only complete checkpoints carry that name, so a run killed in the middle of a save
  never leaves a half-written "latest". Pruned to `--checkpoints_total_limit` after each successful save;
  `start_or_resume` finds where a run starts.
* `data_order`: epoch e's order is a permutation drawn from (seed, e), the same on every process;
  `--resume_from_checkpoint` skips the batches the run had already trained on in that epoch, so the resumed
  run sees exactly the batches the uninterrupted one would have. With per-step seeding (`seed_step`: noise,
  timesteps, dropout from (seed, process, step)), a resumed run repeats the uninterrupted one step for step.
* `loop`: `TrainingRun` (optimizer, loader, schedule, EMA, logs, resume position in one call) and the shared
  `UpdateLoop`.
* `logs`: a JSON-lines metrics log, per-process batch-id logs (`--log_batch_ids`, for checking data order and
  sharding), validation videos written as MP4 and logged to TensorBoard as an animated GIF (what
  `SummaryWriter.add_video` writes, without needing moviepy).
* `diffusion_pair`: the renderer's training example (DESIGN 7.2 item 4, `make_diffusion_pair`) and its loss;
  `metrics`: PSNR and the landmark distances (DESIGN 5, `landmark_distance`); `datasets`: `--data_dir` or a
  synthetic set. The trainer, the tests and `benchmarks/bench_train.py` use one copy of each.

Every name is importable from `talking_head.training` itself, as before the split.

Testing aid: the environment variable `TALKING_HEAD_TRAIN_STEP_DELAY` (seconds) makes the training loops
sleep after every optimizer step, so a test can reliably kill a tiny run between two checkpoints.
"""

from talking_head.training.checkpoints import (  # noqa: F401
    CHECKPOINT_PREFIX, TRAINING_STATE, _write_json_atomic, check_resume_compatible, clean_partial_checkpoints,
    latest_checkpoint, list_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume_checkpoint,
    resume_position, save_checkpoint, save_component_atomic, start_or_resume,
)
from talking_head.training.data_order import (  # noqa: F401
    STEP_DELAY_ENV, ResumableRandomSampler, epoch_dataloader, make_dataloader, seed_for_step, seed_step, step_delay,
)
from talking_head.training.datasets import held_out, resolve_data_dir  # noqa: F401
from talking_head.training.diffusion_pair import (  # noqa: F401
    PREDICTION_TYPES, STRUCTURE_LOSSES, TIMESTEP_SAMPLING, DiffusionPair, build_mask_noise, build_unet,
    lip_heatmaps, make_diffusion_pair, mouth_boxes, predicted_sample, region_loss, sample_timesteps, ssim_map,
)
from talking_head.training.logs import (  # noqa: F401
    METRICS_FILE, JsonlLog, batch_ids, batch_log, draw_landmarks, log_scalars, log_video, metrics_log,
    to_uint8_video, upscale_frames, weights_checksum, write_validation_mp4,
)
from talking_head.training.loop import TrainingRun, UpdateLoop  # noqa: F401
from talking_head.training.metrics import landmark_distance, psnr  # noqa: F401
from talking_head.training.run_setup import (  # noqa: F401
    LR_SCHEDULERS, add_common_args, check_common_args, finish, init_trackers, make_accelerator, make_ema,
    make_lr_scheduler, parse_json_kwargs, resolve_mixed_precision,
)
