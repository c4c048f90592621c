import pytest
import torch

from talking_head.schedulers import (
    default_ddpm_scheduler,
    scheduler_from_name,
    sdedit_timesteps,
    t_start_from_strength,
)


def test_default_scheduler_is_1000_step_ddpm():
    s = default_ddpm_scheduler()
    assert type(s).__name__ == "DDPMScheduler"
    assert s.config.num_train_timesteps == 1000


def test_ddpm_sdedit_starts_at_t_start_and_takes_one_step_per_timestep():
    s = default_ddpm_scheduler()
    ts = sdedit_timesteps(s, t_start=300)
    # diffusers' own set_timesteps(300) would start at 897 ("leading" spacing).
    assert ts[0].item() == 299 and ts[-1].item() == 0
    assert len(ts) == 300
    assert torch.all(ts[:-1] - ts[1:] == 1)


@pytest.mark.parametrize("t_start", [1, 100, 200, 300, 500, 1000])
def test_t_start_sweep_first_timestep(t_start):
    ts = sdedit_timesteps(default_ddpm_scheduler(), t_start=t_start)
    assert ts[0].item() == t_start - 1 and len(ts) == t_start


@pytest.mark.parametrize("name,steps", [("ddpm", 50), ("dpm", 25), ("ddim", 50)])
def test_fewer_steps_stay_below_t_start(name, steps):
    s = scheduler_from_name(name, default_ddpm_scheduler())
    ts = sdedit_timesteps(s, t_start=300, num_inference_steps=steps)
    assert len(ts) == steps
    assert 290 <= ts[0].item() <= 299 and ts[-1].item() == 0
    assert torch.all(ts[:-1] > ts[1:])


@pytest.mark.parametrize("name,steps", [("ddpm", 10), ("dpm", 10), ("ddim", 10)])
def test_swapped_schedulers_denoise_a_perfect_prediction_to_the_clean_sample(name, steps):
    """With a model that predicts the true noise, every sampler must land on x0."""
    base = default_ddpm_scheduler()
    s = scheduler_from_name(name, base)
    ts = sdedit_timesteps(s, t_start=300, num_inference_steps=steps)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 2, 8, 8, generator=g) * 1.6 - 0.8
    noise = torch.randn(x0.shape, generator=g)
    x = s.add_noise(x0, noise, ts[:1])
    alphas = base.alphas_cumprod
    for t in ts:
        a = alphas[int(t)]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # the exact noise of the current sample
        x = s.step(eps, t, x, generator=g).prev_sample
    assert torch.allclose(x, x0, atol=0.05), (name, (x - x0).abs().max())


def test_scheduler_keeps_training_noise_schedule():
    base = default_ddpm_scheduler(prediction_type="v_prediction")
    for name in ("ddim", "dpm"):
        s = scheduler_from_name(name, base)
        assert s.config.prediction_type == "v_prediction"
        assert torch.allclose(s.alphas_cumprod, base.alphas_cumprod)


def test_bad_arguments():
    s = default_ddpm_scheduler()
    with pytest.raises(ValueError, match="t_start"):
        sdedit_timesteps(s, t_start=0)
    with pytest.raises(ValueError, match="t_start"):
        sdedit_timesteps(s, t_start=1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sdedit_timesteps(s, t_start=300, num_inference_steps=0)
    with pytest.raises(ValueError, match="unknown scheduler"):
        scheduler_from_name("euler-a", s)
    with pytest.raises(ValueError, match="strength"):
        t_start_from_strength(1.5)
    assert t_start_from_strength(0.3) == 300
