"""Train the class-conditioned 3D UNet of TalkingHeadPipeline, the lower-face renderer (DESIGN.md 7.2), and
save a full pipeline.

    accelerate launch train/train_diffusion.py --data_dir /path/to/prepared --preset tiny --resolution 64 \
        --landmark_model out/landmarks/landmark_model --output_dir out/diffusion

Training pairs (DESIGN 7.2 item 4; `talking_head.training.make_diffusion_pair`): for a window of F frames of
one person, one mouth box (talking_head.mouth_box) around the lower face of the window and of a reference
frame is cut from the stored face crops at full resolution and resized to --resolution. Target = the window's
boxes; context = the same boxes with the lower-face region (GaussianMaskNoise, region mode) replaced by
noise; reference = the box of another frame of the person with a different mouth opening (--reference
mouth_contrast); heatmaps = the window's landmarks. The UNet sees `unet_input(x_t, context, mask, heatmaps,
reference)` and the clip's emotion (dropped to the null class with probability --p_uncond for
classifier-free guidance), and predicts x0 (--prediction_type sample), scored by L1 inside the region
(--structure_loss adds SSIM or an image-gradient term). This is exactly what the pipeline builds from the
photo and the predicted landmarks.

The prediction target (--prediction_type) is stored in the saved pipeline's scheduler, so sampling always
matches training.

Outputs in --output_dir: checkpoint-<step>/ (accelerator.save_state), logs/ (TensorBoard), validation/
(MP4s of mouth boxes: context | generated | ground truth, with the clip's audio), metrics.jsonl, and
pipeline/ - a folder `TalkingHeadPipeline.from_pretrained` loads, with the UNet (EMA weights with
--use_ema), the DDPM scheduler, the mask-noise settings, the landmark model given by --landmark_model
(untrained otherwise; the run says so) and the emotion classifier given by --emotion_model (none otherwise:
a pipeline never ships an untrained classifier, it uses the null class instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.constants import NUM_EMOTIONS
from talking_head.data.dataset import TalkingHeadClipDataset, collate_clips
from talking_head.data.dataset import REFERENCE_MODES
from talking_head.models.emotion_classifier import load_emotion_classifier, load_emotion_feature_extractor
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel
from talking_head.pipelines.pipeline_talking_head import REFERENCE_CHANNEL, TalkingHeadPipeline
from talking_head.presets import PRESETS
from talking_head.schedulers.scheduling_sdedit import DEFAULT_T_START, default_ddpm_scheduler
from talking_head.training import (
    JsonlLog, PREDICTION_TYPES, STRUCTURE_LOSSES, TIMESTEP_SAMPLING, TrainingRun, add_common_args, build_mask_noise,
    build_unet, check_common_args, finish, held_out, lip_heatmaps, log_scalars, log_video, make_accelerator,
    make_diffusion_pair, predicted_sample, psnr, region_loss, resolve_data_dir, sample_timesteps, to_uint8_video,
    upscale_frames, write_validation_mp4,
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
                       help="side of the UNet's mouth box in pixels (default: the preset's, 64 tiny / 256 paper)")
    model.add_argument("--clip_frames", type=int, default=16, help="frames per training clip (and pipeline clip)")
    model.add_argument("--reference_residual", action="store_true",
                       help="the UNet predicts a correction added to the reference box "
                            "(ClassConditionedUNet3DModel.residual_channel; measured no better, train/README.md) "
                            "instead of the mouth box outright")
    model.add_argument("--pretrained_unet", type=str, default=None,
                       help="start from this UNet (a UNet folder, or a pipeline folder with unet/) instead of "
                            "a fresh --preset one")
    model.add_argument("--landmark_model", type=str, default=None,
                       help="a KFusionLandmarkModel folder (train_landmarks.py's OUTPUT_DIR/landmark_model) for "
                            "the saved pipeline; without it the pipeline keeps an UNTRAINED landmark model")
    model.add_argument("--audio_encoder", type=str, default=None,
                       help="the Whisper audio encoder a --landmark_model that reads encoder states needs (a saved "
                            "encoder, or a pipeline folder with audio_encoder/); default: beside --landmark_model "
                            "when that is a pipeline folder")
    model.add_argument("--emotion_model", type=str, default=None,
                       help="an emotion classifier folder (train_emotion.py's OUTPUT_DIR/emotion_classifier); "
                            "without it the pipeline has no classifier and uses the null emotion class")

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
    diffusion.add_argument("--reference", choices=REFERENCE_MODES, default="mouth_contrast",
                           help="where the reference frame comes from: mouth_contrast (default: another moment of "
                                "the person with a different mouth opening), random (any clip of the same person, "
                                "at least one clip length away), same_clip, or first (the clip's first frame)")
    diffusion.add_argument("--mask_noise_type", choices=("uniform_replace", "gaussian_additive"),
                           default="uniform_replace", help="GaussianMaskNoise noise kind (saved with the pipeline)")
    diffusion.add_argument("--mask_mode", choices=("region", "landmarks"), default="region",
                           help="region: one solid lower-face region (DESIGN 7.2); landmarks: the paper's dotted "
                                "mask (the ablation)")
    diffusion.add_argument("--structure_loss", choices=STRUCTURE_LOSSES, default="none",
                           help="with --prediction_type sample: add 1 - SSIM or an image-gradient L1 to the region "
                                "L1 (talking_head.training.region_loss)")
    diffusion.add_argument("--structure_weight", type=float, default=0.2, help="weight of --structure_loss")
    diffusion.add_argument("--lip_weight", type=float, default=0.0,
                           help="extra L1 weight on the lips (1 + W x the target's lip heatmaps; 0 = plain L1)")
    diffusion.add_argument("--region_points", type=str, default=None,
                           help="landmark indices of the region and the box, e.g. 3-13,31-35,48-67 (default: those "
                                "of the --pretrained_unet pipeline, else the mask-noise layer's: jaw 4-12, nose "
                                "base 31-35, mouth 48-67)")
    diffusion.add_argument("--first_step_fraction", type=float, default=0.25,
                           help="share of clips trained as the pipeline's first SDEdit step: at t_start - 1 from "
                                "the reference's mouth (talking_head.training.make_diffusion_pair)")
    diffusion.add_argument("--no_box_jitter", action="store_true",
                           help="cut every clip's box exactly (default: random scale and shift per clip)")

    val = parser.add_argument_group("validation")
    val.add_argument("--validation_clips", type=int, default=8,
                     help="held-out clips the validation loss is averaged over")
    val.add_argument("--num_validation_videos", type=int, default=1,
                     help="held-out clips generated (SDEdit from --t_start, ground-truth landmarks) and scored "
                          "by PSNR; the first is logged as a video")
    val.add_argument("--validation_reference", choices=("random", "same_clip", "first"), default="same_clip",
                     help="reference frames of the held-out clips: same_clip (default) keeps the clip's own "
                          "background and framing, as when the identity photo comes from the same recording")
    val.add_argument("--validation_inference_steps", type=int, default=4,
                     help="DPM-Solver steps between t_start and 0 for validation videos")

    add_common_args(parser, output_dir="out/train_diffusion", train_batch_size=4, max_train_steps=20000,
                    learning_rate=1e-4, checkpointing_steps=1000, validation_steps=500)
    args = parser.parse_args(argv)
    check_common_args(args)
    if args.resolution is None:
        args.resolution = PRESETS[args.preset]["sample_size"]
    if args.clip_frames < 1:
        parser.error("--clip_frames must be >= 1")
    if args.region_points:
        try:
            args.region_points = [i for part in args.region_points.split(",") for i in _index_range(part)]
        except ValueError:
            parser.error(f"--region_points must look like 3-13,31-35,48-67, got {args.region_points!r}")
    if not 0 <= args.first_step_fraction <= 1:
        parser.error("--first_step_fraction must be in [0, 1]")
    if not (math.isfinite(args.lip_weight) and args.lip_weight >= 0):
        parser.error("--lip_weight must be a number >= 0")
    if args.prediction_type != "sample" and (args.lip_weight > 0 or args.structure_loss != "none"):
        parser.error("--lip_weight and --structure_loss weigh the region L1 of --prediction_type sample; "
                     f"with {args.prediction_type!r} they would be ignored")
    if not 0 <= args.p_uncond < 1:
        parser.error("--p_uncond must be in [0, 1)")
    if not 1 <= args.t_start <= 1000:
        parser.error("--t_start must be in [1, 1000]")
    return args


def _index_range(part: str) -> list[int]:
    first, _, last = part.strip().partition("-")
    return list(range(int(first), int(last or first) + 1))


# ------------------------------------------------------------------------------------------------ components
def load_unet(args) -> ClassConditionedUNet3DModel:
    if args.pretrained_unet is None:
        return build_unet(args.preset, args.resolution,
                          residual_channel=REFERENCE_CHANNEL if args.reference_residual else None)
    path = Path(args.pretrained_unet)
    if (path / "unet").is_dir():
        path = path / "unet"
    unet = ClassConditionedUNet3DModel.from_pretrained(path)
    if unet.config.sample_size != args.resolution:
        logger.warning(f"the pretrained UNet was made for {unet.config.sample_size}² frames; training at "
                       f"{args.resolution}²")
        unet.register_to_config(sample_size=args.resolution)
    return unet


def pretrained_region_points(path) -> list[int] | None:
    """The lower-face region of the pipeline a fine-tuned UNet comes from (its mask_noise config), so that
    fine-tuning keeps the region and the mouth box the UNet learned; None for a bare UNet folder."""
    config = Path(path) / "mask_noise" / "config.json" if path else None
    if config is None or not config.is_file():
        return None
    points = json.loads(config.read_text()).get("region_points")
    return [int(i) for i in points] if points else None


def load_companions(args):
    """(landmark_model, emotion_classifier, feature_extractor, notes, audio_encoder): trained ones from the given
    paths, or untrained stand-ins, with a note saying so."""
    notes = {}
    audio_encoder = None
    if args.landmark_model:
        path = Path(args.landmark_model)
        landmark_model = KFusionLandmarkModel.from_pretrained(
            path / "landmark_model" if (path / "landmark_model").is_dir() else path)
        notes["landmark_model"] = f"trained: {args.landmark_model}"
        if landmark_model.reads_encoder_states:
            from talking_head.trainers.landmarks import load_audio_encoder

            audio_encoder = load_audio_encoder(args.audio_encoder or path)
    else:
        landmark_model = KFusionLandmarkModel()
        notes["landmark_model"] = "UNTRAINED (no --landmark_model given)"
    classifier = extractor = None
    if args.emotion_model:
        classifier = load_emotion_classifier(args.emotion_model)
        extractor = load_emotion_feature_extractor(args.emotion_model, classifier)
        notes["emotion_classifier"] = f"trained: {args.emotion_model}"
    else:
        # Never ship an untrained classifier: it would pick a random emotion and drive the UNet with a class
        # embedding it never trained on. Without one the pipeline uses the null class.
        notes["emotion_classifier"] = "none (no --emotion_model given): the pipeline uses the null emotion class"
    if notes["landmark_model"].startswith("UNTRAINED"):
        logger.warning("the saved pipeline's landmark_model is UNTRAINED (no --landmark_model given): drive it "
                       "with landmarks=... or expect random lip motion until you pass a trained one")
    return landmark_model, classifier, extractor, notes, audio_encoder


def clip_overlap_for(clip_frames: int) -> int:
    return min(4, clip_frames // 4)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


# ------------------------------------------------------------------------------------------------ validation
class Validator:
    """Held-out figures (main process): the region L1 of the x0 prediction at fixed timesteps, and mouth boxes
    generated as the pipeline makes them (`denoise_box`, DPM-Solver from t_start, ground-truth landmarks),
    scored by PSNR inside the box against the reference box pasted in (the floor); the first one is logged as
    a video."""

    def __init__(self, args, dataset: TalkingHeadClipDataset, pipe: TalkingHeadPipeline, accelerator,
                 metrics: JsonlLog):
        from talking_head.schedulers.scheduling_sdedit import scheduler_from_name

        self.args, self.dataset, self.pipe, self.accelerator, self.metrics = args, dataset, pipe, accelerator, metrics
        n = len(dataset)
        count = min(n, max(args.validation_clips, args.num_validation_videos))
        self.indices = sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))
        self.items = [dataset[i] for i in self.indices]
        self.loss_scheduler = default_ddpm_scheduler(args.prediction_type)
        pipe.scheduler = scheduler_from_name("dpm", self.loss_scheduler)

    @torch.no_grad()
    def __call__(self, unet, mask_noise, global_step: int) -> dict:
        args, accelerator = self.args, self.accelerator
        device = accelerator.device
        was_training = unet.training
        unet.eval()
        results = {}
        size = args.resolution
        # Own RNG: validation must not disturb training's random stream, and must draw the same noise each time.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(args.seed + 12345)
            losses = []
            for t_value in VALIDATION_TIMESTEPS:
                for start in range(0, min(len(self.items), args.validation_clips), args.train_batch_size):
                    batch = collate_clips(self.items[start: start + args.train_batch_size])
                    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                    t = torch.full((batch["frames"].shape[0],), t_value, dtype=torch.long, device=device)
                    pair = make_diffusion_pair(batch, mask_noise, self.loss_scheduler, size, args.prediction_type, t)
                    with accelerator.autocast():
                        pred = unet(pair.model_input, pair.timesteps, class_labels=pair.class_labels).sample
                    x0 = predicted_sample(pred, pair.noisy, t, self.loss_scheduler, args.prediction_type)
                    losses.append(region_loss(x0.clamp(-1, 1), pair.sample, pair.mask).item())
            results["val/region_l1"] = float(np.mean(losses))

            psnrs, floor_psnrs = [], []
            for k, item in enumerate(self.items[: args.num_validation_videos]):
                batch = collate_clips([item])
                batch = {key: (v.to(device) if torch.is_tensor(v) else v) for key, v in batch.items()}
                t = torch.zeros(1, dtype=torch.long, device=device)
                pair = make_diffusion_pair(batch, mask_noise, self.loss_scheduler, size, args.prediction_type, t)
                generator = torch.Generator(device=device).manual_seed(args.seed + k)
                # As the pipeline starts: the clip's own pixels, the reference's mouth in the region (the floor).
                floor = pair.sample * (1 - pair.mask) + pair.reference[:, :, None] * pair.mask
                label = torch.tensor([int(item["emotion"])], device=device)
                with accelerator.autocast():
                    clip = self.pipe.denoise_box(pair.cond, pair.mask, pair.heatmaps, pair.reference, floor, label,
                                                 args.t_start, args.validation_inference_steps, 1.0, generator)
                psnrs.append(psnr(clip, pair.sample))
                floor_psnrs.append(psnr(floor, pair.sample))
                if k == 0:
                    video = np.concatenate([to_uint8_video(pair.cond[0]), to_uint8_video(clip[0]),
                                            to_uint8_video(pair.sample[0])], axis=2)  # side by side
                    video = upscale_frames(video, 128)
                    fps = float(item["fps"])
                    log_video(accelerator, "validation/context_generated_truth", video, global_step, fps)
                    write_validation_mp4(Path(args.output_dir) / "validation" / f"step-{global_step:07d}.mp4",
                                         video, fps, audio=item["audio"].numpy())
            if psnrs:
                results["val/box_psnr"] = float(np.mean(psnrs))
                results["val/box_psnr_reference_mouth"] = float(np.mean(floor_psnrs))
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
    # Frames at the stored face-crop resolution: the mouth box is cut from them at full resolution.
    train_dataset = TalkingHeadClipDataset(data_dir, split="train", clip_frames=args.clip_frames,
                                           sample_size=None, random_crop=True, seed=args.seed,
                                           reference=args.reference)

    unet = load_unet(args)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    mask_noise = build_mask_noise(args.resolution, args.mask_noise_type, args.mask_mode,
                                  args.region_points or pretrained_region_points(args.pretrained_unet))
    noise_scheduler = default_ddpm_scheduler(args.prediction_type)
    landmark_model, classifier, extractor, notes, audio_encoder = load_companions(args)


    # Paper: Adam, lr 1e-4, cosine annealing over the run (AdamW with weight decay 0 is Adam).
    run = TrainingRun(accelerator, args, output_dir, "train_diffusion", unet, unet.parameters(), train_dataset,
                      collate_clips, ema_cls=ClassConditionedUNet3DModel, prediction_type=args.prediction_type)
    unet, optimizer, lr_scheduler, metrics = run.model, run.optimizer, run.lr_scheduler, run.metrics
    mask_noise.to(accelerator.device)

    logger.info(f"{len(train_dataset)} training clips of {args.clip_frames} frames at {args.resolution}² from "
                f"{data_dir}; {run.shape_line()}; prediction_type={args.prediction_type}, timesteps {args.timestep_sampling}; "
                f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    validator = None
    if accelerator.is_main_process and args.validation_clips + args.num_validation_videos > 0:
        val_dataset = held_out(lambda split: TalkingHeadClipDataset(
            data_dir, split=split, clip_frames=args.clip_frames, sample_size=None, random_crop=False,
            seed=args.seed, reference=args.validation_reference), data_dir)
        validation_pipe = TalkingHeadPipeline(unet=accelerator.unwrap_model(unet),
                                              scheduler=default_ddpm_scheduler(args.prediction_type),
                                              landmark_model=landmark_model, mask_noise=mask_noise,
                                              audio_encoder=audio_encoder, clip_frames=args.clip_frames,
                                              clip_overlap=clip_overlap_for(args.clip_frames))
        validator = Validator(args, val_dataset, validation_pipe, accelerator, metrics)

    def validate():
        if validator is None:
            return
        with run.averaged_weights(accelerator.unwrap_model(unet)) as model:
            validator(model, mask_noise, loop.global_step)

    unet.train()
    loop = run.update_loop(validate)
    for batch in loop:
        with accelerator.accumulate(unet):
            frames = batch["frames"]
            t = sample_timesteps(frames.shape[0], noise_scheduler.config.num_train_timesteps,
                                 args.timestep_sampling, args.t_start, args.timestep_bias, frames.device)
            first = torch.rand(frames.shape[0], device=frames.device) < args.first_step_fraction
            t = torch.where(first, torch.full_like(t, args.t_start - 1), t)
            pair = make_diffusion_pair(batch, mask_noise, noise_scheduler, args.resolution, args.prediction_type,
                                       t, p_uncond=args.p_uncond, jitter=not args.no_box_jitter, first_step=first)
            pred = unet(pair.model_input, pair.timesteps, class_labels=pair.class_labels).sample
            if args.prediction_type == "sample":  # DESIGN 7.2 item 4: x0, L1 on the region
                lips = lip_heatmaps(pair.heatmaps) if args.lip_weight > 0 else None
                loss = region_loss(pred, pair.target, pair.mask, args.structure_loss, args.structure_weight,
                                   lips=lips, lip_weight=args.lip_weight)
            else:
                loss = F.mse_loss(pred.float(), pair.target.float())
            loop.backward_and_step(loss, frames.shape[0], optimizer, lr_scheduler, unet.parameters())
        loop.end_micro_step(batch, loss.item(), lr_scheduler)
    global_step = loop.global_step

    model = accelerator.unwrap_model(unet)
    run.finish_weights(model, global_step)
    if accelerator.is_main_process:
        pipe = TalkingHeadPipeline(unet=model, scheduler=default_ddpm_scheduler(args.prediction_type),
                                   landmark_model=landmark_model, mask_noise=mask_noise.to("cpu"),
                                   emotion_classifier=classifier, feature_extractor=extractor,
                                   audio_encoder=None if audio_encoder is None else audio_encoder.to(torch.float16),
                                   clip_frames=args.clip_frames, clip_overlap=clip_overlap_for(args.clip_frames),
                                   # The class input learned the emotions only if the training clips had labels;
                                   # otherwise (unlabelled video) only its null row: never feed it another.
                                   unet_emotion_conditioning=any(int(r.get("emotion_id", NUM_EMOTIONS)) < NUM_EMOTIONS
                                                                 for r in train_dataset.clips))
        logger.info("renderer class input: " + ("learned the emotion labels of the training clips"
                                                if pipe.config.unet_emotion_conditioning else
                                                "null class only (the training clips have no emotion labels); the "
                                                "emotion reaches the face through the landmarks"))
        path = save_pipeline_atomic(pipe, output_dir / "pipeline")
        info = {"global_step": global_step, "prediction_type": args.prediction_type,
                "timestep_sampling": args.timestep_sampling, "ema": bool(args.use_ema),
                "structure_loss": args.structure_loss, "lip_weight": args.lip_weight, "reference": args.reference,
                "mask_mode": args.mask_mode, "first_step_fraction": args.first_step_fraction,
                "reference_residual": args.reference_residual,
                "resolution": args.resolution, "clip_frames": args.clip_frames, "data_dir": str(data_dir),
                "unet_emotion_conditioning": pipe.config.unet_emotion_conditioning,
                "components": {"unet": f"trained here ({global_step} updates)", **notes}}
        (path / "training_info.json").write_text(json.dumps(info, indent=1) + "\n")
        logger.info(f"saved the pipeline to {path}: " + "; ".join(f"{k}: {v}" for k, v in info["components"].items()))
        del pipe
    del unet, model, optimizer, lr_scheduler, run, validator, landmark_model, classifier
    finish(accelerator)


if __name__ == "__main__":  # python -m talking_head.trainers.diffusion
    main(sys.argv[1:])
