#!/usr/bin/env python
"""Train the KFusion audio -> landmark model of TalkingHeadPipeline (DESIGN.md 2.2).

    accelerate launch train/train_landmarks.py --data_dir /path/to/prepared --output_dir out/landmarks

Each example is a window of --clip_frames video frames: its audio (exactly those frames' audio), the
landmarks of a reference frame of the same person at another moment as the identity landmarks (what the
pipeline takes from the identity photo), the clip's emotion (dropped to "no emotion" with probability
--p_uncond, so the model also works without one), and the window's landmarks as the target. Loss
(`talking_head.models.landmark_loss`): 0.2 * MSE(all 68 points) + 0.8 * MSE(mouth points) + 0.5 *
MSE(frame-to-frame velocity), weights set by --all_weight, --mouth_weight, --velocity_weight.

Validation (held-out split): the loss and the landmark distances of DESIGN 5 (M-LD over the mouth, F-LD
over all points; per frame mean-centred, pixels of a 256² frame), next to the static baseline (identity
landmarks repeated); the first held-out clip is rendered with the ground-truth (green) and predicted
(red) landmarks as an MP4 with its audio and as a TensorBoard video.

Saves OUTPUT_DIR/landmark_model (`KFusionLandmarkModel.from_pretrained` loads it; give it to
train_diffusion.py --landmark_model).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from talking_head.constants import NUM_EMOTIONS
from talking_head.data.dataset import TalkingHeadClipDataset, collate_clips
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel, landmark_loss
from talking_head.training import (
    JsonlLog, LANDMARK_PRESETS, UpdateLoop, add_common_args, batch_log, check_common_args, draw_landmarks, finish,
    held_out, init_trackers, landmark_distance, log_scalars, log_video, make_accelerator, make_dataloader, make_ema,
    make_lr_scheduler, metrics_log, resolve_data_dir, save_component_atomic, start_or_resume, to_uint8_video,
    weights_checksum, write_validation_mp4,
)

logger = logging.getLogger("train_landmarks")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(LANDMARK_PRESETS), default="paper",
                       help="tiny (0.1M parameters, for tests) or paper (KFusionLandmarkModel's defaults)")
    model.add_argument("--wav2vec2_model", type=str, default=None,
                       help="a local wav2vec 2.0 folder for the Context domain (the paper's); default: log-mel")
    model.add_argument("--pretrained_model", type=str, default=None,
                       help="continue from a saved KFusionLandmarkModel folder instead of a fresh --preset one")
    model.add_argument("--clip_frames", type=int, default=32, help="frames per training window")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--all_weight", type=float, default=0.2, help="weight of the MSE over all 68 points")
    loss.add_argument("--mouth_weight", type=float, default=0.8, help="weight of the MSE over the 20 mouth points")
    loss.add_argument("--velocity_weight", type=float, default=0.5,
                      help="weight of the MSE of frame-to-frame differences (against jitter)")
    loss.add_argument("--p_uncond", type=float, default=0.1, help="probability of training without the emotion")
    val = parser.add_argument_group("validation")
    val.add_argument("--validation_clips", type=int, default=32, help="held-out windows scored at each validation")
    val.add_argument("--validation_video_size", type=int, default=128, help="side of the validation video frames")
    add_common_args(parser, output_dir="out/train_landmarks", train_batch_size=16, max_train_steps=3000,
                    learning_rate=1e-3, checkpointing_steps=500, validation_steps=250, lr_warmup_steps=100)
    args = parser.parse_args(argv)
    check_common_args(args)
    if args.clip_frames < 2:
        parser.error("--clip_frames must be >= 2 (the loss has a velocity term)")
    return args


class LandmarkClipDataset(TalkingHeadClipDataset):
    """TalkingHeadClipDataset without decoding the frames (the landmark model never sees them).

    Overrides the dataset's frame reader with a 1×1 black image: a landmark batch then costs the audio and
    landmark reads only. (If that reader is ever renamed, this just decodes frames again: slower, still right.)
    """

    def _frame(self, c: int, f: int) -> np.ndarray:  # noqa: D102
        return np.zeros((1, 1, 3), dtype=np.uint8)


def build_model(args) -> KFusionLandmarkModel:
    if args.pretrained_model:
        return KFusionLandmarkModel.from_pretrained(args.pretrained_model)
    kwargs = dict(LANDMARK_PRESETS[args.preset])
    if args.wav2vec2_model:
        return KFusionLandmarkModel.from_wav2vec2_pretrained(args.wav2vec2_model, **kwargs)
    return KFusionLandmarkModel(**kwargs)


def batch_fps(batch) -> float:
    fps = batch["fps"]
    if not torch.allclose(fps, fps[0]):
        raise ValueError(f"a batch mixes frame rates {sorted(set(fps.tolist()))}; prepare the data at one fps")
    return float(fps[0])


def forward(model, batch, emotion_labels=None):
    return model(batch["audio"], batch["reference_landmarks"], num_frames=batch["landmarks"].shape[1],
                 fps=batch_fps(batch), emotion_labels=emotion_labels).landmarks


class Validator:
    def __init__(self, args, data_dir, accelerator, metrics: JsonlLog):
        self.args, self.accelerator, self.metrics = args, accelerator, metrics
        # Identity landmarks from the same held-out clip (another moment of it), like an identity photo
        # taken from the same recording.
        dataset = held_out(lambda split: LandmarkClipDataset(data_dir, split=split, clip_frames=args.clip_frames,
                                                             random_crop=False, seed=args.seed,
                                                             reference="same_clip"), data_dir)
        split = dataset.split
        n = min(len(dataset), args.validation_clips)
        self.indices = sorted(set(np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()))
        self.items = [dataset[i] for i in self.indices]
        # The first clip again, with its frames, for the video.
        video_set = TalkingHeadClipDataset(data_dir, split=split, clip_frames=args.clip_frames, random_crop=False,
                                           seed=args.seed, sample_size=args.validation_video_size,
                                           reference="same_clip")
        self.video_item = video_set[self.indices[0]]
        self.static = None

    @torch.no_grad()
    def __call__(self, model, global_step: int) -> dict:
        args, device = self.args, self.accelerator.device
        was_training = model.training
        model.eval()
        losses, preds, targets, identities = [], [], [], []
        for start in range(0, len(self.items), args.train_batch_size):
            batch = collate_clips(self.items[start: start + args.train_batch_size])
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            pred = forward(model, batch, batch["emotion"])
            losses.append(landmark_loss(pred, batch["landmarks"], mouth_weight=args.mouth_weight,
                                        all_weight=args.all_weight, velocity_weight=args.velocity_weight).item())
            preds.append(pred.cpu())
            targets.append(batch["landmarks"].cpu())
            identities.append(batch["reference_landmarks"].cpu())
        pred, target = torch.cat(preds), torch.cat(targets)
        m_ld, f_ld = landmark_distance(pred, target)
        results = {"val/loss": float(np.mean(losses)), "val/m_ld": m_ld, "val/f_ld": f_ld}
        if self.static is None:  # the floor: the identity landmarks, not moving
            static = torch.cat(identities)[:, None].expand_as(target)
            self.static = landmark_distance(static, target)
        results["val/m_ld_static"], results["val/f_ld_static"] = self.static

        item = self.video_item
        batch = collate_clips([item])
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        pred = forward(model, batch, batch["emotion"])[0].cpu().numpy()
        video = draw_landmarks(to_uint8_video(item["frames"]), (item["landmarks"].numpy(), (0, 220, 0)),
                               (pred, (230, 30, 30)))
        fps = float(item["fps"])
        log_video(self.accelerator, "validation/landmarks_truth_green_pred_red", video, global_step, fps)
        write_validation_mp4(Path(args.output_dir) / "validation" / f"step-{global_step:07d}.mp4", video, fps,
                             audio=item["audio"].numpy())
        model.train(was_training)
        log_scalars(self.accelerator, self.metrics, results, global_step)
        logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.5g}" for k, v in results.items()))
        return results


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    logger.info(accelerator.state)
    output_dir = Path(args.output_dir)

    data_dir = resolve_data_dir(args, accelerator, kind="video", size=64)
    train_dataset = LandmarkClipDataset(data_dir, split="train", clip_frames=args.clip_frames, random_crop=True,
                                        seed=args.seed)

    model = build_model(args)
    if args.gradient_checkpointing:
        logger.warning("KFusionLandmarkModel does not support gradient checkpointing; ignoring the flag")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    train_dataloader, sampler = make_dataloader(train_dataset, args.train_batch_size, args.seed,
                                                args.dataloader_num_workers, collate_clips)
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                           lr_scheduler)
    # The EMA starts from the prepared (on every process identical) weights.
    ema = make_ema(accelerator, args, model, KFusionLandmarkModel)

    init_trackers(accelerator, args, "train_landmarks")
    metrics = metrics_log(accelerator, output_dir)
    batches = batch_log(accelerator, args)
    run_shape, global_step, first_epoch, skip_batches = start_or_resume(
        accelerator, args, output_dir, train_dataloader, ema)

    unwrapped = accelerator.unwrap_model(model)
    logger.info(f"{len(train_dataset)} training windows of {args.clip_frames} frames from {data_dir}; "
                f"{accelerator.num_processes} process(es) x batch {args.train_batch_size} x accumulation "
                f"{accelerator.gradient_accumulation_steps}; {args.max_train_steps} updates; model "
                f"{sum(p.numel() for p in unwrapped.parameters() if p.requires_grad) / 1e6:.2f}M trainable parameters")
    validator = None
    if accelerator.is_main_process and args.validation_clips > 0:
        validator = Validator(args, data_dir, accelerator, metrics)

    def validate():
        if validator is None:
            return
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        with torch.random.fork_rng(devices=[]):
            validator(unwrapped, loop.global_step)
        if ema is not None:
            ema.restore(unwrapped.parameters())

    model.train()
    loop = UpdateLoop(accelerator, args, train_dataloader=train_dataloader, sampler=sampler,
                      output_dir=output_dir, run_shape=run_shape, global_step=global_step,
                      first_epoch=first_epoch, skip_batches=skip_batches, metrics=metrics, batches=batches,
                      validate=validate, ema=ema, ema_model=model, loss_format=".3g")
    for batch in loop:
        with accelerator.accumulate(model):
            labels = batch["emotion"]
            if args.p_uncond > 0:
                drop = torch.rand(labels.shape, device=labels.device) < args.p_uncond
                labels = torch.where(drop, torch.full_like(labels, NUM_EMOTIONS), labels)
            pred = forward(model, batch, labels)
            loss = landmark_loss(pred, batch["landmarks"], mouth_weight=args.mouth_weight,
                                 all_weight=args.all_weight, velocity_weight=args.velocity_weight)
            loop.backward_and_step(loss, pred.shape[0], optimizer, lr_scheduler, params)
        loop.end_micro_step(batch, loss.item(), lr_scheduler)
    global_step = loop.global_step

    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(unwrapped.parameters())
    if args.log_batch_ids:
        batches.write(final=True, step=global_step, checksum=weights_checksum(unwrapped))
    if accelerator.is_main_process:
        path = save_component_atomic(unwrapped, output_dir / "landmark_model")
        logger.info(f"saved the landmark model to {path} (train_diffusion.py --landmark_model {path})")
    del model, unwrapped, optimizer, lr_scheduler, train_dataloader, ema, validator, params
    finish(accelerator)


if __name__ == "__main__":
    main(sys.argv[1:])
