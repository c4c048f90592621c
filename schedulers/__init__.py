from talking_head.schedulers.scheduling_sdedit import (
    DEFAULT_T_START,
    NUM_TRAIN_TIMESTEPS,
    SCHEDULERS,
    default_ddpm_scheduler,
    scheduler_from_name,
    sdedit_timesteps,
    t_start_from_strength,
)
