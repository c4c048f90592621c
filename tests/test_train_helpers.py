"""The shared training machinery (talking_head.training), in-process: checkpoints, data order, the
diffusion training pair, metrics, and that each model's loss falls on a fixed tiny batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talking_head import training
from talking_head.constants import NULL_EMOTION
from talking_head.schedulers.scheduling_sdedit import default_ddpm_scheduler
from talking_head.trainers.landmarks import LANDMARK_PRESETS

from conftest import synthetic_face_landmarks


# ------------------------------------------------------------------------------------------------ checkpoints
class FakeAccelerator:
    """The part of Accelerator that save_checkpoint uses; save_state can be made to die half-way."""

    is_main_process = True

    def __init__(self, die_after_files: int | None = None):
        self.die_after_files = die_after_files

    def wait_for_everyone(self):
        pass

    def save_state(self, output_dir):
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")):
            if self.die_after_files is not None and k == self.die_after_files:
                raise KeyboardInterrupt("killed while saving")  # what an interrupt looks like in-process
            (out / name).write_bytes(b"x" * 10)


def test_checkpoints_listed_pruned_and_latest(tmp_path):
    acc = FakeAccelerator()
    for step in (2, 4, 6, 8):
        training.save_checkpoint(acc, tmp_path, step, {"seed": 0}, total_limit=3)
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [4, 6, 8]
    assert training.latest_checkpoint(tmp_path).name == "checkpoint-8"
    state = json.loads((tmp_path / "checkpoint-8" / training.TRAINING_STATE).read_text())
    assert state["global_step"] == 8 and state["seed"] == 0
    # A folder named like a checkpoint but without the state file is not a checkpoint.
    (tmp_path / "checkpoint-100").mkdir()
    assert training.latest_checkpoint(tmp_path).name == "checkpoint-8"
    assert training.resolve_resume_checkpoint("latest", tmp_path).name == "checkpoint-8"
    assert training.resolve_resume_checkpoint("checkpoint-6", tmp_path) == tmp_path / "checkpoint-6"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        training.resolve_resume_checkpoint(str(tmp_path / "checkpoint-100"), tmp_path)
    with pytest.raises(ValueError, match="no such checkpoint"):
        training.resolve_resume_checkpoint("checkpoint-7", tmp_path)
    assert training.resolve_resume_checkpoint(None, tmp_path) is None
    assert training.resolve_resume_checkpoint("latest", tmp_path / "empty") is None  # fresh start
    # Saving a step again replaces that checkpoint whole.
    training.save_checkpoint(acc, tmp_path, 8, {"seed": 1}, total_limit=3)
    assert json.loads((tmp_path / "checkpoint-8" / training.TRAINING_STATE).read_text())["seed"] == 1


def test_an_interrupted_save_never_becomes_latest(tmp_path):
    training.save_checkpoint(FakeAccelerator(), tmp_path, 10, {}, total_limit=2)
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(FakeAccelerator(die_after_files=2), tmp_path, 20, {}, total_limit=2)
    assert (tmp_path / ".checkpoint-20.tmp").is_dir()  # the half-written state...
    assert not (tmp_path / "checkpoint-20").exists()  # ...never got the checkpoint name
    assert training.latest_checkpoint(tmp_path).name == "checkpoint-10"
    assert [s for s, _ in training.list_checkpoints(tmp_path)] == [10]  # and pruned nothing
    with pytest.raises(ValueError):
        training.resolve_resume_checkpoint(str(tmp_path / ".checkpoint-20.tmp"), tmp_path)
    training.clean_partial_checkpoints(tmp_path)  # what the next run does first
    assert not (tmp_path / ".checkpoint-20.tmp").exists() and (tmp_path / "checkpoint-10").is_dir()


# ------------------------------------------------------------------------------------------------ data order
def test_data_order_is_seeded_per_epoch_and_resumable():
    a, b = training.ResumableRandomSampler(50, seed=3), training.ResumableRandomSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(training.ResumableRandomSampler(50, seed=4)) != list(training.ResumableRandomSampler(50, seed=3))
    # After 7 updates of 3 per epoch with 2 batches each: epoch 2, 2 batches of it already done.
    assert training.resume_position(7, updates_per_epoch=3, gradient_accumulation_steps=2) == (2, 2)
    assert training.resume_position(6, 3, 2) == (2, 0)
    assert training.seed_for_step(0, 0, 5, 0) == training.seed_for_step(0, 0, 5, 0)
    assert len({training.seed_for_step(0, r, s, m) for r in (0, 1) for s in (0, 1) for m in (0, 1)}) == 8


# ------------------------------------------------------------------------------------------------ diffusion pair
def _batch(size=64, frames=3, batch=2, seed=0):
    """A batch as TalkingHeadClipDataset gives it: stored face crops of `size` px, normalised landmarks."""
    g = torch.Generator().manual_seed(seed)
    lm = torch.from_numpy(synthetic_face_landmarks(size) / size).float()
    ref_lm = lm.clone()
    ref_lm[60:68, 1] += 0.02  # the reference's mouth is open
    return {
        "frames": torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1,
        "reference": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "landmarks": lm[None, None].repeat(batch, frames, 1, 1),
        "reference_landmarks": ref_lm[None].repeat(batch, 1, 1),
        "emotion": torch.tensor([1, 5][:batch]),
    }


BOX = 16  # the UNet's mouth box in these tests


@pytest.mark.parametrize("prediction_type", training.PREDICTION_TYPES)
def test_diffusion_pair_matches_the_pipeline_and_the_scheduler(prediction_type):
    from talking_head.mouth_box import MouthBox
    from talking_head.pipelines.pipeline_talking_head import UNET_IN_CHANNELS

    scheduler = default_ddpm_scheduler(prediction_type)
    mask_noise = training.build_mask_noise(BOX)
    batch = _batch()
    t = torch.tensor([10, 299])
    torch.manual_seed(0)
    pair = training.make_diffusion_pair(batch, mask_noise, scheduler, BOX, prediction_type, t, p_uncond=0.0)
    assert pair.model_input.shape == (2, UNET_IN_CHANNELS, 3, BOX, BOX)
    # x0 is the clip cut to the box around the region points of the frames and the reference, as the pipeline cuts.
    points = torch.cat([batch["landmarks"][0], batch["reference_landmarks"][0][None]]) * 64
    box = MouthBox.from_landmarks(points, indices=mask_noise.config.region_points)
    x0 = box.cut(batch["frames"][0].transpose(0, 1), BOX).transpose(0, 1)
    torch.testing.assert_close(pair.sample[0], x0)
    torch.testing.assert_close(pair.reference[0], box.cut(batch["reference"][:1], BOX)[0])
    # Channels in the pipeline's order: noisy, context, mask, heatmaps, reference.
    assert torch.equal(pair.model_input[:, :3], pair.noisy) and torch.equal(pair.model_input[:, 3:6], pair.cond)
    assert torch.equal(pair.model_input[:, 6:7], pair.mask)
    assert torch.equal(pair.model_input[:, 10:13], pair.reference[:, :, None].expand_as(pair.sample))
    # The context is the target itself outside the region, noise inside it; the region covers the reference too.
    keep = ~pair.mask.bool().expand_as(pair.sample)
    assert torch.equal(pair.cond[keep], pair.sample[keep]) and 0 < pair.mask.mean() < 1
    assert torch.equal(pair.class_labels, batch["emotion"])
    # The target is what the scheduler's prediction_type means, and it maps back to x0.
    x0 = pair.sample
    noise = (pair.noisy - scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1, 1) * x0) / (
        1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1, 1)
    if prediction_type == "epsilon":
        torch.testing.assert_close(pair.target, noise, atol=1e-4, rtol=1e-4)
    elif prediction_type == "sample":
        assert torch.equal(pair.target, x0)
    else:
        torch.testing.assert_close(pair.target, scheduler.get_velocity(x0, noise, t), atol=1e-4, rtol=1e-4)
    recovered = training.predicted_sample(pair.target, pair.noisy, t, scheduler, prediction_type)
    torch.testing.assert_close(recovered, x0, atol=1e-4, rtol=1e-4)


def test_box_jitter_moves_and_scales_the_box_but_keeps_the_mouth_inside():
    batch = _batch()
    torch.manual_seed(3)
    jittered = training.mouth_boxes(batch, BOX, jitter=True)
    exact = training.mouth_boxes(batch, BOX)
    assert not torch.allclose(jittered["landmarks"], exact["landmarks"])
    mouth = jittered["landmarks"][:, :, 48:68]
    assert (mouth > 0.05).all() and (mouth < 0.95).all()


def test_region_loss_counts_only_the_region_and_the_structure_terms():
    x = torch.zeros(1, 3, 2, 16, 16)
    y = torch.zeros_like(x)
    y[..., :8] = 1.0  # differs only on the left half
    mask = torch.zeros(1, 1, 2, 16, 16)
    assert training.region_loss(x, y, mask + 0) == 0  # an empty region scores nothing
    mask[..., 8:] = 1
    assert training.region_loss(x, y, mask) == 0  # the right half is identical
    mask[..., :] = 1
    assert training.region_loss(x, y, mask) == pytest.approx(0.5)
    for structure in ("ssim", "edge"):
        assert training.region_loss(x, y, mask, structure) > training.region_loss(x, y, mask)
        assert training.region_loss(y, y, mask, structure) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        training.region_loss(x, y, mask, "perceptual")


def test_region_loss_weighs_the_lips_when_asked():
    x = torch.zeros(1, 3, 1, 16, 16)
    y = torch.zeros_like(x)
    y[..., :8] = 1.0  # wrong on the left half
    mask = torch.ones(1, 1, 1, 16, 16)
    lips = torch.zeros_like(mask)
    lips[..., :8] = 1.0  # the lips are where the error is
    plain = training.region_loss(x, y, mask)
    assert training.region_loss(x, y, mask, lips=lips, lip_weight=0.0) == pytest.approx(plain)
    # weights 1 + 3 on the wrong half, 1 on the right one: mean error (4 * 1) / (4 + 1) = 0.8
    assert training.region_loss(x, y, mask, lips=lips, lip_weight=3.0) == pytest.approx(0.8)
    assert training.region_loss(x, x, mask, lips=lips, lip_weight=3.0) == 0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="lip_weight"):
            training.region_loss(x, y, mask, lips=lips, lip_weight=bad)
    # the lip map is the brightest lip channel of the UNet's heatmaps: outer and inner lips, not jaw / nose
    heatmaps = torch.zeros(1, 3, 1, 16, 16)
    heatmaps[:, 0] = 1.0
    heatmaps[:, 2, :, 4, 4] = 0.7
    assert training.lip_heatmaps(heatmaps).shape == (1, 1, 1, 16, 16)
    assert training.lip_heatmaps(heatmaps).max() == pytest.approx(0.7)


def test_classifier_free_dropout_and_timestep_sampling():
    scheduler, mask_noise, batch = default_ddpm_scheduler(), training.build_mask_noise(BOX), _batch()
    t = torch.tensor([0, 1])
    dropped = training.make_diffusion_pair(batch, mask_noise, scheduler, BOX, "epsilon", t, p_uncond=1.0)
    assert (dropped.class_labels == NULL_EMOTION).all()
    torch.manual_seed(0)
    low = training.sample_timesteps(4000, 1000, "below_t_start", 300, 0.0, "cpu")
    assert low.min() >= 0 and low.max() == 299
    full = training.sample_timesteps(4000, 1000, "uniform", 300, 0.0, "cpu")
    assert full.max() > 900 and full.min() >= 0
    mixed = training.sample_timesteps(4000, 1000, "mixed", 300, 0.8, "cpu")
    assert 0.8 < (mixed < 300).float().mean() < 0.9  # 0.8 + 0.2 * 0.3 = 0.86
    with pytest.raises(ValueError):
        training.sample_timesteps(1, 1000, "bogus", 300, 0.0, "cpu")


def test_landmark_distance_removes_translation():
    target = torch.from_numpy(synthetic_face_landmarks(1)).float()[None]
    m_ld, f_ld = training.landmark_distance(target + 0.1, target)
    assert m_ld < 1e-4 and f_ld < 1e-4
    moved = target.clone()
    moved[:, 48:68, 1] += 2 / 256  # the mouth 2 px lower at 256²
    m_ld, f_ld = training.landmark_distance(moved, target)
    assert m_ld == pytest.approx(2 * (1 - 20 / 68), rel=1e-3)  # minus the shift of the mean
    assert f_ld < m_ld
    assert training.psnr(torch.zeros(4), torch.zeros(4)) == math.inf
    assert training.psnr(torch.zeros(4), torch.full((4,), 0.2)) == pytest.approx(10 * math.log10(4 / 0.04))


# ------------------------------------------------------------------------------------------------ loss falls
def _train(params, step_fn, steps, lr):
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = step_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_diffusion_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    unet = training.build_unet("tiny", BOX, residual_channel=10)
    scheduler, mask_noise, batch = default_ddpm_scheduler("sample"), training.build_mask_noise(BOX), _batch(frames=2)
    t = torch.tensor([50, 250])

    def step():
        torch.manual_seed(1)  # the same noise every step: a fixed batch
        pair = training.make_diffusion_pair(batch, mask_noise, scheduler, BOX, "sample", t)
        pred = unet(pair.model_input, t, class_labels=pair.class_labels).sample
        return training.region_loss(pred, pair.target, pair.mask)

    losses = _train(unet.parameters(), step, 60, 3e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_landmark_loss_falls_on_a_fixed_batch():
    from talking_head.models.kfusion_landmarks import KFusionLandmarkModel, landmark_loss

    torch.manual_seed(0)
    model = KFusionLandmarkModel(**LANDMARK_PRESETS["tiny"], dropout=0.0)
    frames = 8
    identity = torch.from_numpy(synthetic_face_landmarks(1)).float()[None].repeat(2, 1, 1)
    wave = torch.randn(2, frames * 640) * 0.1
    # Target: the mouth opens and closes over the clip.
    target = identity[:, None].repeat(1, frames, 1, 1).clone()
    target[:, :, 57, 1] += 0.03 * torch.sin(torch.linspace(0, 3.14, frames))[None]
    params = [p for p in model.parameters() if p.requires_grad]
    losses = _train(params, lambda: landmark_loss(model(wave, identity, num_frames=frames).landmarks, target),
                    40, 3e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_emotion_loss_falls_on_a_fixed_batch():
    import importlib.util

    from talking_head.models.emotion_classifier import build_emotion_classifier, build_emotion_feature_extractor

    spec = importlib.util.spec_from_file_location("train_emotion", Path(__file__).parents[1] / "train" / "train_emotion.py")
    train_emotion = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_emotion)
    # Class weights: inverse frequency over the classes present, 0 for absent ones.
    weights = train_emotion.class_weights(np.array([10, 0, 0, 0, 0, 30, 0, 0]), "inverse")
    assert weights.tolist() == pytest.approx([2.0, 0, 0, 0, 0, 2 / 3, 0, 0])
    assert train_emotion.class_weights(np.array([10, 0, 0, 0, 0, 30, 0, 0]), "none").tolist() == [1, 0, 0, 0, 0, 1, 0, 0]

    torch.manual_seed(0)
    model = build_emotion_classifier("conformer-tiny", layerdrop=0.0, mask_time_prob=0.0, hidden_dropout=0.0,
                                     attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                                     final_dropout=0.0)
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    items = [{"audio": torch.from_numpy((np.sin(2 * np.pi * f * t) * 0.3 + 0.01 * rng.standard_normal(8000))
                                        .astype(np.float32)),
              "label": torch.tensor(c), "clip_id": str(c), "speaker": "s"} for f, c in ((150, 0), (400, 5), (900, 1))]
    batch = train_emotion.collate_emotion(items, build_emotion_feature_extractor(model))
    assert batch["input_values"].shape == (3, 8000) and batch["attention_mask"].all()
    losses = _train(model.parameters(), lambda: F.cross_entropy(
        model(batch["input_values"], attention_mask=batch["attention_mask"]).logits, batch["labels"]), 25, 3e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_fine_tuning_keeps_the_pretrained_pipelines_region(tmp_path):
    """train_diffusion --pretrained_unet PIPELINE trains on that pipeline's region and box, not the default."""
    from talking_head.models.mask_noise import GaussianMaskNoise
    from talking_head.presets import build_pipeline
    from talking_head.trainers.diffusion import parse_args, pretrained_region_points

    pipe = build_pipeline("tiny", sample_size=16, with_emotion_classifier=False)
    points = list(range(4, 13)) + list(range(31, 36)) + list(range(48, 68))
    pipe.mask_noise = GaussianMaskNoise(region_points=points)
    pipe.save_pretrained(tmp_path / "pipeline")
    assert pretrained_region_points(tmp_path / "pipeline") == points
    assert pretrained_region_points(tmp_path / "pipeline" / "unet") is None  # a bare UNet folder
    assert pretrained_region_points(None) is None
    args = parse_args(["--data_dir", str(tmp_path), "--region_points", "3-13,31-35,48-67"])
    assert args.region_points[:3] == [3, 4, 5]  # given points win


@pytest.mark.parametrize("flags", [["--lip_weight", "-1"], ["--lip_weight", "nan"],
                                   ["--prediction_type", "epsilon", "--lip_weight", "2"],
                                   ["--prediction_type", "epsilon", "--structure_loss", "ssim"]])
def test_diffusion_trainer_refuses_lip_weights_it_would_ignore_or_cannot_use(flags, tmp_path):
    from talking_head.trainers.diffusion import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--data_dir", str(tmp_path), *flags])
