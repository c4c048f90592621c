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

Issue 12 options (all off by default, i.e. the first models' training): --extra_data_dir (more prepared
datasets, e.g. GRID next to the dev identity), --reference same_clip, --audio_context_frames (real audio
around each window), --pose_align (targets moved into the identity frame's head pose), --centered_loss,
--silent_weight, and augmentation: --aug_gain_db, --aug_clip_prob, --aug_noise_prob, --aug_speed,
--aug_face_scale/--aug_face_aspect/--aug_face_shift, --aug_open_identity, --aug_freq_warp; --model_kwargs sets model config
(e.g. identity_frame="face", mel_deltas, loudness_reference="active"). The recipe and its measured figures:
docs/results/lip-motion/README.md.

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

from talking_head.constants import NUM_EMOTIONS, SAMPLE_RATE
from talking_head.data.dataset import TalkingHeadClipDataset, collate_clips
from talking_head.head_pose import align_pose
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel, landmark_loss
from talking_head.training import (
    JsonlLog, TrainingRun, add_common_args, check_common_args, draw_landmarks, finish, held_out,
    landmark_distance, log_scalars, log_video, make_accelerator, parse_json_kwargs, resolve_data_dir,
    save_component_atomic, to_uint8_video, write_validation_mp4,
)

logger = logging.getLogger("train_landmarks")

# The landmark model's sizes. "paper" is KFusionLandmarkModel's defaults (0.5M parameters; pass
# --wav2vec2_model for the paper's wav2vec 2.0 Context domain).
LANDMARK_PRESETS = {
    "tiny": dict(n_mels=40, global_channels=32, context_channels=32, identity_dim=16, emotion_dim=8,
                 num_temporal_blocks=1, kan_hidden_dims=(32,)),
    "paper": {},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(LANDMARK_PRESETS), default="paper",
                       help="tiny (0.1M parameters, for tests) or paper (KFusionLandmarkModel's defaults)")
    model.add_argument("--wav2vec2_model", type=str, default=None,
                       help="a local wav2vec 2.0 folder for the Context domain (the paper's); default: log-mel")
    model.add_argument("--audio_encoder", type=str, default=None,
                       help="a saved Whisper audio encoder (train/convert_whisper.py's output, or a pipeline folder "
                            "with audio_encoder/): the Context domain reads its frozen states, cached once per "
                            "dataset in <data>/encoder_states/ (DESIGN.md 8.3)")
    model.add_argument("--encoder_layers", type=str, default=None,
                       help="with --audio_encoder: comma-separated encoder layers the Context domain reads "
                            "(default: the encoder's output_layers)")
    model.add_argument("--pretrained_model", type=str, default=None,
                       help="continue from a saved KFusionLandmarkModel folder (or a pipeline folder with "
                            "landmark_model/) instead of a fresh --preset one")
    model.add_argument("--clip_frames", type=int, default=32, help="frames per training window")
    model.add_argument("--model_kwargs", type=str, default=None,
                       help='JSON dict of KFusionLandmarkModel config overrides on top of --preset, e.g. '
                            '\'{"mel_deltas": true, "loudness_floor": 0.02}\'')
    data = parser.add_argument_group("data and augmentation")
    data.add_argument("--extra_data_dir", action="append", default=[],
                      help="another prepared dataset whose train split is added to --data_dir's (repeatable; "
                           "e.g. GRID next to the dev identity)")
    data.add_argument("--data_dir_repeat", type=int, default=1,
                      help="how many times --data_dir's train split appears in an epoch next to --extra_data_dir "
                           "(each copy draws its own windows and references): weights the identity the pipeline "
                           "serves (the dev identity) against the extra speakers (default 1)")
    data.add_argument("--reference", choices=["random", "same_clip", "first", "mouth_contrast"], default="random",
                      help="where a training window's identity landmarks come from (TalkingHeadClipDataset's "
                           "reference modes): random (default) - any frame of the speaker; same_clip - a frame of "
                           "the window's own clip (the same recording and framing, as an identity photo of the "
                           "same session; evaluate takes the identity from the scored clip itself)")
    data.add_argument("--audio_context_frames", type=int, default=0,
                      help="frames of real audio read beyond each end of a window (the model predicts them too, "
                           "the loss ignores them), so a window's edges hear what the pipeline's long calls "
                           "hear instead of zero padding (default 0: the first models' behaviour)")
    data.add_argument("--aug_gain_db", type=float, default=0.0,
                      help="random gain, uniform in +-this many dB, per window")
    data.add_argument("--aug_clip_prob", type=float, default=0.0,
                      help="probability of boosting a window by 6-20 dB and clipping it at full scale")
    data.add_argument("--aug_noise_prob", type=float, default=0.0,
                      help="probability of adding white noise to a window, at --aug_noise_snr dB below its RMS")
    data.add_argument("--aug_noise_snr", type=float, nargs=2, default=(15.0, 45.0), metavar=("LOW", "HIGH"),
                      help="SNR range of the added noise in dB (default 15 45)")
    data.add_argument("--pose_align", action="store_true",
                      help="move every target frame into its identity frame's head pose first (a similarity "
                           "transform fitted on points that speech hardly moves: jaw ends 0, 1, 15, 16 and the "
                           "nose 27-35; not the eyes, which GRID s1's watermark covers), so the loss asks only for "
                           "what the audio can tell (the expression), not for head motion")
    data.add_argument("--pose_smoothing", type=float, default=0.0,
                      help="with --pose_align, blur each window's fitted head rotation and scale over time by a "
                           "Gaussian of this many frames (0 = per frame): the fit from 13 detected points jitters, "
                           "and the jitter turns the target mouth with it")
    data.add_argument("--aug_open_identity", type=float, default=0.0,
                      help="probability of opening the identity's mouth synthetically (lower lip and chin moved "
                           "down by up to --aug_open_amount face widths; the target is unchanged), so the model "
                           "learns to close an identity photographed mid-word on silence")
    data.add_argument("--aug_open_amount", type=float, default=0.08,
                      help="largest synthetic opening of --aug_open_identity, in face widths (default 0.08)")
    data.add_argument("--aug_speed", type=float, default=0.0,
                      help="random speed change of a whole batch, factor uniform in 1 +- this (audio resampled like "
                           "a tape played faster or slower, landmarks interpolated in time alike), with probability "
                           "--aug_speed_prob")
    data.add_argument("--aug_speed_prob", type=float, default=0.5, help="probability of --aug_speed per batch")
    data.add_argument("--aug_freq_warp", type=float, default=0.0,
                      help="vocal-tract length perturbation in the log-mel front end: each clip's spectrum read at "
                           "frequencies scaled by a random factor in 1 +- this (another voice, same timing); 0 = off")
    data.add_argument("--aug_face_scale", type=float, default=0.0,
                      help="random scale of the face, uniform in 1 +- this, applied to the identity AND target "
                           "landmarks alike (around the crop centre), so the model reads shapes, not positions")
    data.add_argument("--aug_face_aspect", type=float, default=0.0,
                      help="random width-to-height change of the face, x scaled by 1 +- this (identity and target "
                           "alike): other face shapes than the few identities trained on")
    data.add_argument("--aug_face_shift", type=float, default=0.0,
                      help="random shift of the face, uniform in +- this (crop units), identity and target alike")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--all_weight", type=float, default=0.2, help="weight of the MSE over all 68 points")
    loss.add_argument("--mouth_weight", type=float, default=0.8, help="weight of the MSE over the 20 mouth points")
    loss.add_argument("--velocity_weight", type=float, default=0.5,
                      help="weight of the MSE of frame-to-frame differences (against jitter)")
    loss.add_argument("--point_distance", choices=("squared", "euclidean"), default="squared",
                      help="squared error per coordinate (MSE), or the Euclidean distance per point, which is what "
                           "M-LD / F-LD average (landmark_loss's `distance`)")
    loss.add_argument("--centered_loss", action="store_true",
                      help="compare per-frame mean-centred points (as M-LD does): the head's translation, which the "
                           "audio cannot tell, stops dominating the mouth's shape")
    loss.add_argument("--absolute_weight", type=float, default=0.0,
                      help="with --centered_loss, weight of the plain (not centred) MSE over all points")
    loss.add_argument("--silent_weight", type=float, default=0.0,
                      help="extra weight of the mouth MSE on silent frames (talking_head.evaluation.lip_motion's "
                           "definition, from the window's audio): the closed mouth on silence")
    loss.add_argument("--p_uncond", type=float, default=0.1, help="probability of training without the emotion")
    emo = parser.add_argument_group("emotion (issue 16)")
    emo.add_argument("--neutral_reference", action="store_true",
                     help="for windows of emotion-labelled clips (e.g. `talking-head prepare cremad`), take the "
                          "emotion out of the identity landmarks first: the reference frame minus its emotion's "
                          "mean offset from neutral (talking_head.evaluation.expression.emotion_offsets, measured on "
                          "the labelled training clips, saved as OUTPUT_DIR/emotion_offsets.json). The identity "
                          "then looks like the person's neutral face, as an identity photo does, and the model "
                          "learns to add the emotion itself. Needs neutral clips in the training data")
    emo.add_argument("--train_only", type=str, default=None,
                     help="comma-separated parameter-name prefixes: train only these, freeze the rest (e.g. "
                          "'emotion_embedding': a pretrained model learns the emotions without its speech motion "
                          "changing)")
    emo.add_argument("--freeze_null_emotion", action="store_true",
                     help="keep the null-class row of the emotion embedding as it is (with --train_only "
                          "emotion_embedding, the model without an emotion stays exactly the pretrained one)")
    emo.add_argument("--domain_bias", action="store_true",
                     help="learn one constant displacement (68 points, in face widths) added to the prediction of "
                          "every emotion-labelled window, and not saved: what the labelled corpus has in common "
                          "(e.g. CREMA-D's 8 kHz audio under-opening the mouth) goes there instead of into the "
                          "emotions (with emotion_head_relative)")
    emo.add_argument("--emotion_aliases", type=str, default=None,
                     help="emotions the data lacks, read as another at inference, e.g. "
                          "'contempt=disgusted,surprised=fear' (saved in the model's config, emotion_aliases)")
    val = parser.add_argument_group("validation")
    val.add_argument("--validation_clips", type=int, default=32, help="held-out windows scored at each validation")
    val.add_argument("--validation_video_size", type=int, default=128, help="side of the validation video frames")
    add_common_args(parser, output_dir="out/train_landmarks", train_batch_size=16, max_train_steps=3000,
                    learning_rate=1e-3, checkpointing_steps=500, validation_steps=250, lr_warmup_steps=100)
    args = parser.parse_args(argv)
    check_common_args(args)
    if args.clip_frames < 2:
        parser.error("--clip_frames must be >= 2 (the loss has a velocity term)")
    if args.absolute_weight and not args.centered_loss:
        parser.error("--absolute_weight goes with --centered_loss (without it the loss is absolute already)")
    if args.pose_smoothing < 0:
        parser.error("--pose_smoothing must be >= 0")
    if args.data_dir_repeat < 1:
        parser.error("--data_dir_repeat must be >= 1")
    if args.audio_context_frames < 0:
        parser.error("--audio_context_frames must be >= 0")
    for name in ("aug_gain_db", "aug_face_scale", "aug_face_shift", "aug_face_aspect"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if not 0 <= args.aug_speed < 0.5:
        parser.error("--aug_speed must be in [0, 0.5)")
    if not 0 <= args.aug_freq_warp < 0.5:
        parser.error("--aug_freq_warp must be in [0, 0.5)")
    if args.aug_open_amount < 0:
        parser.error("--aug_open_amount must be >= 0")
    for name in ("aug_clip_prob", "aug_noise_prob", "aug_speed_prob", "aug_open_identity"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name} must be in [0, 1]")
    if args.aug_noise_snr[0] > args.aug_noise_snr[1]:
        parser.error("--aug_noise_snr LOW must be <= HIGH")
    if args.emotion_aliases is not None:
        from talking_head.constants import EMOTIONS

        aliases = {}
        for part in [p for p in args.emotion_aliases.split(",") if p.strip()]:
            if part.count("=") != 1:
                parser.error(f"--emotion_aliases: expected asked=used pairs, got {part!r}")
            asked, used = (x.strip().lower() for x in part.split("="))
            if asked not in EMOTIONS or used not in EMOTIONS:
                parser.error(f"--emotion_aliases: unknown emotion in {part!r}; expected {', '.join(EMOTIONS)}")
            aliases[asked] = used
        args.emotion_aliases = aliases
    args.model_kwargs = parse_json_kwargs(parser, args.model_kwargs)
    return args


class LandmarkClipDataset(TalkingHeadClipDataset):
    """TalkingHeadClipDataset without decoding the frames (the landmark model never sees them).

    Overrides the dataset's frame reader with a 1×1 black image: a landmark batch then costs the audio and
    landmark reads only. (If that reader is ever renamed, this just decodes frames again: slower, still right.)
    With `state_cache` (talking_head.data.encoder_states), each item also gets "context_states": the audio
    encoder's states of exactly the item's audio.
    """

    def __init__(self, *args, state_cache=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_cache = state_cache

    def _frame(self, c: int, f: int) -> np.ndarray:  # noqa: D102
        return np.zeros((1, 1, 3), dtype=np.uint8)

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if self.state_cache is not None:
            fps, p = float(item["fps"]), self.audio_pad_frames
            start = int(round((int(item["start_frame"]) - p) * SAMPLE_RATE / fps))
            item["context_states"] = self.state_cache.window(item["clip_id"], start, item["audio"].shape[0])
        return item


class _ConcatWindows(torch.utils.data.ConcatDataset):
    """Several LandmarkClipDatasets as one; `set_epoch` reaches each (their random windows follow the epoch)."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)

    @property
    def clips(self):
        return [c for part in self.datasets for c in part.clips]


def load_audio_encoder(path):
    """The frozen Whisper encoder of --audio_encoder (a saved encoder, or a pipeline folder holding one)."""
    from talking_head.models.whisper_encoder import WhisperSpeechEncoder

    path = Path(path)
    if (path / "audio_encoder").is_dir():
        path = path / "audio_encoder"
    if not (path / "config.json").is_file():
        raise ValueError(f"--audio_encoder {path}: no saved encoder there (make one with train/convert_whisper.py)")
    return WhisperSpeechEncoder.from_pretrained(path).float()


def state_caches(args, roots) -> dict:
    """{root: EncoderStateCache} of each dataset for the encoder layers the model reads (built once, then read
    from disk); sets args.encoder_layer_list and args.encoder_state_dim. Empty without --audio_encoder."""
    pretrained = _pretrained_config(args.pretrained_model)
    if not args.audio_encoder:
        if pretrained.get("context_encoder") == "encoder_states":
            raise ValueError(f"--pretrained_model {args.pretrained_model} reads audio-encoder states: give "
                             "--audio_encoder (the encoder it was trained with)")
        return {}
    from talking_head.data.encoder_states import EncoderStateCache

    encoder = load_audio_encoder(args.audio_encoder)
    if args.encoder_layers:
        layers = [int(x) for x in args.encoder_layers.split(",")]
    else:
        layers = pretrained.get("encoder_layers") or encoder.output_layers
    args.encoder_layer_list, args.encoder_state_dim = list(layers), encoder.config.d_model
    return {str(r): EncoderStateCache.build(encoder, r, args.encoder_layer_list) for r in roots}


def _pretrained_config(path) -> dict:
    if not path:
        return {}
    import json

    path = Path(path)
    path = path / "landmark_model" if (path / "landmark_model").is_dir() else path
    return json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}


def training_set(args, data_dir: Path, caches: dict | None = None):
    """The train split's windows: --data_dir's (--data_dir_repeat copies, each drawing its own windows and
    references) and each --extra_data_dir's."""
    caches = caches or {}

    def train_set(root, copy=0):
        return LandmarkClipDataset(root, split="train", clip_frames=args.clip_frames, random_crop=True,
                                   seed=args.seed + 1000 * copy, audio_pad_frames=args.audio_context_frames,
                                   reference=args.reference, state_cache=caches.get(str(root)))

    if not args.extra_data_dir and args.data_dir_repeat == 1:
        return train_set(data_dir)
    parts = [train_set(data_dir, k) for k in range(args.data_dir_repeat)]
    parts += [train_set(Path(d)) for d in args.extra_data_dir]
    fps = {float(c["fps"]) for part in parts for c in part.clips}
    if len(fps) > 1:
        raise ValueError(f"--data_dir and --extra_data_dir mix frame rates {sorted(fps)}; prepare them at one fps")
    return _ConcatWindows(parts)


def build_model(args) -> KFusionLandmarkModel:
    if args.pretrained_model:
        path = Path(args.pretrained_model)
        if (path / "landmark_model").is_dir():  # a pipeline folder (e.g. the bundled assets/pipeline)
            path = path / "landmark_model"
        model = KFusionLandmarkModel.from_pretrained(path)
        overrides = getattr(args, "model_kwargs", None) or {}
        if overrides:
            # New config on top of the pretrained one (e.g. {"emotion_head": true}): parts the pretrained model
            # lacks start fresh (the emotion head: as no effect), every other weight is the pretrained one.
            config = {k: v for k, v in model.config.items() if not k.startswith("_")}
            config.update(overrides)
            fresh = KFusionLandmarkModel(**config)
            missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
            if unexpected or any(not k.startswith("emotion_residual.") for k in missing):
                raise ValueError(f"--model_kwargs {overrides} changes the pretrained model's weights' shapes "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]}); only additions such as "
                                 "emotion_head can be made to a pretrained model")
            logger.info(f"pretrained {path} with {overrides}; new: {sorted({k.split('.')[0] for k in missing})}")
            model = fresh
        return model
    kwargs = dict(LANDMARK_PRESETS[args.preset])
    if getattr(args, "audio_encoder", None):
        kwargs.update(context_encoder="encoder_states", encoder_layers=list(args.encoder_layer_list),
                      encoder_state_dim=int(args.encoder_state_dim))
    kwargs.update(getattr(args, "model_kwargs", None) or {})
    if args.wav2vec2_model:
        return KFusionLandmarkModel.from_wav2vec2_pretrained(args.wav2vec2_model, **kwargs)
    return KFusionLandmarkModel(**kwargs)


def record_emotions(model, datasets, aliases=None) -> None:
    """Write the trained emotions (the labels present in the training data, with those of a pretrained model)
    and `aliases` into the model's config."""
    from talking_head.constants import EMOTIONS

    present = {EMOTIONS[int(r["emotion_id"])] for part in datasets for r in part.clips
               if int(r.get("emotion_id", NUM_EMOTIONS)) < NUM_EMOTIONS}
    before = set(model.config.trained_emotions or [])
    trained = [e for e in EMOTIONS if e in present | before] or None
    aliases = dict(aliases) if aliases else (model.config.emotion_aliases or None)
    model.register_to_config(trained_emotions=trained, emotion_aliases=aliases)
    model._alias_table = model._make_alias_table(model.config.num_emotions, aliases)
    if aliases:
        logger.info(f"emotion aliases (read as another emotion at inference): {aliases}")
    logger.info(f"trained emotions: {trained or 'none (the null class only)'}")


def freeze_parameters(model, train_only: str | None, freeze_null_emotion: bool = False) -> None:
    """--train_only / --freeze_null_emotion: requires_grad off outside the given prefixes; the null emotion row's
    gradient zeroed (with weight decay 0, Adam then leaves it exactly as it was)."""
    if train_only:
        prefixes = [p.strip() for p in train_only.split(",") if p.strip()]
        names = [n for n, _ in model.named_parameters()]
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unknown:
            raise ValueError(f"--train_only: no parameters start with {unknown}")
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(p) for p in prefixes))
        logger.info(f"--train_only {train_only}: {sum(p.numel() for p in model.parameters() if p.requires_grad)} "
                    "trainable parameters")
    if freeze_null_emotion and model.emotion_embedding.weight.requires_grad:  # a frozen table needs no hook
        weight = model.emotion_embedding.weight
        null = model.config.num_emotions

        def zero_null(grad):
            grad = grad.clone()
            grad[null] = 0
            return grad

        weight.register_hook(zero_null)


def batch_fps(batch) -> float:
    fps = batch["fps"]
    if not torch.allclose(fps, fps[0]):
        raise ValueError(f"a batch mixes frame rates {sorted(set(fps.tolist()))}; prepare the data at one fps")
    return float(fps[0])


def forward(model, batch, emotion_labels=None, context_frames: int = 0):
    """Predicted landmarks of the batch's window. With `context_frames` = p the audio covers p more frames on
    each side (the dataset's audio_pad_frames); the model predicts all of them and the window's are returned."""
    frames = batch["landmarks"].shape[1]
    pred = model(batch["audio"], batch["reference_landmarks"], num_frames=frames + 2 * context_frames,
                 fps=batch_fps(batch), emotion_labels=emotion_labels,
                 context_states=batch.get("context_states")).landmarks
    return pred[:, context_frames: context_frames + frames]


# How far each point moves when the identity's mouth is opened synthetically (--aug_open_identity), as a share
# of the opening: lower lip fully, the lip corners and the chin partly (the jaw turns about the ears).
OPEN_WEIGHTS = {**{i: 1.0 for i in (55, 56, 57, 58, 59, 65, 66, 67)}, **{i: 0.4 for i in (48, 54, 60, 64)},
                **{i: 0.8 for i in (7, 8, 9)}, 6: 0.5, 10: 0.5, 5: 0.25, 11: 0.25}


def open_mouth(reference: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """reference (B, 68, 2) with the mouth opened by `amount` (B,) face widths: the lower lip and chin moved
    along the face's down direction (perpendicular to jaw end 0 -> 16), by OPEN_WEIGHTS."""
    across = reference[:, 16] - reference[:, 0]
    width = across.norm(dim=-1).clamp_min(1e-6)
    down = torch.stack([-across[:, 1], across[:, 0]], dim=-1) / width[:, None]  # y grows downwards
    weights = torch.zeros(reference.shape[1], dtype=reference.dtype)
    for i, w in OPEN_WEIGHTS.items():
        weights[i] = w
    return reference + (amount * width)[:, None, None] * weights[None, :, None] * down[:, None, :]


def window_silence(batch, context_frames: int) -> torch.Tensor:
    """(B, F) bool: the silent frames of each window (talking_head.evaluation.lip_motion.silent_frames on the
    window's audio, context included, before any augmentation)."""
    from talking_head.evaluation.lip_motion import silent_frames

    frames = batch["landmarks"].shape[1]
    fps = batch_fps(batch)
    rows = [silent_frames(a.numpy(), SAMPLE_RATE, fps, frames + 2 * context_frames)[context_frames:
                                                                                   context_frames + frames]
            for a in batch["audio"].float().cpu()]
    return torch.from_numpy(np.stack(rows))


def change_speed(batch, factor: float, context_frames: int):
    """The batch played `factor` times slower (> 1: more frames) or faster (< 1), audio and landmarks alike.

    The window's F frames become F' = round(F * factor) frames (the factor actually used is F' / F, so frames
    stay whole); the audio is stretched by the same factor (linear interpolation) and cut so that it again
    starts `context_frames` frames before the window and ends as many after it (zero where the stretched
    audio does not reach). Frame j of the new window shows the old frame at (j + 0.5) / r - 0.5.
    """
    lms = batch["landmarks"]
    frames = lms.shape[1]
    new_frames = max(2, int(round(frames * factor)))
    r = new_frames / frames
    if new_frames == frames:
        return batch
    fps = batch_fps(batch)
    spf = SAMPLE_RATE / fps
    audio = batch["audio"].float()
    stretched = torch.nn.functional.interpolate(audio[:, None], size=max(1, int(round(audio.shape[1] * r))),
                                                mode="linear", align_corners=False)[:, 0]
    offset = int(round(context_frames * (r - 1.0) * spf))
    length = int(round((new_frames + 2 * context_frames) * spf))
    left = max(0, -offset)
    piece = stretched[:, max(0, offset): max(0, offset) + length - left]
    piece = torch.nn.functional.pad(piece, (left, length - left - piece.shape[1]))
    src = ((torch.arange(new_frames, dtype=torch.float64) + 0.5) / r - 0.5).clamp(0, frames - 1)
    lo = src.floor().long().clamp(max=frames - 1)
    hi = (lo + 1).clamp(max=frames - 1)
    w = (src - lo).to(lms.dtype)[None, :, None, None]
    out = dict(batch)
    out["audio"] = piece
    out["landmarks"] = lms[:, lo] * (1 - w) + lms[:, hi] * w
    if "context_states" in batch:  # cached encoder states, stretched and cut like the audio (one per 320 samples)
        states = batch["context_states"].float().transpose(1, 2)
        stretched = torch.nn.functional.interpolate(states, size=max(1, int(round(states.shape[2] * r))),
                                                    mode="linear", align_corners=False)
        first, count = int(round(offset / 320)), -(-length // 320)
        cut = stretched[..., max(0, first): first + count]
        before = max(0, -first)
        cut = torch.nn.functional.pad(cut, (before, count - before - cut.shape[2]), mode="replicate")
        out["context_states"] = cut.transpose(1, 2)
    return out


def emotion_offset_table(datasets, output_dir=None) -> torch.Tensor:
    """(NUM_EMOTIONS + 1, 68, 2) offsets from neutral in face widths (zero for neutral, the null class and
    emotions without clips), from the emotion-labelled clips of `datasets` (--neutral_reference)."""
    import json

    from talking_head.constants import EMOTIONS
    from talking_head.evaluation.expression import clip_features, emotion_offsets

    shapes, labels = [], []
    for part in datasets:
        for c, row in enumerate(part.clips):
            e = int(row.get("emotion_id", NUM_EMOTIONS))
            if e < NUM_EMOTIONS:
                shapes.append(clip_features(part._landmarks(c)).reshape(-1, 2))
                labels.append(EMOTIONS[e])
    if not labels:
        raise ValueError("--neutral_reference: no emotion-labelled training clips (prepare CREMA-D with "
                         "`talking-head prepare cremad` and pass it as --extra_data_dir)")
    offsets = emotion_offsets(shapes, labels)
    table = torch.zeros(NUM_EMOTIONS + 1, shapes[0].shape[0], 2, dtype=torch.float64)
    for name, off in offsets.items():
        table[EMOTIONS.index(name)] = torch.from_numpy(off)
    counts = {e: labels.count(e) for e in sorted(set(labels))}
    logger.info(f"--neutral_reference: emotion offsets from {len(labels)} labelled clips {counts}; mean point "
                "shift in face widths: " + ", ".join(f"{k} {np.linalg.norm(v, axis=-1).mean():.4f}"
                                                     for k, v in offsets.items()))
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "emotion_offsets.json").write_text(json.dumps(
            {"units": "face widths, in the face's own frame (talking_head.evaluation.expression.normalise_shape)",
             "clips": counts, "offsets": {k: np.round(v, 5).tolist() for k, v in offsets.items()}}))
    return table


def neutralise_reference(reference: torch.Tensor, labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Identity landmarks (B, 68, 2) minus their emotion's offset from neutral (`emotion_offset_table`), put on
    each face in its own pose and size."""
    from talking_head.evaluation.expression import apply_offset

    offsets = table[labels.cpu().clamp(0, table.shape[0] - 1)].numpy()
    out = apply_offset(reference.detach().cpu().double().numpy(), -offsets)
    return torch.from_numpy(out).to(reference.dtype)


def augment(batch, args, generator: torch.Generator):
    """Speed (whole batch), gain / clipping / noise on the audio, and one random similarity transform per window
    on the identity and target landmarks (see the --aug_* flags). Returns (augmented batch, the batch after
    the speed change only); the input is not modified."""
    batch = dict(batch)
    if args.aug_speed > 0 and float(torch.rand((), generator=generator)) < args.aug_speed_prob:
        factor = 1.0 + args.aug_speed * (2 * float(torch.rand((), generator=generator)) - 1)
        batch = change_speed(batch, factor, args.audio_context_frames)
    if args.pose_align:
        batch["landmarks"] = align_pose(batch["landmarks"], batch["reference_landmarks"],
                                        smooth_frames=args.pose_smoothing)
    table = getattr(args, "emotion_offset_table", None)
    if table is not None:
        batch["reference_landmarks"] = neutralise_reference(batch["reference_landmarks"], batch["emotion"], table)
    if args.aug_open_identity > 0:
        n = batch["reference_landmarks"].shape[0]
        opened = torch.rand(n, generator=generator) < args.aug_open_identity
        amount = torch.rand(n, generator=generator) * args.aug_open_amount * opened
        batch["reference_landmarks"] = open_mouth(batch["reference_landmarks"].float(), amount)
    clean = dict(batch)  # after the speed change, before gain / clipping / noise (for the silence mask)
    audio = batch["audio"].float()
    n = audio.shape[0]

    def uniform(low, high, size=(n,)):
        return low + (high - low) * torch.rand(size, generator=generator)

    if args.aug_gain_db > 0:
        audio = audio * (10.0 ** (uniform(-args.aug_gain_db, args.aug_gain_db) / 20.0))[:, None]
    if args.aug_clip_prob > 0:
        clip = torch.rand(n, generator=generator) < args.aug_clip_prob
        boosted = (audio * (10.0 ** (uniform(6.0, 20.0) / 20.0))[:, None]).clamp(-1.0, 1.0)
        audio = torch.where(clip[:, None], boosted, audio)
    if args.aug_noise_prob > 0:
        noisy = torch.rand(n, generator=generator) < args.aug_noise_prob
        rms = audio.pow(2).mean(dim=1).sqrt().clamp_min(1e-4)
        noise_rms = rms * 10.0 ** (-uniform(*args.aug_noise_snr) / 20.0)
        noise = torch.randn(audio.shape, generator=generator) * (noise_rms * noisy)[:, None]
        audio = audio + noise
    batch["audio"] = audio
    if args.aug_face_scale > 0 or args.aug_face_shift > 0 or args.aug_face_aspect > 0:
        scale = uniform(1.0 - args.aug_face_scale, 1.0 + args.aug_face_scale)[:, None, None]
        aspect = uniform(1.0 - args.aug_face_aspect, 1.0 + args.aug_face_aspect)
        scale = scale * torch.stack([aspect, torch.ones_like(aspect)], dim=-1)[:, None, :]  # (n, 1, 2)
        shift = uniform(-args.aug_face_shift, args.aug_face_shift, (n, 1, 2))
        batch["reference_landmarks"] = (batch["reference_landmarks"] - 0.5) * scale + 0.5 + shift
        batch["landmarks"] = (batch["landmarks"] - 0.5) * scale[:, None] + 0.5 + shift[:, None]
    return batch, clean


class Validator:
    def __init__(self, args, data_dir, accelerator, metrics: JsonlLog, state_cache=None):
        self.args, self.accelerator, self.metrics = args, accelerator, metrics
        # Identity landmarks from the same held-out clip (another moment of it), like an identity photo
        # taken from the same recording.
        dataset = held_out(lambda split: LandmarkClipDataset(data_dir, split=split, clip_frames=args.clip_frames,
                                                             random_crop=False, seed=args.seed,
                                                             reference="same_clip", state_cache=state_cache,
                                                             audio_pad_frames=args.audio_context_frames), data_dir)
        split = dataset.split
        n = min(len(dataset), args.validation_clips)
        self.indices = sorted(set(np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()))
        self.items = [dataset[i] for i in self.indices]
        # The first clip again, with its frames, for the video.
        video_set = TalkingHeadClipDataset(data_dir, split=split, clip_frames=args.clip_frames, random_crop=False,
                                           seed=args.seed, sample_size=args.validation_video_size,
                                           reference="same_clip", audio_pad_frames=args.audio_context_frames)
        self.video_item = video_set[self.indices[0]]
        if "context_states" in self.items[0]:  # the same window (same split, seed and index) as items[0]
            self.video_item["context_states"] = self.items[0]["context_states"]
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
            pred = forward(model, batch, batch["emotion"], args.audio_context_frames)
            losses.append(landmark_loss(pred, batch["landmarks"], mouth_weight=args.mouth_weight,
                                        all_weight=args.all_weight, velocity_weight=args.velocity_weight,
                                        centered=args.centered_loss, absolute_weight=args.absolute_weight,
                                        distance=args.point_distance).item())
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
        pred = forward(model, batch, batch["emotion"], args.audio_context_frames)[0].cpu().numpy()
        video = draw_landmarks(to_uint8_video(item["frames"]), (item["landmarks"].numpy(), (0, 220, 0)),
                               (pred, (230, 30, 30)))
        fps = float(item["fps"])
        log_video(self.accelerator, "validation/landmarks_truth_green_pred_red", video, global_step, fps)
        pad = int(round(args.audio_context_frames * SAMPLE_RATE / fps))
        audio = item["audio"].numpy()
        write_validation_mp4(Path(args.output_dir) / "validation" / f"step-{global_step:07d}.mp4", video, fps,
                             audio=audio[pad: len(audio) - pad] if pad else audio)
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
    caches = state_caches(args, [data_dir, *[Path(d) for d in args.extra_data_dir]])
    train_dataset = training_set(args, data_dir, caches)

    parts = train_dataset.datasets if isinstance(train_dataset, _ConcatWindows) else [train_dataset]
    args.emotion_offset_table = emotion_offset_table(parts, output_dir) if args.neutral_reference else None
    model = build_model(args)
    record_emotions(model, parts, args.emotion_aliases)
    freeze_parameters(model, args.train_only, args.freeze_null_emotion)
    if args.gradient_checkpointing:
        logger.warning("KFusionLandmarkModel does not support gradient checkpointing; ignoring the flag")
    params = [p for p in model.parameters() if p.requires_grad]
    domain_bias = None
    if args.domain_bias:
        domain_bias = torch.nn.Parameter(torch.zeros(68, 2))
        params.append(domain_bias)
    run = TrainingRun(accelerator, args, output_dir, "train_landmarks", model, params, train_dataset, collate_clips,
                      ema_cls=KFusionLandmarkModel)
    model, optimizer, lr_scheduler, metrics = run.model, run.optimizer, run.lr_scheduler, run.metrics

    unwrapped = accelerator.unwrap_model(model)
    if args.aug_freq_warp > 0:
        if unwrapped.config.context_encoder != "logmel":
            raise ValueError("--aug_freq_warp needs the logmel context encoder")
        unwrapped.context_frontend.freq_warp = args.aug_freq_warp  # in train mode only; not saved
    logger.info(f"{len(train_dataset)} training windows of {args.clip_frames} frames from {data_dir}; "
                f"{run.shape_line()}; model "
                f"{sum(p.numel() for p in unwrapped.parameters() if p.requires_grad) / 1e6:.2f}M trainable parameters")
    validator = None
    if accelerator.is_main_process and args.validation_clips > 0:
        validator = Validator(args, data_dir, accelerator, metrics, caches.get(str(data_dir)))

    def validate():
        if validator is None:
            return
        with run.averaged_weights(unwrapped), torch.random.fork_rng(devices=[]):
            validator(unwrapped, loop.global_step)

    model.train()
    loop = run.update_loop(validate, loss_format=".3g")
    aug_generator = torch.Generator().manual_seed(args.seed + 1000 * accelerator.process_index)
    for batch in loop:
        with accelerator.accumulate(model):
            batch, clean = augment(batch, args, aug_generator)
            silent = window_silence(clean, args.audio_context_frames) if args.silent_weight else None
            labels = batch["emotion"]
            if args.p_uncond > 0:
                drop = torch.rand(labels.shape, device=labels.device) < args.p_uncond
                labels = torch.where(drop, torch.full_like(labels, NUM_EMOTIONS), labels)
            pred = forward(model, batch, labels, args.audio_context_frames)
            if domain_bias is not None:
                ref = batch["reference_landmarks"]
                width = (ref[:, 16] - ref[:, 0]).norm(dim=-1)
                labelled = (batch["emotion"] < NUM_EMOTIONS).to(pred.dtype)
                pred = pred + (labelled * width)[:, None, None, None] * domain_bias.to(pred.device)
            loss = landmark_loss(pred, batch["landmarks"], mouth_weight=args.mouth_weight,
                                 all_weight=args.all_weight, velocity_weight=args.velocity_weight,
                                 centered=args.centered_loss, absolute_weight=args.absolute_weight,
                                 silent_frames=silent, silent_weight=args.silent_weight,
                                 distance=args.point_distance)
            loop.backward_and_step(loss, pred.shape[0], optimizer, lr_scheduler, params)
        loop.end_micro_step(batch, loss.item(), lr_scheduler)
    global_step = loop.global_step

    run.finish_weights(unwrapped, global_step)
    if accelerator.is_main_process:
        path = save_component_atomic(unwrapped, output_dir / "landmark_model")
        if domain_bias is not None:
            import json

            bias = domain_bias.detach().cpu().numpy()
            (output_dir / "domain_bias.json").write_text(json.dumps(
                {"units": "face widths", "mean_point_shift": float(np.linalg.norm(bias, axis=-1).mean()),
                 "bias": np.round(bias, 5).tolist()}))
            logger.info(f"--domain_bias: mean point shift {float(np.linalg.norm(bias, axis=-1).mean()):.4f} face "
                        "widths (not saved in the model)")
        logger.info(f"saved the landmark model to {path} (train_diffusion.py --landmark_model {path})")
    del model, unwrapped, optimizer, lr_scheduler, run, validator, params
    finish(accelerator)


if __name__ == "__main__":  # python -m talking_head.trainers.landmarks
    main(sys.argv[1:])
