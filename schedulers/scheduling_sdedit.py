"""The project's noise schedule and the SDEdit-style start of sampling (DESIGN.md 2.5).

Training uses a plain diffusers `DDPMScheduler` with 1000 timesteps. Sampling
does not start from pure noise: the mask-noised identity frames are noised to
timestep `t_start` (default 300, the paper's best row in its Table 2) and
denoised from there to 0. With DDPM and no step count given that is 300 steps,
t = 299, 298, ..., 0.

diffusers' own `set_timesteps(300)` would not do this: with "leading" spacing
it spreads 300 steps over the whole range and starts at t = 897. So this
module builds the timesteps explicitly, for any scheduler:

* schedulers whose `set_timesteps` takes `timesteps=` (DDPM, DPM-Solver,
  Euler, ...) get `num_inference_steps` evenly spaced integers from
  `t_start - 1` down to 0;
* the others (DDIM, ...) get a full-range schedule whose stride makes about
  `num_inference_steps` of its timesteps fall below `t_start`, and keep those
  (the img2img "strength" approach), so their own step arithmetic still holds.
"""

from __future__ import annotations

import inspect
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_T_START = 300

# Short names accepted by the CLI and the evaluation sweeps.
SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


def default_ddpm_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """The training and default sampling scheduler: DDPM, 1000 steps, linear betas.

    Frames live in [-1, 1], so `clip_sample` keeps predicted clean frames in range.
    """
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type=prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
        variance_type="fixed_small",
    )


def scheduler_from_name(name: str, like):
    """A scheduler of kind `name` ("ddpm", "ddim", "dpm") sharing `like`'s noise schedule.

    `like` is the pipeline's scheduler (or its config): the betas and the
    prediction type must stay those the model was trained with.
    """
    key = str(name).strip().lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    config = like.config if hasattr(like, "config") else like
    if key == "dpm":
        # The usual DPM-Solver++ settings; thresholding stays off (frames are not latents).
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    return SCHEDULERS[key].from_config(config)


def t_start_from_strength(strength: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """img2img-style `strength` in (0, 1] -> the starting timestep count."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return max(1, int(round(float(strength) * num_train_timesteps)))


def validate_t_start(t_start, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    if isinstance(t_start, bool) or not isinstance(t_start, (int, np.integer)) and not (
        isinstance(t_start, float) and float(t_start).is_integer()
    ):
        raise ValueError(f"t_start must be a whole number of timesteps, got {t_start!r}")
    t_start = int(t_start)
    if not 1 <= t_start <= num_train_timesteps:
        raise ValueError(f"t_start must be in [1, {num_train_timesteps}], got {t_start}")
    return t_start


def sdedit_timesteps(scheduler, t_start: int = DEFAULT_T_START, num_inference_steps: int | None = None,
                     device=None) -> torch.Tensor:
    """Set `scheduler` up to denoise from `t_start` to 0 and return its timesteps (descending).

    `t_start` counts timesteps: 300 means the first denoising step is at t = 299
    (the last of the first 300 training timesteps). `num_inference_steps=None`
    means one step per timestep (t_start steps, the paper's DDPM setting).
    The first returned timestep is the one the starting frames must be noised to.
    """
    num_train = int(scheduler.config.num_train_timesteps)
    t_start = validate_t_start(t_start, num_train)
    if num_inference_steps is None:
        num_inference_steps = t_start
    if isinstance(num_inference_steps, bool) or int(num_inference_steps) != num_inference_steps or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a whole number >= 1, got {num_inference_steps!r}")
    steps = min(int(num_inference_steps), t_start)

    if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
        timesteps = np.unique(np.round(np.linspace(t_start - 1, 0, steps)).astype(np.int64))[::-1].copy()
        scheduler.set_timesteps(timesteps=timesteps.tolist(), device=device)
        result = scheduler.timesteps
    else:
        if getattr(scheduler, "order", 1) != 1:
            # Multistep solvers index their sigmas by step: truncating their schedule would break them.
            raise ValueError(f"{type(scheduler).__name__} cannot start at t_start: it takes no explicit timesteps")
        # Full-range schedule with stride ~ t_start / steps; keep the part below t_start.
        # The scheduler's own step arithmetic (stride = T // num_inference_steps) still holds.
        stride = max(1, t_start // steps)
        full = max(1, num_train // stride)
        scheduler.set_timesteps(full, device=device)
        keep = scheduler.timesteps < t_start
        if not bool(keep.any()):
            raise ValueError(
                f"{type(scheduler).__name__} with {steps} steps has no timestep below t_start={t_start}; "
                "use more steps or a larger t_start"
            )
        scheduler.timesteps = scheduler.timesteps[int(torch.nonzero(keep)[0]):]
        result = scheduler.timesteps
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    return result
