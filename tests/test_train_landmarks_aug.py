"""train/train_landmarks.py's issue-12 helpers: head-pose alignment, speed change, synthetic mouth opening,
and the augmentation wrapper (pure tensor functions, no training)."""

import argparse
import importlib.util
import math

import pytest
import torch
from conftest import REPO

from talking_head.evaluation.lip_motion import mouth_opening
from talking_head.head_pose import POSE_POINTS, align_pose

_spec = importlib.util.spec_from_file_location("train_landmarks", REPO / "train" / "train_landmarks.py")
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)


def _face(batch=2):
    torch.manual_seed(0)
    return torch.rand(batch, 68, 2) * 0.4 + 0.3


def test_align_pose_removes_a_similarity_and_keeps_the_expression():
    ref = _face()
    th = 0.2
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    moved = ((ref - 0.5) @ rot.T) * 1.1 + 0.5 + torch.tensor([0.05, -0.03])
    frames = moved[:, None].repeat(1, 3, 1, 1)
    frames[:, :, 60:68] += 0.02  # an expression on points outside the pose points
    out = align_pose(frames, ref)
    pose = list(POSE_POINTS)
    assert torch.allclose(out[..., pose, :], ref[:, None, pose].expand_as(out[..., pose, :]), atol=1e-5)
    assert (out[..., 60:68, :] - ref[:, None, 60:68]).abs().mean() > 0.01  # the expression survives


def test_align_pose_smoothing_keeps_a_slow_turn_and_drops_the_jitter():
    ref = _face(1)
    frames = 24
    slow = torch.linspace(0.0, 0.2, frames)  # the head turns 0.2 rad over the window
    jitter = 0.02 * torch.tensor([(-1.0) ** f for f in range(frames)])  # the fit's frame-to-frame noise
    seq = []
    for th in (slow + jitter).tolist():
        rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        seq.append((ref[0] - 0.5) @ rot.T + 0.5)
    seq = torch.stack(seq)[None]
    assert torch.equal(align_pose(seq, ref, smooth_frames=0.0), align_pose(seq, ref))

    def residual_turn(out):  # the angle left between each aligned frame's pose points and the reference's
        pose = list(POSE_POINTS)
        a, b = out[0][:, pose] - out[0][:, pose].mean(1, keepdim=True), ref[0, pose] - ref[0, pose].mean(0)
        return torch.atan2((a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).sum(-1), (a * b).sum((-1, -2)))

    per_frame, smoothed = residual_turn(align_pose(seq, ref)), residual_turn(align_pose(seq, ref, smooth_frames=2.0))
    assert per_frame.abs().max() < 1e-5  # each frame's own fit removes its jitter too ...
    # ... the smoothed fit removes only the slow turn: a frame-to-frame wobble (in real data mostly the fit's own
    # noise from 13 detected points) is not passed on to the targets.
    assert torch.allclose(smoothed[4:-4].abs(), torch.full((frames - 8,), 0.02), atol=3e-3)


def test_change_speed_keeps_audio_and_landmarks_in_step():
    frames, ctx, spf = 32, 6, 640
    lms = torch.arange(frames, dtype=torch.float32)[None, :, None, None].expand(1, frames, 68, 2).clone()
    audio = torch.zeros(1, (frames + 2 * ctx) * spf)
    for f in range(-ctx, frames + ctx):  # a click in the middle of every frame
        audio[0, (f + ctx) * spf + spf // 2] = 1.0
    batch = {"landmarks": lms, "audio": audio, "fps": torch.tensor([25.0])}
    for factor in (0.9, 1.1):
        out = T.change_speed(batch, factor, ctx)
        n = out["landmarks"].shape[1]
        r = n / frames
        assert n == round(frames * factor) and out["audio"].shape[1] == (n + 2 * ctx) * spf
        # Each click, at old time f + 0.5, lands at new time (f + 0.5) * r: the landmark there shows frame f.
        clicks = (out["audio"][0] > 0.05).nonzero().flatten().float() / spf - ctx
        old_times = clicks / r
        assert torch.allclose(old_times - old_times.floor(), torch.full_like(old_times, 0.5), atol=0.06)
        j = 10
        assert float(out["landmarks"][0, j, 0, 0]) == pytest.approx((j + 0.5) / r - 0.5, abs=1e-4)
    assert T.change_speed(batch, 1.0, ctx) is batch


def test_open_mouth_opens_along_the_face_down_direction():
    ref = torch.zeros(1, 68, 2)
    ref[0, :, 0] = torch.linspace(0.3, 0.7, 68)
    ref[0, 0], ref[0, 16] = torch.tensor([0.25, 0.45]), torch.tensor([0.75, 0.45])  # width 0.5, level
    ref[0, 62], ref[0, 66] = torch.tensor([0.5, 0.7]), torch.tensor([0.5, 0.71])
    out = T.open_mouth(ref, torch.tensor([0.04]))
    assert float(mouth_opening(out[0].numpy())) == pytest.approx((0.01 + 0.04 * 0.5) / 0.5, rel=1e-4)
    assert torch.equal(out[0, 62], ref[0, 62])  # the upper lip stays
    assert torch.equal(T.open_mouth(ref, torch.zeros(1)), ref)


def _args(**kw):
    base = dict(aug_speed=0.0, aug_speed_prob=0.5, audio_context_frames=0, pose_align=False, pose_smoothing=0.0, aug_open_identity=0.0,
                aug_open_amount=0.08, aug_gain_db=0.0, aug_clip_prob=0.0, aug_noise_prob=0.0,
                aug_noise_snr=(15.0, 45.0), aug_face_scale=0.0, aug_face_aspect=0.0, aug_face_shift=0.0)
    return argparse.Namespace(**{**base, **kw})


def test_augment_is_a_no_op_when_off_and_moves_identity_with_target():
    batch = {"audio": torch.randn(3, 640 * 8) * 0.1, "landmarks": _face(3)[:, None].repeat(1, 8, 1, 1),
             "reference_landmarks": _face(3), "fps": torch.full((3,), 25.0)}
    out, clean = T.augment(batch, _args(), torch.Generator().manual_seed(0))
    assert all(torch.equal(out[k], batch[k]) for k in ("audio", "landmarks", "reference_landmarks"))
    out, clean = T.augment(batch, _args(aug_face_scale=0.1, aug_face_aspect=0.1, aug_face_shift=0.05,
                                        aug_gain_db=6.0, aug_clip_prob=1.0, aug_noise_prob=1.0),
                           torch.Generator().manual_seed(0))
    # The same transform on identity and target: the target minus the identity is only scaled.
    assert not torch.allclose(out["reference_landmarks"], batch["reference_landmarks"])
    assert torch.allclose(out["landmarks"] - out["reference_landmarks"][:, None],
                          torch.zeros_like(out["landmarks"]), atol=1e-6)
    assert torch.equal(clean["audio"], batch["audio"])  # the silence mask reads the un-noised audio
    clipped, _ = T.augment(batch, _args(aug_clip_prob=1.0), torch.Generator().manual_seed(0))
    assert clipped["audio"].abs().max() == 1.0  # boosted 6-20 dB and clipped at full scale
    noisy, _ = T.augment(batch, _args(aug_noise_prob=1.0, aug_noise_snr=(20.0, 20.0)),
                         torch.Generator().manual_seed(0))
    noise_rms = (noisy["audio"] - batch["audio"]).pow(2).mean(1).sqrt()
    assert torch.allclose(noise_rms / batch["audio"].pow(2).mean(1).sqrt(), torch.full((3,), 0.1), rtol=0.05)


def test_data_dir_repeat_weights_the_identity_with_fresh_windows(tmp_path):
    from talking_head.data.synthetic import make_synthetic_dataset

    dev = make_synthetic_dataset(tmp_path / "dev", seconds=2.0, size=24)
    extra = make_synthetic_dataset(tmp_path / "extra", seconds=1.0, size=24, seed=1)
    args = T.parse_args(["--data_dir", str(dev), "--clip_frames", "8", "--data_dir_repeat", "3",
                         "--extra_data_dir", str(extra)])
    one = T.training_set(T.parse_args(["--data_dir", str(dev), "--clip_frames", "8"]), dev)
    parts = T.training_set(args, dev).datasets
    assert [len(p) for p in parts[:3]] == [len(one)] * 3 and len(parts) == 4  # 3 copies of dev, then extra
    # Each copy draws its own windows: the copies are not the same items three times.
    starts = [[p.window(i) for i in range(len(p))] for p in parts[:3]]
    assert starts[0] != starts[1] and starts[1] != starts[2]
    with pytest.raises(SystemExit):
        T.parse_args(["--data_dir", str(dev), "--data_dir_repeat", "0"])


@pytest.mark.parametrize("value", ["-0.1", "0.5", "nan"])
def test_bad_freq_warp_is_refused(value, tmp_path):
    with pytest.raises(SystemExit):
        T.parse_args(["--data_dir", str(tmp_path), "--aug_freq_warp", value])
