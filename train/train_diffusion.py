#!/usr/bin/env python
"""Train the class-conditioned 3D UNet of TalkingHeadPipeline (DESIGN.md 2.4-2.5) and save a full pipeline.

    accelerate launch train/train_diffusion.py --data_dir /path/to/prepared --preset tiny \
        --landmark_model out/landmarks/landmark_model --emotion_model out/emotion/emotion_classifier \
        --output_dir out/diffusion

Training pairs (DESIGN 2.5; `talking_head.training.make_diffusion_pair`): for a window of F frames of one
person, a reference frame of the same person at another moment is repeated over the F frames and
mask-noised (GaussianMaskNoise) at the window's own landmarks; that is the condition, exactly what the
pipeline builds from the identity frame and the predicted landmarks. The window's frames are the target
x0, noised to a random timestep t; the UNet sees cat[x_t, condition, mask] (in_channels 7) and the
clip's emotion (dropped to the null class with probability --p_uncond for classifier-free guidance).

The prediction target (--prediction_type) is stored in the saved pipeline's scheduler, so sampling always
matches training. See train/README.md for the measurement behind the defaults of --prediction_type and
--timestep_sampling.

Outputs in --output_dir: checkpoint-<step>/ (accelerator.save_state), logs/ (TensorBoard), validation/
(MP4s: mask-noised reference | generated | ground truth, with the clip's audio), metrics.jsonl, and
pipeline/ - a folder `TalkingHeadPipeline.from_pretrained` loads, with the UNet (EMA weights with
--use_ema), the DDPM scheduler, the mask-noise settings, and the landmark model and emotion classifier
given by --landmark_model / --emotion_model (untrained ones otherwise; the run says so).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.data.dataset import TalkingHeadClipDataset, collate_clips
from talking_head.models.emotion_classifier import (build_emotion_classifier, build_emotion_feature_extractor,
                                                    load_emotion_classifier)
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.presets import PRESETS
from talking_head.schedulers.scheduling_sdedit import DEFAULT_T_START, default_ddpm_scheduler
from talking_head.training import (
    JsonlLog, PREDICTION_TYPES, TIMESTEP_SAMPLING, UpdateLoop, add_common_args, batch_log, build_mask_noise,
    build_unet, check_common_args, finish, held_out, init_trackers, log_scalars, log_video, make_accelerator,
    make_dataloader, make_diffusion_pair, make_ema, make_lr_scheduler, metrics_log, predicted_sample, psnr,
    resolve_data_dir, sample_timesteps, start_or_resume, to_uint8_video, upscale_frames, weights_checksum,
    write_validation_mp4,
)
from talking_head.utils import save_pipeline_atomic

logger = logging.getLogger("train_diffusion")

# Chosen by measurement on the dev identity (train/README.md, "Prediction target").
DEFAULT_PREDICTION_TYPE = "sample"
DEFAULT_TIMESTEP_SAMPLING = "mixed"
VALIDATION_TIMESTEPS = (25, 100, 200, 299)  # fixed t for the validation loss: the range SDEdit from 300 visits


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                       help="UNet size: tiny (16/32/64 channels, 3 levels) or paper (32/64/128/256, 4 levels)")
    model.add_argument("--resolution", type=int, default=None,
                       help="frame side in pixels (default: the preset's, 64 tiny / 256 paper)")
    model.add_argument("--clip_frames", type=int, default=16, help="frames per training clip (and pipeline clip)")
    model.add_argument("--unet_in_channels", type=int, choices=(3, 7), default=7,
                       help="7: noisy frames + mask-noised reference + mask; 3: noisy frames only (the paper)")
    model.add_argument("--condition_skip", action="store_true",
                       help="the UNet adds the unmasked reference to its output, so with --prediction_type sample "
                            "it learns a correction to the reference (ClassConditionedUNet3DModel.condition_skip; "
                            "needs --unet_in_channels 7)")
    model.add_argument("--pretrained_unet", type=str, default=None,
                       help="start from this UNet (a UNet folder, or a pipeline folder with unet/) instead of "
                            "a fresh --preset one")
    model.add_argument("--landmark_model", type=str, default=None,
                       help="a KFusionLandmarkModel folder (train_landmarks.py's OUTPUT_DIR/landmark_model) for "
                            "the saved pipeline; without it the pipeline keeps an UNTRAINED landmark model")
    model.add_argument("--emotion_model", type=str, default=None,
                       help="an emotion classifier folder (train_emotion.py's OUTPUT_DIR/emotion_classifier); "
                            "without it the pipeline keeps an UNTRAINED tiny classifier")

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--prediction_type", choices=PREDICTION_TYPES, default=DEFAULT_PREDICTION_TYPE,
                           help="what the UNet predicts: the noise, the clean frames, or v")
    diffusion.add_argument("--timestep_sampling", choices=TIMESTEP_SAMPLING, default=DEFAULT_TIMESTEP_SAMPLING,
                           help="uniform over [0, 1000); below_t_start: [0, t_start); mixed: below_t_start with "
                                "probability --timestep_bias, else uniform")
    diffusion.add_argument("--timestep_bias", type=float, default=0.8, help="see --timestep_sampling mixed")
    diffusion.add_argument("--t_start", type=int, default=DEFAULT_T_START,
                           help="the SDEdit start used at inference (paper: 300); validation samples from it")
    diffusion.add_argument("--p_uncond", type=float, default=0.1,
                           help="probability of training with the null emotion (classifier-free guidance)")
    diffusion.add_argument("--reference", choices=("random", "same_clip", "first"), default="random",
                           help="where the reference frame comes from: any clip of the same person (at least "
                                "one clip length away in time), the same clip, or the clip's first frame")
    diffusion.add_argument("--mask_noise_type", choices=("uniform_replace", "gaussian_additive"),
                           default="uniform_replace", help="GaussianMaskNoise noise kind (saved with the pipeline)")

    val = parser.add_argument_group("validation")
    val.add_argument("--validation_clips", type=int, default=8,
                     help="held-out clips the validation loss is averaged over")
    val.add_argument("--num_validation_videos", type=int, default=1,
                     help="held-out clips generated (SDEdit from --t_start, ground-truth landmarks) and scored "
                          "by PSNR; the first is logged as a video")
    val.add_argument("--validation_reference", choices=("random", "same_clip", "first"), default="same_clip",
                     help="reference frames of the held-out clips: same_clip (default) keeps the clip's own "
                          "background and framing, as when the identity photo comes from the same recording")
    val.add_argument("--validation_inference_steps", type=int, default=50,
                     help="DDPM steps between t_start and 0 for validation videos (the pipeline default is "
                          "one per timestep, 300)")

    add_common_args(parser, output_dir="out/train_diffusion", train_batch_size=4, max_train_steps=20000,
                    learning_rate=1e-4, checkpointing_steps=1000, validation_steps=500)
    args = parser.parse_args(argv)
    check_common_args(args)
    if args.resolution is None:
        args.resolution = PRESETS[args.preset]["sample_size"]
    if args.clip_frames < 1:
        parser.error("--clip_frames must be >= 1")
    if args.condition_skip and args.unet_in_channels != 7:
        parser.error("--condition_skip needs --unet_in_channels 7")
    if not 0 <= args.p_uncond < 1:
        parser.error("--p_uncond must be in [0, 1)")
    if not 1 <= args.t_start <= 1000:
        parser.error("--t_start must be in [1, 1000]")
    return args


# ------------------------------------------------------------------------------------------------ components
def load_unet(args) -> ClassConditionedUNet3DModel:
    if args.pretrained_unet is None:
        return build_unet(args.preset, args.resolution, args.unet_in_channels, args.condition_skip)
    path = Path(args.pretrained_unet)
    if (path / "unet").is_dir():
        path = path / "unet"
    unet = ClassConditionedUNet3DModel.from_pretrained(path)
    if unet.config.sample_size != args.resolution:
        logger.warning(f"the pretrained UNet was made for {unet.config.sample_size}² frames; training at "
                       f"{args.resolution}²")
        unet.register_to_config(sample_size=args.resolution)
    return unet


def load_companions(args):
    """(landmark_model, emotion_classifier, feature_extractor, notes): trained ones from the given paths, or
    untrained stand-ins, with a note saying so."""
    notes = {}
    if args.landmark_model:
        landmark_model = KFusionLandmarkModel.from_pretrained(args.landmark_model)
        notes["landmark_model"] = f"trained: {args.landmark_model}"
    else:
        landmark_model = KFusionLandmarkModel()
        notes["landmark_model"] = "UNTRAINED (no --landmark_model given)"
    if args.emotion_model:
        classifier = load_emotion_classifier(args.emotion_model)
        if (Path(args.emotion_model) / "preprocessor_config.json").is_file():
            from transformers import Wav2Vec2FeatureExtractor

            extractor = Wav2Vec2FeatureExtractor.from_pretrained(args.emotion_model, local_files_only=True)
        else:
            extractor = build_emotion_feature_extractor()
        notes["emotion_classifier"] = f"trained: {args.emotion_model}"
    else:
        classifier, extractor = build_emotion_classifier("tiny"), build_emotion_feature_extractor()
        notes["emotion_classifier"] = "UNTRAINED tiny classifier (no --emotion_model given)"
    for name, note in notes.items():
        if note.startswith("UNTRAINED"):
            logger.warning(f"the saved pipeline's {name} is {note}: generate with emotion=... and expect "
                           f"{'random lip motion' if name == 'landmark_model' else 'random emotion predictions'}"
                           f" until you pass a trained one")
    return landmark_model, classifier, extractor, notes


def clip_overlap_for(clip_frames: int) -> int:
    return min(4, clip_frames // 4)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


# ------------------------------------------------------------------------------------------------ validation
class Validator:
    """Held-out figures (main process): the training loss at fixed timesteps, the x0 MSE, and SDEdit
    samples from t_start with ground-truth landmarks scored by PSNR; the first one logged as a video."""

    def __init__(self, args, dataset: TalkingHeadClipDataset, pipe: TalkingHeadPipeline, accelerator,
                 metrics: JsonlLog):
        self.args, self.dataset, self.pipe, self.accelerator, self.metrics = args, dataset, pipe, accelerator, metrics
        n = len(dataset)
        count = min(n, max(args.validation_clips, args.num_validation_videos))
        self.indices = sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))
        self.items = [dataset[i] for i in self.indices]
        self.loss_scheduler = default_ddpm_scheduler(args.prediction_type)
        self.reference_psnr = None

    @torch.no_grad()
    def __call__(self, unet, mask_noise, global_step: int) -> dict:
        args, accelerator = self.args, self.accelerator
        device = accelerator.device
        was_training = unet.training
        unet.eval()
        results = {}
        # Own RNG: validation must not disturb training's random stream, and must draw the same noise each time.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(args.seed + 12345)
            # 1. Loss at fixed timesteps (in the target space and as x0 MSE, comparable across prediction types).
            losses, x0_errors = [], []
            for t_value in VALIDATION_TIMESTEPS:
                for start in range(0, min(len(self.items), args.validation_clips), args.train_batch_size):
                    batch = collate_clips(self.items[start: start + args.train_batch_size])
                    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                    t = torch.full((batch["frames"].shape[0],), t_value, dtype=torch.long, device=device)
                    pair = make_diffusion_pair(batch, mask_noise, self.loss_scheduler, unet.config.in_channels,
                                               args.prediction_type, t, p_uncond=0.0)
                    with accelerator.autocast():
                        pred = unet(pair.model_input, pair.timesteps, class_labels=pair.class_labels).sample
                    losses.append(F.mse_loss(pred.float(), pair.target.float()).item())
                    x0 = predicted_sample(pred, pair.noisy, t, self.loss_scheduler, args.prediction_type)
                    x0_errors.append(F.mse_loss(x0.float().clamp(-1, 1), pair.sample.float()).item())
            results["val/loss"] = float(np.mean(losses))
            results["val/x0_mse"] = float(np.mean(x0_errors))

            # 2. SDEdit samples from t_start, as the pipeline makes them (its own denoise_clip).
            psnrs, reference_psnrs = [], []
            for k, item in enumerate(self.items[: args.num_validation_videos]):
                frames = item["frames"][None].to(device)
                reference = item["reference"][None, :, None].to(device).expand_as(frames)
                generator = torch.Generator(device=device).manual_seed(args.seed + k)
                cond, mask = mask_noise(reference, item["landmarks"][None].to(device), generator=generator,
                                        return_dict=False)
                label = torch.tensor([int(item["emotion"])], device=device)
                with accelerator.autocast():
                    clip = self.pipe.denoise_clip(cond, mask, label, args.t_start, args.validation_inference_steps,
                                                  1.0, generator, None, [], _NoBar())
                psnrs.append(psnr(clip, frames))
                reference_psnrs.append(psnr(reference, frames))
                if k == 0:
                    video = np.concatenate([to_uint8_video(cond[0]), to_uint8_video(clip[0]),
                                            to_uint8_video(frames[0])], axis=2)  # side by side
                    video = upscale_frames(video, 128)
                    fps = float(item["fps"])
                    log_video(accelerator, "validation/cond_generated_truth", video, global_step, fps)
                    write_validation_mp4(Path(args.output_dir) / "validation" / f"step-{global_step:07d}.mp4",
                                         video, fps, audio=item["audio"].numpy())
            if psnrs:
                results["val/psnr"] = float(np.mean(psnrs))
                results["val/psnr_reference"] = float(np.mean(reference_psnrs))  # the static-frame floor
        unet.train(was_training)
        log_scalars(accelerator, self.metrics, results, global_step)
        logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.5g}" for k, v in results.items()))
        return results


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    logger.info(accelerator.state)
    output_dir = Path(args.output_dir)

    data_dir = resolve_data_dir(args, accelerator, kind="video", size=args.resolution)
    train_dataset = TalkingHeadClipDataset(data_dir, split="train", clip_frames=args.clip_frames,
                                           sample_size=args.resolution, random_crop=True, seed=args.seed,
                                           reference=args.reference)

    unet = load_unet(args)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    mask_noise = build_mask_noise(args.resolution, args.mask_noise_type)
    noise_scheduler = default_ddpm_scheduler(args.prediction_type)
    landmark_model, classifier, extractor, notes = load_companions(args)


    # Paper: Adam, lr 1e-4, cosine annealing over the run (AdamW with weight decay 0 is Adam).
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    train_dataloader, sampler = make_dataloader(train_dataset, args.train_batch_size, args.seed,
                                                args.dataloader_num_workers, collate_clips)
    # The prepared scheduler steps once per process per update (Accelerate), hence the factor.
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader,
                                                                          lr_scheduler)
    mask_noise.to(accelerator.device)
    # The EMA starts from the prepared (on every process identical) weights.
    ema = make_ema(accelerator, args, unet, ClassConditionedUNet3DModel)

    init_trackers(accelerator, args, "train_diffusion")
    metrics = metrics_log(accelerator, output_dir)
    batches = batch_log(accelerator, args)
    run_shape, global_step, first_epoch, skip_batches = start_or_resume(
        accelerator, args, output_dir, train_dataloader, ema, prediction_type=args.prediction_type)

    logger.info(f"{len(train_dataset)} training clips of {args.clip_frames} frames at {args.resolution}² from "
                f"{data_dir}; {accelerator.num_processes} process(es) x batch {args.train_batch_size} x "
                f"accumulation {accelerator.gradient_accumulation_steps}; {args.max_train_steps} updates; "
                f"prediction_type={args.prediction_type}, timesteps {args.timestep_sampling}; "
                f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    validator = None
    if accelerator.is_main_process and args.validation_clips + args.num_validation_videos > 0:
        val_dataset = held_out(lambda split: TalkingHeadClipDataset(
            data_dir, split=split, clip_frames=args.clip_frames, sample_size=args.resolution, random_crop=False,
            seed=args.seed, reference=args.validation_reference), data_dir)
        validation_pipe = TalkingHeadPipeline(unet=accelerator.unwrap_model(unet),
                                              scheduler=default_ddpm_scheduler(args.prediction_type),
                                              landmark_model=landmark_model, mask_noise=mask_noise,
                                              clip_frames=args.clip_frames,
                                              clip_overlap=clip_overlap_for(args.clip_frames))
        validator = Validator(args, val_dataset, validation_pipe, accelerator, metrics)

    def validate():
        if validator is None:
            return
        model = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        validator(model, mask_noise, loop.global_step)
        if ema is not None:
            ema.restore(model.parameters())

    in_channels = accelerator.unwrap_model(unet).config.in_channels
    unet.train()
    loop = UpdateLoop(accelerator, args, train_dataloader=train_dataloader, sampler=sampler,
                      output_dir=output_dir, run_shape=run_shape, global_step=global_step,
                      first_epoch=first_epoch, skip_batches=skip_batches, metrics=metrics, batches=batches,
                      validate=validate, ema=ema, ema_model=unet, loss_format=".4f")
    for batch in loop:
        with accelerator.accumulate(unet):
            frames = batch["frames"]
            t = sample_timesteps(frames.shape[0], noise_scheduler.config.num_train_timesteps,
                                 args.timestep_sampling, args.t_start, args.timestep_bias, frames.device)
            pair = make_diffusion_pair(batch, mask_noise, noise_scheduler, in_channels, args.prediction_type,
                                       t, p_uncond=args.p_uncond)
            pred = unet(pair.model_input, pair.timesteps, class_labels=pair.class_labels).sample
            loss = F.mse_loss(pred.float(), pair.target.float())
            loop.backward_and_step(loss, frames.shape[0], optimizer, lr_scheduler, unet.parameters())
        loop.end_micro_step(batch, loss.item(), lr_scheduler)
    global_step = loop.global_step

    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(model.parameters())
    if args.log_batch_ids:
        batches.write(final=True, step=global_step, checksum=weights_checksum(model))
    if accelerator.is_main_process:
        pipe = TalkingHeadPipeline(unet=model, scheduler=default_ddpm_scheduler(args.prediction_type),
                                   landmark_model=landmark_model, mask_noise=mask_noise.to("cpu"),
                                   emotion_classifier=classifier, feature_extractor=extractor,
                                   clip_frames=args.clip_frames, clip_overlap=clip_overlap_for(args.clip_frames))
        path = save_pipeline_atomic(pipe, output_dir / "pipeline")
        info = {"global_step": global_step, "prediction_type": args.prediction_type,
                "timestep_sampling": args.timestep_sampling, "ema": bool(args.use_ema),
                "resolution": args.resolution, "clip_frames": args.clip_frames, "data_dir": str(data_dir),
                "components": {"unet": f"trained here ({global_step} updates)", **notes}}
        (path / "training_info.json").write_text(json.dumps(info, indent=1) + "\n")
        logger.info(f"saved the pipeline to {path}: " + "; ".join(f"{k}: {v}" for k, v in info["components"].items()))
        del pipe
    del unet, model, optimizer, lr_scheduler, train_dataloader, ema, validator, landmark_model, classifier
    finish(accelerator)


if __name__ == "__main__":
    main(sys.argv[1:])
