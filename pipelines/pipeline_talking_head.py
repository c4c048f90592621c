"""TalkingHeadPipeline: speech + a photo -> a talking-head video of that photo (DESIGN.md sections 1-2, 7).

    audio ──► emotion classifier ──► emotion class (or the caller's `emotion=`)
      └────► KFusion audio→landmarks ──► 68 landmarks per video frame
    photo ──► mouth box around the lower face (talking_head.mouth_box), cut at the photo's resolution
          ──► Gaussian mask-noise: one solid lower-face region replaced by noise (the context)
          ──► class-conditioned 3D UNet + scheduler, from t_start, pixels outside the region reset
              to the context after every step ──► feathered blend back into the photo ──► frames

Only the lower face is generated (DESIGN 7.2): the UNet sees, per frame of a clip, the noisy mouth box,
the masked context, the region mask, the target landmarks drawn as heatmaps and a reference box of the
person (`unet_input`); everything outside the region is the photo's own pixels, at the photo's resolution
(capped by `max_size`). The head holds the photo's pose (DESIGN 7.3).

Audio of any length is rendered clip by clip (`clip_frames` frames, the last `clip_overlap` of each clip
generated again by the next one and cross-faded; talking_head.clip_schedule), so memory stays bounded.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from talking_head.audio import load_audio
from talking_head.clip_schedule import ClipSchedule
from talking_head.constants import EMOTIONS, NO_EMOTION, NULL_EMOTION, NUM_LANDMARKS, SAMPLE_RATE, emotion_label
from talking_head.face import preload_face_models
from talking_head.identity import DEFAULT_MAX_SIZE, Photo, StillIdentity, VideoIdentity, is_video, load_photo
from talking_head.landmark_stream import LandmarkStream
from talking_head.models.emotion_classifier import predict_emotion
from talking_head.models.emotion_head import (DEFAULT_DRAW_THRESHOLD, WhisperEmotionHead, check_emotion_head,
                                              draw_strength)
from talking_head.models.mask_noise import gaussian_blur
from talking_head.models.whisper_encoder import check_audio_encoder
from talking_head.mouth_box import BoxTrack, MouthBox, feather, follow_face
from talking_head.mouth_rest import peak_level_db, rest_mouth, rest_weights
from talking_head.schedulers.scheduling_sdedit import DEFAULT_T_START, sdedit_timesteps, validate_t_start
from talking_head.utils import smooth_over_time

logger = logging.get_logger(__name__)  # diffusers' logger: warnings show by default


@dataclass
class TalkingHeadPipelineOutput(BaseOutput):
    """What `TalkingHeadPipeline.__call__` returns.

    frames: (B, F, H, W, 3) float in [0, 1] ("np"), a (B, F, 3, H, W) tensor
        ("pt"), B lists of PIL images ("pil"), or None (output_type=None, when
        the frames went to `frames_callback` only). H x W is the photo's size
        (capped by `max_size`), or the face crop's with `output_crop=True`.
    landmarks: (B, F, 68, 2) float32, (x, y) in pixels of the output frame.
    emotion: B emotion names rendered (the one given, or the one detected; "neutral" for a video whose detected
        emotion is only reported, see `detected_emotion_in_video`).
    emotion_probs: (B, 8) probabilities the classifier heard (also when `emotion` was given), or None
        without a classifier.
    emotion_strength: per item, how strongly `emotion` was drawn: the `emotion_scale` given with an emotion
        name; for a detected emotion, emotion_scale x the classifier's drawing strength (`detected_emotion_scale`;
        0 when it rendered neutral). None for the null class.
    fps: frames per second of `frames`.
    audio: (B, S) float32 16 kHz mono audio that drove the video.
    sample_rate: the rate of `audio` (16000).
    frames_without_face: per item, the output frames shown unchanged because the identity video has no face
        there (dubbing); 0 for a photo.
    """

    frames: np.ndarray | torch.Tensor | list | None
    landmarks: np.ndarray
    emotion: list[str]
    emotion_probs: np.ndarray | None
    fps: float
    audio: np.ndarray
    sample_rate: int
    frames_without_face: list[int] | None = None
    emotion_strength: list[float | None] | None = None


# The UNet's input channels (see `unet_input`): noisy box 3, masked context 3, region mask 1, landmark
# heatmaps 3, reference box 3.
UNET_IN_CHANNELS = 13
REFERENCE_CHANNEL = 10  # first channel of the reference box (the UNet's residual_channel)


def unet_input(noisy: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, heatmaps: torch.Tensor,
               reference: torch.Tensor) -> torch.Tensor:
    """cat[noisy, context, mask, heatmaps, reference] on the channel axis: (B, 13, F, S, S).

    noisy, context (B, 3, F, S, S); mask (B, 1, F, S, S); heatmaps (B, 3, F, S, S); reference (B, 3, S, S),
    one frame repeated over F. The trainer builds its inputs with this same function.
    """
    frames = noisy.shape[2]
    reference = reference[:, :, None].expand(-1, -1, frames, -1, -1)
    return torch.cat([noisy, context.to(noisy.dtype), mask.to(noisy.dtype), heatmaps.to(noisy.dtype),
                      reference.to(noisy.dtype)], dim=1)


def check_emotion_scale(emotion_scale) -> float:
    """`emotion_scale` as a float, or one ValueError: it must be a finite number >= 0."""
    if not (_is_number(emotion_scale) and math.isfinite(float(emotion_scale)) and float(emotion_scale) >= 0):
        raise ValueError(f"emotion_scale must be a finite number >= 0 (0 = neutral, 1 = as learned, > 1 = "
                         f"exaggerated), got {emotion_scale!r}")
    return float(emotion_scale)


def detected_emotion_scale(emotion_scale: float, probs: np.ndarray | None, batch: int,
                           threshold: float = DEFAULT_DRAW_THRESHOLD) -> np.ndarray:
    """(batch,) the emotion_scale per item: as given, or, for an emotion the classifier detected (`probs`, (B, 8)),
    times its drawing strength (`talking_head.models.emotion_head.draw_strength`): clip((p_max - t) / (1 - t), 0, 1)
    with t = `threshold`, 0 when the most probable emotion is neutral. A detected emotion is drawn only as strongly
    as the classifier is sure (DESIGN.md 8.4): below t, not at all."""
    scales = np.full(batch, float(emotion_scale), dtype=np.float32)
    return scales if probs is None else scales * draw_strength(probs, threshold)[1]


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


# Clips' worth of frames in the landmark model's first chunk (the first frame waits for it alone).
FIRST_LANDMARK_CHUNK_CLIPS = 4

# Highest frame rate accepted: far above any video rate, below which the frame count stays
# proportional to the audio (fps=1e6 on a short clip would allocate gigabytes of landmarks).
MAX_FPS = 120.0


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


# ------------------------------------------------------------- saved-pipeline checks
def _read_json_object(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not a readable JSON file: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, got a {type(data).__name__}")
    return data


def _same_kind(value, default) -> bool:
    """Whether a config value has the JSON type of the parameter's default (ints for ints, lists for tuples)."""
    if value is None or default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        kinds = {type(d) for d in default}
        return len(kinds) != 1 or all(_same_kind(v, default[0]) for v in value)
    return True


def _kind(default) -> str:
    """'an integer', 'a list of integers', ...: what a config value like `default` is called."""
    names = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
             str: ("a string", "strings")}
    if isinstance(default, (list, tuple)):
        return "a list" + (f" of {names[type(default[0])][1]}" if default and type(default[0]) in names else "")
    return names.get(type(default), (f"a {type(default).__name__}",))[0]


def _check_config_types(file: Path, cls) -> None:
    """Refuse a component config whose values do not have the types of the class's defaults.

    A hand-edited config ("in_channels": "7", "block_out_channels": "abc") would otherwise fail
    deep inside the model's constructor with a message that names neither the file nor the key.
    """
    config = _read_json_object(file)
    params = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        param = params.get(key)
        if key.startswith("_") or param is None or param.default is inspect.Parameter.empty:
            continue
        if not _same_kind(value, param.default):
            raise ValueError(f"{file}: {key} must be {_kind(param.default)} (default {param.default!r}), "
                             f"got {value!r}")


def _check_safetensors(file: Path) -> list[str]:
    """The tensor names of a safetensors file, or a ValueError if it is cut short or not safetensors."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if n < 2 or 8 + n > size:
                raise ValueError("its header is cut short")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except ValueError as err:
        raise ValueError(f"weights file {file} is not a complete safetensors file ({size} bytes): {err}") from None
    except (KeyError, TypeError, IndexError, AttributeError):
        raise ValueError(f"weights file {file} is not a safetensors file: its header is malformed") from None
    if 8 + n + end > size:
        raise ValueError(f"weights file {file} is truncated: it has {size} bytes, its header describes {8 + n + end}"
                         " (an interrupted copy or save?)")
    return [k for k in header if k != "__metadata__"]


def _component_class(library, class_name):
    """The class a model_index.json entry names, for the project's and diffusers' components only."""
    if not (isinstance(library, str) and isinstance(class_name, str)):
        return None
    if library != "diffusers" and not library.startswith("talking_head."):
        return None  # transformers components check their own configs
    try:
        return getattr(importlib.import_module(library), class_name, None)
    except ImportError:
        return None


class TalkingHeadPipeline(DiffusionPipeline):
    r"""Audio-driven, emotion-conditioned talking-head generation.

    Components:
        unet ([`ClassConditionedUNet3DModel`]): denoises (B, 13, F, S, S) mouth-box clips (`unet_input`).
        scheduler ([`SchedulerMixin`]): DDPM by default; DDIM or DPM-Solver for fewer steps.
        landmark_model ([`KFusionLandmarkModel`]): audio -> 68 landmarks per frame.
        mask_noise ([`GaussianMaskNoise`]): the lower-face region, the landmark heatmaps, the mask noise.
        audio_encoder ([`WhisperSpeechEncoder`], optional): OpenAI's Whisper encoder, frozen; its states are the
            landmark model's Context domain when that model reads them (`landmark_model.reads_encoder_states`),
            and required then (DESIGN.md 8.3).
        emotion_classifier (transformers classifier, optional): audio -> 8 MEAD emotions: a
            [`WhisperEmotionHead`] on the `audio_encoder`'s states (`talking_head.models.emotion_head`; calibrated,
            its `draw_threshold` sets how sure it must be to draw), or an older stand-alone classifier (a log-mel
            CNN, a log-mel or waveform Transformer; `talking_head.models.emotion_classifier`).
        feature_extractor ([`EmotionFeatureExtractor`] or [`Wav2Vec2FeatureExtractor`], optional): a stand-alone
            classifier's input processing (none for a `WhisperEmotionHead`).

    Config (saved in model_index.json):
        clip_frames: frames generated per UNet call.
        clip_overlap: frames shared by consecutive clips (cross-faded).
        landmark_chunk_frames: frames per landmark-model call for long audio (250: 10 s, so the model's
            activations for a long recording are those of a 10 s one).
        keep_threshold: where the generated box differs from the frame's own box by less than about this
            (mean absolute difference, pixel range [-1, 1], after a small blur), the frame's own full-resolution
            pixels are kept instead of the 64² box upscaled: skin that did not move stays sharp, only what
            changed (lips, teeth, jaw) is drawn. 0 blends the whole region in.
        rest_mouth_on_silence: on silent frames the predicted mouth and jaw return to the identity's own
            (`talking_head.mouth_rest`: a weight from each frame's audio level against the loudest nearby),
            so the mouth is closed before the speech starts and between sentences.
        unet_emotion_conditioning: whether the renderer's class input learned the emotions. False (the bundled
            pipeline: its UNet was trained on unlabelled video, so only its null-class row is trained): the UNet
            always gets the null class and the emotion reaches the face only through the landmarks (the landmark
            model's emotion input, `emotion_scale`); `guidance_scale` then has nothing to guide.
        detected_emotion_in_video: whether an emotion the classifier detected (no `emotion=` given) is drawn on
            a video identity (dubbing). False (default): a video's eyes, brows and cheeks already show the
            person's own expression, so the mouth moves with the speech at the neutral class and the detected
            emotion is only reported (an emotion given by name is drawn). Measured on the dubbing protocol,
            the classifier's guesses on neutral speech (sad, disgusted) cost 0.6 dB PSNR and 0.1 px M-LD.
        landmark_smoothing: std, in frames, of a Gaussian blur of the predicted landmarks over time (0 = off). The
            landmark model's frames jitter a little around the motion; 1 frame (40 ms at 25 fps) raised the
            mouth-opening correlation on held-out speech (docs/results/lip-motion/) and moves no landmark by
            more than the jitter.
    """

    model_cpu_offload_seq = "emotion_classifier->audio_encoder->landmark_model->unet"
    _optional_components = ["emotion_classifier", "feature_extractor", "audio_encoder"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, scheduler, landmark_model, mask_noise, emotion_classifier=None,
                 feature_extractor=None, audio_encoder=None, clip_frames: int = 16, clip_overlap: int = 4,
                 landmark_chunk_frames: int = 250, keep_threshold: float = 0.1,
                 unet_emotion_conditioning: bool = True, rest_mouth_on_silence: bool = True,
                 detected_emotion_in_video: bool = False, landmark_smoothing: float = 1.0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, landmark_model=landmark_model,
                              mask_noise=mask_noise, emotion_classifier=emotion_classifier,
                              feature_extractor=feature_extractor, audio_encoder=audio_encoder)
        self.register_to_config(clip_frames=clip_frames, clip_overlap=clip_overlap,
                                landmark_chunk_frames=landmark_chunk_frames, keep_threshold=keep_threshold,
                                unet_emotion_conditioning=unet_emotion_conditioning,
                                rest_mouth_on_silence=rest_mouth_on_silence,
                                detected_emotion_in_video=detected_emotion_in_video,
                                landmark_smoothing=landmark_smoothing)
        self.check_components()

    # ------------------------------------------------------------------ checks
    def check_components(self):
        """Refuse a pipeline whose parts do not fit together, before any model runs."""
        cfg = self.config
        if not (isinstance(cfg.clip_frames, int) and cfg.clip_frames >= 1):
            raise ValueError(f"clip_frames must be an integer >= 1, got {cfg.clip_frames!r}")
        if not (isinstance(cfg.clip_overlap, int) and 0 <= cfg.clip_overlap < cfg.clip_frames):
            raise ValueError(f"clip_overlap must be an integer in [0, clip_frames), got {cfg.clip_overlap!r}")
        keep = cfg.keep_threshold
        if not (_is_number(keep) and math.isfinite(keep) and 0 <= keep <= 2):
            raise ValueError(f"keep_threshold must be a number in [0, 2], got {keep!r}")
        sigma = getattr(cfg, "landmark_smoothing", 0.0)
        if not (_is_number(sigma) and math.isfinite(sigma) and 0 <= sigma <= 5):
            raise ValueError(f"landmark_smoothing must be a number of frames in [0, 5], got {sigma!r}")
        if not isinstance(cfg.rest_mouth_on_silence, bool):
            raise ValueError(f"rest_mouth_on_silence must be true or false, got {cfg.rest_mouth_on_silence!r}")
        if not isinstance(cfg.unet_emotion_conditioning, bool):
            raise ValueError(f"unet_emotion_conditioning must be true or false, got {cfg.unet_emotion_conditioning!r}")
        if not (isinstance(cfg.landmark_chunk_frames, int) and cfg.landmark_chunk_frames >= 1):
            raise ValueError(f"landmark_chunk_frames must be an integer >= 1, got {cfg.landmark_chunk_frames!r}")
        unet = self.unet
        if unet.config.out_channels != 3:
            raise ValueError(f"unet must output 3 (RGB) channels, has out_channels={unet.config.out_channels}")
        if unet.config.in_channels != UNET_IN_CHANNELS:
            raise ValueError(
                f"this pipeline's unet takes {unet.config.in_channels} input channels: it was made for the "
                f"whole-face renderer of talking-head 0.1 (in_channels 3 or 7), which the lower-face renderer "
                f"replaced (DESIGN.md 7.2: the UNet now takes {UNET_IN_CHANNELS} channels: noisy mouth box, masked "
                "context, region mask, landmark heatmaps, reference box). Retrain the UNet with "
                "train/train_diffusion.py, or use the bundled default pipeline"
            )
        if unet.config.residual_channel not in (None, REFERENCE_CHANNEL):
            raise ValueError(f"unet.residual_channel must be {REFERENCE_CHANNEL} (the reference box) or null, got "
                             f"{unet.config.residual_channel!r}")
        if unet.config.condition_skip:
            raise ValueError("unet.condition_skip belongs to the whole-face renderer (7 input channels); the "
                             "lower-face renderer resets the pixels outside the region instead")
        levels = len(unet.config.block_out_channels)
        if unet.config.sample_size % (2 ** (levels - 1)):
            raise ValueError(f"unet sample_size {unet.config.sample_size} is not divisible by 2**{levels - 1}")
        if self.landmark_model.config.num_landmarks != NUM_LANDMARKS:
            raise ValueError(f"landmark_model predicts {self.landmark_model.config.num_landmarks} landmarks, "
                             f"the pipeline needs {NUM_LANDMARKS}")
        if unet.config.num_class_embeds != len(EMOTIONS):
            raise ValueError(f"unet has {unet.config.num_class_embeds} emotion classes, expected {len(EMOTIONS)}")
        check_audio_encoder(self.landmark_model, self.audio_encoder)
        if self.emotion_classifier is not None:
            labels = getattr(self.emotion_classifier.config, "id2label", {})
            names = [str(labels[i]).lower() for i in sorted(labels, key=int)] if labels else []
            if tuple(names) != EMOTIONS:
                raise ValueError(f"emotion_classifier labels {names} differ from the project's {list(EMOTIONS)}")
            if isinstance(self.emotion_classifier, WhisperEmotionHead):  # reads the shared audio_encoder's states
                check_emotion_head(self.emotion_classifier, self.audio_encoder)
            elif self.feature_extractor is None:
                raise ValueError("the pipeline has an emotion_classifier but no feature_extractor")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline from a local directory (never from a hub)."""
        path = Path(pretrained_model_name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"pipeline directory not found: {path}")
        if not path.is_dir():
            raise ValueError(f"pipeline path {path} is a file, expected a directory made by save_pretrained")
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a pipeline directory: it has no model_index.json")
        index = _read_json_object(path / "model_index.json")
        listed = {k: v for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is not None}
        # The emotion classifier is optional: a pipeline whose classifier folder was removed (e.g. to drop the
        # RAVDESS-trained model's non-commercial licence) loads without it and uses the given emotion or none.
        emotion_parts = ("emotion_classifier", "feature_extractor")
        if any(name in listed and not (path / name).is_dir() for name in emotion_parts):
            logger.warning(f"{path} has no emotion classifier folder: loading without a classifier (the emotion "
                           "is the one you pass, else none)")
            for name in emotion_parts:
                listed.pop(name, None)
                kwargs.setdefault(name, None)
        if "audio_encoder" not in listed or not (path / "audio_encoder").is_dir():
            # A pipeline made before the Whisper encoder (its landmark model reads log-mel) loads without one;
            # check_components refuses a landmark model that needs it.
            listed.pop("audio_encoder", None)
            kwargs.setdefault("audio_encoder", None)
        weights = {}
        for name in sorted({"unet", "scheduler", "landmark_model", "mask_noise"} | set(listed)):
            folder = path / name
            if not folder.is_dir():
                raise ValueError(f"pipeline directory {path} is incomplete: the {name!r} folder is missing")
            component = _component_class(*listed.get(name, (None, None)))
            config_name = getattr(component, "config_name", None)
            if config_name and (folder / config_name).is_file():
                _check_config_types(folder / config_name, component)
            files = sorted(folder.glob("*.safetensors"))
            if files:
                weights[name] = {key for file in files for key in _check_safetensors(file)}
        kwargs.setdefault("use_safetensors", True)  # never unpickle a .bin
        try:
            pipe = super().from_pretrained(path, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as err:  # mismatched shapes, broken configs, missing weight files
            raise ValueError(f"pipeline directory {path} could not be loaded: {err}") from err
        for name, keys in weights.items():  # diffusers fills tensors missing from a file with random values
            module = getattr(pipe, name, None)
            if not isinstance(module, torch.nn.Module):
                continue
            missing = sorted(set(module.state_dict()) - keys)
            if missing:
                raise ValueError(f"pipeline directory {path}: the {name} weights lack {len(missing)} of its "
                                 f"{len(module.state_dict())} tensors (e.g. {missing[0]!r}); they do not match "
                                 f"{name}'s config")
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise ValueError(f"pipeline directory {path}: the {name} weights contain NaN or infinite values "
                                 "(saved from a diverged training run?)")
        preload_face_models()  # the photo's face detection then starts without waiting for dlib's models
        return pipe

    # ----------------------------------------------------------------- inputs
    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)

    def prepare_identity(self, identity_frame, identity_landmarks=None, crop_face: bool = True,
                         max_size: int = DEFAULT_MAX_SIZE) -> Photo:
        """The identity photo at the output's resolution, its landmarks and face crop (talking_head.identity)."""
        return load_photo(identity_frame, identity_landmarks, crop_face=crop_face, max_size=max_size)

    def check_inputs(self, audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                     sample_rate, output_type, identity_landmarks, callback_on_step_end_tensor_inputs=None,
                     max_size=DEFAULT_MAX_SIZE):
        audios = _as_list(audio)
        frames = [identity_frame] if is_video(identity_frame, len(audios)) else _as_list(identity_frame)
        if len(audios) == 0:
            raise ValueError("audio is empty: no audio given")
        if len(frames) not in (1, len(audios)):
            raise ValueError(f"got {len(audios)} audio inputs but {len(frames)} identity frames; give one or as many")
        if identity_landmarks is not None and np.ndim(identity_landmarks) != 2 \
                and len(_as_list(identity_landmarks)) != len(frames):
            raise ValueError("give one identity_landmarks array per identity frame")
        if emotion is not None:
            for name in _as_list(emotion):
                emotion_label(name)
            if len(_as_list(emotion)) not in (1, len(audios)):
                raise ValueError(f"got {len(_as_list(emotion))} emotions for {len(audios)} audio inputs")
        validate_t_start(t_start, self.scheduler.config.num_train_timesteps)
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool)
                                                or int(num_inference_steps) != num_inference_steps
                                                or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a whole number >= 1, got {num_inference_steps!r}")
        if not (_is_number(guidance_scale) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0 (<= 1 = no guidance), "
                             f"got {guidance_scale!r}")
        if not (_is_number(fps) and 0 < fps <= MAX_FPS):
            raise ValueError(f"fps must be a number > 0 and <= {MAX_FPS:g}, got {fps!r}")
        if sample_rate is not None and not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 64:
            raise ValueError(f"max_size must be a whole number of pixels >= 64, got {max_size!r}")
        if callback_on_step_end_tensor_inputs is not None and not set(callback_on_step_end_tensor_inputs) <= set(
                self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                             f"got {list(callback_on_step_end_tensor_inputs)}")
        if output_type not in ("np", "pt", "pil", None):
            raise ValueError(f"output_type must be 'np', 'pt', 'pil' or None, got {output_type!r}")

    # ------------------------------------------------------------- components
    @torch.no_grad()
    def classify_emotion(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """(B, 8) emotion probabilities from 16 kHz waveforms: a `WhisperEmotionHead` reads the shared
        `audio_encoder`'s states (calibrated probabilities; long audio in a bounded number of pieces), an older
        classifier its `feature_extractor`'s windows."""
        if isinstance(self.emotion_classifier, WhisperEmotionHead):
            probs = self.emotion_classifier.classify(self.audio_encoder, list(waveforms))
        else:
            probs = predict_emotion(self.emotion_classifier, self.feature_extractor, waveforms)
        return probs.float().cpu().numpy()

    @property
    def emotion_draw_threshold(self) -> float:
        """t of the drawing rule (`detected_emotion_scale`): the classifier's `draw_threshold` when its config has
        one (a `WhisperEmotionHead`, calibrated with it), else DEFAULT_DRAW_THRESHOLD."""
        config = getattr(self.emotion_classifier, "config", None)
        return float(getattr(config, "draw_threshold", DEFAULT_DRAW_THRESHOLD))

    def detected_emotion(self, probs: np.ndarray, video: bool = False, emotion_scale: float = 1.0):
        """(names drawn, strengths drawn) for (B, 8) probabilities of a detected emotion: the most probable
        emotion at emotion_scale x its drawing strength (`detected_emotion_scale`), or "neutral" at 0 when the
        classifier is unsure, hears neutral, or the identity does not draw a detected emotion (a video, see
        `draws_detected_emotion`)."""
        scales = detected_emotion_scale(emotion_scale, probs, len(probs), self.emotion_draw_threshold)
        draws = self.draws_detected_emotion(video)
        names = [EMOTIONS[int(k)] if draws and s > 0 else EMOTIONS[0] for k, s in zip(probs.argmax(axis=1), scales)]
        return names, [float(s) if name != EMOTIONS[0] else 0.0 for name, s in zip(names, scales)]

    @torch.no_grad()
    def predict_landmarks(self, waveforms: torch.Tensor, identity_landmarks: torch.Tensor, num_frames: int,
                          fps: float, emotion_labels: torch.Tensor, emotion_scale: float = 1.0) -> torch.Tensor:
        """(B, F, 68, 2) landmarks normalised to the face crop, in chunks of `landmark_chunk_frames`."""
        return torch.cat(list(self.landmark_chunks(waveforms, identity_landmarks, num_frames, fps, emotion_labels,
                                                   emotion_scale=emotion_scale)), dim=1)

    @torch.no_grad()
    def landmark_chunks(self, waveforms: torch.Tensor, identity_landmarks: torch.Tensor, num_frames: int,
                        fps: float, emotion_labels: torch.Tensor, first: int | None = None,
                        emotion_scale: float = 1.0):
        """Yields the landmarks of consecutive frames, (B, n, 68, 2) normalised to the face crop: the first
        `first` frames (default: a whole chunk), then chunks of `landmark_chunk_frames`.

        `emotion_scale` s (one number, or one per item): landmarks = neutral + s * (emotion - neutral), the
        landmark model's predictions with the neutral class and with each item's emotion (0 = the neutral class's
        exactly, 1 = as learned, > 1 exaggerated). Items asking for no emotion (the null class) or neutral are
        not scaled.

        Each chunk sees one second of audio beyond each of its ends, so a chunk's edge frames have the same
        context as inside one long call. A generator: the pipeline predicts a chunk when the renderer needs it.
        """
        model = self.landmark_model
        device = model.device
        chunk = int(self.config.landmark_chunk_frames)
        margin = int(np.ceil(fps))
        spf = SAMPLE_RATE / fps
        scales = torch.as_tensor(emotion_scale, dtype=torch.float32).reshape(-1).expand(waveforms.shape[0])
        rest = bool(self.config.rest_mouth_on_silence)
        peaks = [peak_level_db(w.numpy(), SAMPLE_RATE, fps) for w in waveforms.float().cpu()] if rest else None
        f0 = 0
        while f0 < num_frames:
            f1 = min(num_frames, f0 + (chunk if f0 or not first else min(chunk, int(first))))
            a0, a1 = max(0, f0 - margin), min(num_frames, f1 + margin)
            s0, s1 = int(round(a0 * spf)), int(round(a1 * spf))
            piece = waveforms[:, s0:s1]
            states = self.encode_audio(piece) if model.reads_encoder_states else None
            pred = model(piece.to(device), identity_landmarks.to(device), num_frames=a1 - a0, fps=fps,
                         emotion_labels=emotion_labels.to(device), context_states=states).landmarks
            scaled = (emotion_labels != NULL_EMOTION) & (emotion_labels != EMOTIONS.index("neutral"))
            if bool((scales != 1.0).any()) and bool(scaled.any()):
                neutral = torch.full_like(emotion_labels, EMOTIONS.index("neutral"))
                base = model(piece.to(device), identity_landmarks.to(device), num_frames=a1 - a0, fps=fps,
                             emotion_labels=neutral.to(device), context_states=states).landmarks
                mixed = base + scales.to(device)[:, None, None, None] * (pred - base)
                pred = torch.where(scaled.to(device)[:, None, None, None], mixed, pred)
            pred = pred.float().cpu()
            if rest:  # talking_head.mouth_rest: silence closes the mouth
                weights = torch.from_numpy(np.stack([rest_weights(w.numpy(), SAMPLE_RATE, fps, a1 - a0, peak)
                                                     for w, peak in zip(piece.float().cpu(), peaks)]))
                pred = rest_mouth(pred, identity_landmarks.float().cpu(), weights)
            # Smoothed with the chunk's margin of real frames (a second, more than the kernel's 4 sigma), then the
            # margin dropped: chunks match one whole call.
            pred = smooth_over_time(pred, float(self.config.landmark_smoothing))
            yield pred[:, f0 - a0: f1 - a0]
            f0 = f1

    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, S) 16 kHz -> the audio encoder's states of the layers the landmark model reads (B, T, dim)."""
        encoder = self.audio_encoder
        return encoder.encode(waveforms.to(encoder.device), layers=self.landmark_model.config.encoder_layers)

    def clip_starts(self, num_frames: int) -> list[int]:
        """Start frame of each clip (talking_head.clip_schedule): the last clip ends on the last frame."""
        return ClipSchedule(num_frames, self.config.clip_frames, self.config.clip_overlap).starts

    def denoise_box(self, context: torch.Tensor, mask: torch.Tensor, heatmaps: torch.Tensor,
                    reference: torch.Tensor, init: torch.Tensor, class_labels: torch.Tensor, t_start: int,
                    num_inference_steps, guidance_scale: float, generator, callback_on_step_end=None,
                    callback_on_step_end_tensor_inputs=(), progress_bar=None) -> torch.Tensor:
        """SDEdit from `t_start` on a clip of mouth boxes (B, 3, F, S, S), as inpainting.

        `init` (the photo's box) is noised to t_start and denoised to 0. After every step the pixels outside
        `mask` are reset to `context` noised to the next timestep (RePaint / Diff2Lip), so only the region is
        generated and the known pixels are exactly the photo's at the end.
        """
        device = init.device
        layout = self._unet_layout(device)
        timesteps = sdedit_timesteps(self.scheduler, t_start, num_inference_steps, device=device)
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=init.dtype)
        latents = self.scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
        known = 1 - mask
        do_cfg = guidance_scale > 1.0
        null = torch.full_like(class_labels, NULL_EMOTION)
        for i, t in enumerate(timesteps):
            model_in = unet_input(self.scheduler.scale_model_input(latents, t), context, mask, heatmaps, reference)
            model_in = model_in.contiguous(memory_format=layout)
            if do_cfg:
                pred = self.unet(torch.cat([model_in, model_in]), t, class_labels=torch.cat([class_labels, null])).sample
                pred_cond, pred_uncond = pred.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
            else:
                pred = self.unet(model_in, t, class_labels=class_labels).sample
            latents = self.scheduler.step(pred, t, latents, generator=generator).prev_sample
            if i + 1 < len(timesteps):
                t_next = timesteps[i + 1: i + 2].repeat(init.shape[0])
                latents = mask * latents + known * self.scheduler.add_noise(context, noise, t_next)
            else:
                latents = mask * latents + known * context
            if callback_on_step_end is not None:
                state = {"latents": latents}
                out = callback_on_step_end(self, i, t, {k: state[k] for k in callback_on_step_end_tensor_inputs})
                latents = out.pop("latents", latents)
            if progress_bar is not None:
                progress_bar.update()
        return latents

    def _unet_layout(self, device: torch.device) -> torch.memory_format:
        """The memory format the UNet runs in: channels-last 3D on a CPU (oneDNN's fast path for Conv3d, ~20 %
        faster at the same results within 1e-4), the default elsewhere. The weights are converted once."""
        if device.type != "cpu":
            return torch.contiguous_format
        weight = next(m.weight for m in self.unet.modules() if isinstance(m, torch.nn.Conv3d))
        if not weight.is_contiguous(memory_format=torch.channels_last_3d):
            self.unet.to(memory_format=torch.channels_last_3d)
        return torch.channels_last_3d

    # ------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        audio,
        identity_frame,
        emotion: str | list[str] | None = None,
        t_start: int = DEFAULT_T_START,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        fps: float = 25.0,
        sample_rate: int | None = None,
        identity_landmarks=None,
        landmarks=None,
        crop_face: bool = True,
        max_size: int = DEFAULT_MAX_SIZE,
        output_crop: bool = False,
        reference_frame: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        frames_callback: Callable[[np.ndarray], None] | None = None,
        frames_callback_dtype: str = "float32",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        emotion_scale: float = 1.0,
    ):
        r"""Generate a talking-head video of the photo: its lower face moves with the speech, all else is kept.

        Args:
            audio: a file path (wav, flac, mp3, m4a, or a video's audio track), or a
                1-D/2-D numpy array or tensor with `sample_rate=`; any rate, mono or
                stereo. A list gives a batch (all items must give the same frame count).
            identity_frame: the person: a photo (a path, PIL image, or array; RGB, RGBA or
                greyscale, any size), one for all audio items or one per item (of one size); or a
                video to dub (DESIGN 7.4): a video file path, a (T, H, W, 3) array or a list of
                T frames at `fps`, for one audio input. Each output frame is then the video's frame
                with the lower face redrawn; the video plays forward then backward when the audio
                is longer, and stops with the audio when shorter. Frames without a face pass
                through unchanged (counted in `frames_without_face`).
            emotion: an emotion name (see `talking_head.constants.EMOTIONS`) that
                overrides the classifier, or a list of one per item. "none" (or no emotion
                and no classifier in the pipeline) uses the null class: the models'
                unconditional output, all a model trained on unlabelled video has learned.
            t_start: the SDEdit start, in timesteps (paper: 300). The photo's mouth box is
                noised to t = t_start - 1 and its lower-face region denoised to 0.
            num_inference_steps: denoising steps between t_start and 0; None = one per
                timestep (300 DDPM steps). Use 1-10 with DPM-Solver or DDIM.
            guidance_scale: classifier-free guidance on the emotion class; 1 = off.
            emotion_scale: how much of the emotion the landmarks show: landmarks = neutral + emotion_scale *
                (emotion - neutral), from the landmark model with the neutral class and with the emotion;
                0 = neutral, 1 = as learned (default), > 1 = exaggerated. A finite number >= 0. An emotion the
                classifier detected (no `emotion=` given) is shown at emotion_scale x its drawing strength,
                clip((p - t) / (1 - t), 0, 1) for the classifier's (calibrated) probability p and threshold t
                (`emotion_draw_threshold`), and not at all when it hears neutral: an unsure classifier draws
                neutral, never a strong wrong expression (DESIGN.md 8.4). `emotion_strength` in the output says
                what was drawn.
            fps: video frame rate. The frame count is round(duration * fps).
            sample_rate: the rate of an array/tensor `audio`.
            identity_landmarks: (68, 2) pixel landmarks of `identity_frame` (per item
                for a list; (T, 68, 2) for a video), instead of detecting them with dlib.
            landmarks: (B, F, 68, 2) or (F, 68, 2) landmarks in pixels of the output
                frame that drive the video instead of the landmark model's (e.g. ground
                truth, for the renderer's ceiling). F must match the audio's frame count.
            crop_face: False: the frame already is a square face crop (e.g. a prepared
                dataset's frame); its centre square is the photo.
            max_size: the longest side of the output, in pixels (larger photos are scaled down).
            output_crop: return the face crop (square) instead of the whole photo.
            reference_frame: the frame of a video identity whose mouth is the texture reference
                (default: the frame with a face and the most closed mouth).
            generator: torch generator(s) for reproducible output.
            output_type: "np", "pt", "pil", or None to keep no frames in memory (use
                `frames_callback` to stream them, e.g. to a `VideoWriter`).
            frames_callback: called with each finished run of frames, a (B, n, H, W, 3)
                float array in [0, 1], in order; together they are the whole video.
            frames_callback_dtype: "float32" (default) or "uint8" (0-255): what `frames_callback`
                receives. uint8 is the frames as made, with no float copy of every full-size frame (what
                an MP4 writer wants: ~15 % faster at 1024x576).
            callback_on_step_end: diffusers-style `fn(pipe, step, timestep, kwargs)`
                called after every denoising step of every clip.

        Returns:
            [`TalkingHeadPipelineOutput`] or a tuple (frames, landmarks, emotion).
        """
        # Generation runs in eval mode (no dropout) whatever mode a training loop left the
        # models in, and gives the modes back afterwards.
        modules = [m for m in (self.unet, self.landmark_model, self.mask_noise, self.emotion_classifier)
                   if isinstance(m, torch.nn.Module)]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            check_emotion_scale(emotion_scale)
            self.check_inputs(audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                              sample_rate, output_type, identity_landmarks, callback_on_step_end_tensor_inputs,
                              max_size)
            if frames_callback_dtype not in ("float32", "uint8"):
                raise ValueError(f"frames_callback_dtype must be 'float32' or 'uint8', got {frames_callback_dtype!r}")
            return self._generate(audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale,
                                  float(fps), sample_rate, identity_landmarks, landmarks, crop_face, int(max_size),
                                  bool(output_crop), reference_frame, generator, output_type, return_dict,
                                  frames_callback, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                  frames_callback_dtype, emotion_scale=float(emotion_scale))
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    def _generate(self, audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                  sample_rate, identity_landmarks, landmarks, crop_face, max_size, output_crop, reference_frame,
                  generator, output_type, return_dict, frames_callback, callback_on_step_end,
                  callback_on_step_end_tensor_inputs, frames_callback_dtype="float32", emotion_scale: float = 1.0):
        # 1. Audio -> 16 kHz mono; one frame count for the batch.
        waves, wave_batch, num_frames = self._load_audio(audio, sample_rate, fps)
        batch = len(waves)
        # 2. The identity: a photo held still or a video (dubbing), at the output resolution, with landmarks.
        sources = self._load_identities(identity_frame, identity_landmarks, crop_face, max_size, batch, fps,
                                        reference_frame, num_frames)
        try:
            # 3. Emotion: the caller's choice, or the classifier's, or (no classifier) none: the null class.
            #    A video keeps its own expression: what the classifier heard is reported, not drawn (config).
            names, probs, strengths = self._emotions(emotion, waves, sources, emotion_scale)
            labels = torch.tensor([emotion_label(n) for n in names], dtype=torch.long)
            scales = np.array([emotion_scale if s is None else s for s in strengths], dtype=np.float32)
            # 4. Landmarks for every output frame, in pixels of the frame it is drawn on (the landmark
            #    model's displacements from the reference's landmarks, unless given).
            #    Predicted landmarks are made chunk by chunk as the clips need them (talking_head.landmark_stream).
            views = [_OutputView(src.photo(src.reference), output_crop, max_size) for src in sources]
            if landmarks is None:
                self._warn_untrained_emotions(names)
                points = self._predicted_landmarks(sources, wave_batch, num_frames, fps, labels, scales)
            else:
                points = LandmarkStream.given(self._given_landmarks(landmarks, batch, num_frames, views))
            # 5. Render the lower face clip by clip and composite it into the frames.
            kept = [] if output_type is not None else None
            self._render(sources, points, labels, t_start, num_inference_steps, guidance_scale, generator,
                         callback_on_step_end, callback_on_step_end_tensor_inputs,
                         lambda frames: self._emit(views, frames, kept, frames_callback, frames_callback_dtype))
            points = points.all()
            self.maybe_free_model_hooks()
            passed = [int((~src.has_face[[src.index(i) for i in range(num_frames)]]).sum()) for src in sources]
        finally:
            for src in sources:
                src.close()

        landmarks_px = torch.stack([v.points(pts) for v, pts in zip(views, points)]).float().numpy()
        frames = None
        if kept is not None:
            frames = np.concatenate(kept, axis=1).astype(np.float32) / 255.0
            if output_type == "pt":
                frames = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
            elif output_type == "pil":
                frames = [[PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in video] for video in frames]
        if not return_dict:
            return frames, landmarks_px, names
        return TalkingHeadPipelineOutput(frames=frames, landmarks=landmarks_px, emotion=names, emotion_probs=probs,
                                         fps=fps, audio=wave_batch.numpy(), sample_rate=SAMPLE_RATE,
                                         frames_without_face=passed, emotion_strength=strengths)

    # ------------------------------------------------------------- stages of _generate
    def _load_audio(self, audio, sample_rate, fps):
        waves = [load_audio(a, sample_rate=sample_rate, name="audio") for a in _as_list(audio)]
        counts = []
        for a, w in zip(_as_list(audio), waves):
            if len(w) < SAMPLE_RATE / fps:
                what = f"audio file {a}" if isinstance(a, (str, os.PathLike)) else "audio"
                raise ValueError(f"{what} is {len(w) / SAMPLE_RATE:.3f} s long, shorter than one frame "
                                 f"({1 / fps:.3f} s at {fps:g} fps)")
            counts.append(max(1, int(round(len(w) / SAMPLE_RATE * fps))))
        if len(set(counts)) != 1:
            raise ValueError(f"batched audio items must give the same number of frames, got {counts}; "
                             "generate them one at a time")
        if len(waves) == 1:  # one item: a view, not a second copy of a long recording
            return waves, torch.from_numpy(waves[0])[None], counts[0]
        wave_batch = torch.zeros(len(waves), max(len(w) for w in waves))
        for i, w in enumerate(waves):
            wave_batch[i, : len(w)] = torch.from_numpy(w)
        return waves, wave_batch, counts[0]

    def _load_identities(self, identity_frame, identity_landmarks, crop_face, max_size, batch, fps,
                         reference_frame, num_frames: int) -> list:
        """One StillIdentity (a photo) or VideoIdentity (dubbing) per batch item (talking_head.identity)."""
        if is_video(identity_frame, batch):
            if batch != 1:
                raise ValueError(f"a video identity takes one audio input, got {batch}; dub them one at a time")
            lmk = None
            if identity_landmarks is not None:
                lmk = np.asarray(identity_landmarks, dtype=np.float32)
                if lmk.ndim != 3 or lmk.shape[1:] != (NUM_LANDMARKS, 2):
                    raise ValueError(f"identity_landmarks of a video must be (T, {NUM_LANDMARKS}, 2) pixels, one "
                                     f"set per frame, got shape {lmk.shape}")
            return [VideoIdentity(identity_frame, fps, max_size, landmarks=lmk, reference=reference_frame,
                                  max_frames=num_frames)]
        if reference_frame is not None:
            raise ValueError("reference_frame is for a video identity; the photo is its own reference")
        frames_in = _as_list(identity_frame)
        if identity_landmarks is None:
            lmk_in = [None] * len(frames_in)
        elif np.ndim(identity_landmarks) == 2:
            lmk_in = [identity_landmarks] * len(frames_in)
        else:
            lmk_in = _as_list(identity_landmarks)
        photos = [self.prepare_identity(f, l, crop_face, max_size) for f, l in zip(frames_in, lmk_in)]
        if len({p.size for p in photos}) != 1:
            raise ValueError(f"batched identity frames must have one size, got {[p.size for p in photos]}; "
                             "generate them one at a time")
        photos = photos * batch if len(photos) == 1 and batch > 1 else photos
        return [StillIdentity(p) for p in photos]

    def _warn_untrained_emotions(self, names) -> None:
        """Log what happens to an emotion the landmark model did not learn (an alias, or an untrained row)."""
        config = self.landmark_model.config
        trained = getattr(config, "trained_emotions", None)
        aliases = getattr(config, "emotion_aliases", None) or {}
        for name in sorted(set(names) - {NO_EMOTION}):
            if name in aliases:
                logger.warning(f"the landmark model learned no {name!r} (its training data had none); it shows "
                               f"{aliases[name]!r} instead")
            elif trained is not None and name not in trained:
                logger.warning(f"the landmark model learned no {name!r}; its emotion input for it is untrained")
            elif trained is None:
                logger.warning(f"this landmark model records no trained emotions (it learned the null class only); "
                               f"emotion {name!r} may not show in the face")

    def _predicted_landmarks(self, sources, wave_batch, num_frames, fps, labels,
                             emotion_scale: float = 1.0) -> LandmarkStream:
        """The landmark model's landmarks, in pixels of each output frame's identity frame, as a stream: its
        displacements from the reference's landmarks, applied to each frame's own face (`follow_face`)."""
        refs = [src.photo(src.reference) for src in sources]
        ident = torch.from_numpy(np.stack([r.to_crop(r.landmarks) for r in refs])).float()
        # A short first chunk: the first clip starts after a fraction of a second of landmark model, not after
        # the whole first chunk.
        first = FIRST_LANDMARK_CHUNK_CLIPS * int(self.config.clip_frames)
        chunks = self.landmark_chunks(wave_batch, ident, num_frames, fps, labels, first=first,
                                      emotion_scale=emotion_scale)

        def on_frames():
            start = 0
            for pred in chunks:
                yield torch.stack([follow_face(src, m, start) for src, m in zip(sources, pred - ident[:, None])])
                start += pred.shape[1]

        return LandmarkStream(num_frames, on_frames())

    def draws_detected_emotion(self, video: bool) -> bool:
        """Whether an emotion the classifier detected is drawn: always on a photo; on a video only with
        `detected_emotion_in_video` (a video's face already shows the person's own expression)."""
        return not video or bool(self.config.detected_emotion_in_video)

    def _emotions(self, emotion, waves, sources, emotion_scale: float = 1.0):
        """(names to render, the classifier's probabilities or None, the strength each name is drawn with): the
        caller's emotion wins over what the classifier heard (at `emotion_scale`); the classifier still reports
        it (a bounded amount of audio, whatever the length). A detected emotion is drawn only as strongly as the
        classifier is sure (`detected_emotion`): neutral when unsure, and on an identity that does not draw it
        (`draws_detected_emotion`)."""
        batch = len(sources)
        probs = self.classify_emotion(waves) if self.emotion_classifier is not None else None
        if emotion is not None:
            names = [n.strip().lower() for n in _as_list(emotion)]
            names = names * batch if len(names) == 1 else names
            return names, probs, [None if n == NO_EMOTION else float(emotion_scale) for n in names]
        if probs is None:
            return [NO_EMOTION] * batch, None, [None] * batch
        names, strengths = [], []
        for row, src in zip(probs, sources):
            name, strength = self.detected_emotion(row[None], isinstance(src, VideoIdentity), emotion_scale)
            names += name
            strengths += strength
        return names, probs, strengths

    def _render(self, sources, points, labels, t_start, num_inference_steps, guidance_scale, generator,
                callback_on_step_end, callback_on_step_end_tensor_inputs, emit) -> None:
        """Denoise the mouth boxes clip by clip and hand the composited frames to `emit`, in order."""
        device, dtype, size = self._execution_device, self.unet.dtype, self.sample_size
        num_frames = points.num_frames
        indices = tuple(self.mask_noise.config.region_points)
        # One box per output frame that follows the face (one box for a photo), placed on the lower face of the
        # reference and of the landmarks known before the first clip (the first landmark chunk, or all given
        # ones), like the training clips' boxes; it does not move with the later speech. The region covers the
        # clip's landmarks and the reference's, as in training.
        known = points.known
        if known is None:
            points.frames(0, 1)  # the landmark model's first chunk
            known = points.frames(0, points.available)
        geometry = [BoxTrack(src, known[b], indices, num_frames=num_frames) for b, src in enumerate(sources)]
        reference = torch.cat([g.reference_box(size) for g in geometry]).to(device, dtype)
        ref_local = torch.stack([g.ref_local for g in geometry])
        schedule = ClipSchedule(num_frames, self.config.clip_frames, self.config.clip_overlap)
        steps = len(sdedit_timesteps(self.scheduler, t_start, num_inference_steps))
        labels = labels.to(device)
        if not self.config.unet_emotion_conditioning:
            # The renderer learned only the null class: the emotion reaches the face through the landmarks.
            labels = torch.full_like(labels, NULL_EMOTION)
        with self.progress_bar(total=len(schedule.starts) * steps) as progress_bar:
            for start in schedule.starts:
                frames = range(start, start + schedule.length)
                clip_points = points.frames(start, start + schedule.length)
                target = torch.stack([g.to_local(frames, p) for g, p in zip(geometry, clip_points)]).to(device)
                boxes = torch.stack([g.cut(frames, size) for g in geometry]).to(device, dtype)  # (B, 3, L, S, S)
                # The region covers the targets, the reference and the frames' own lower face (a video's old mouth,
                # which must not show beside the new one; a photo's is the reference's).
                own = torch.stack([g.to_local(frames, g.frame_landmarks(frames)) for g in geometry])
                extra = torch.cat([ref_local[:, None], own], dim=1).to(device)
                mask = self.mask_noise.compute_mask(target, size, size, extra_landmarks=extra)
                mask = mask.to(device, dtype).expand(-1, -1, target.shape[1], -1, -1)
                # The pipeline's first step starts from the reference's mouth in the region (as trained).
                init = boxes * (1 - mask) + reference[:, :, None] * mask
                context = self.mask_noise.apply_noise(boxes, mask, generator)
                heatmaps = self.mask_noise.heatmaps(target, size, size).to(device, dtype)
                clip = self.denoise_box(context, mask, heatmaps, reference, init, labels, t_start,
                                        num_inference_steps, guidance_scale, generator, callback_on_step_end,
                                        callback_on_step_end_tensor_inputs, progress_bar)
                # Boxes and their blend weights travel together through the cross-fade: (B, L, 3 + 1, S, S).
                clip = clip.float().clamp(-1, 1).transpose(1, 2)
                weight = self._blend_weight(clip, boxes.float().transpose(1, 2), mask.float().transpose(1, 2))
                first = schedule.emitted
                for run in schedule.add(start, torch.cat([clip, weight], dim=2).cpu()):
                    emit(np.stack([g.composite(range(first, first + run.shape[1]), item)
                                   for g, item in zip(geometry, run)]))
                    first += run.shape[1]
        assert schedule.emitted == num_frames, (schedule.emitted, num_frames)

    def _blend_weight(self, generated: torch.Tensor, own: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, 1, S, S) blend weights: the feathered region, times where the box changed (keep_threshold)."""
        batch, length, _, size, _ = generated.shape
        weight = feather(mask.reshape(-1, 1, size, size))
        threshold = float(self.config.keep_threshold)
        if threshold > 0:
            change = (generated - own).abs().mean(dim=2, keepdim=True).reshape(-1, 1, size, size)
            change = gaussian_blur(change, 0.02 * size)
            weight = weight * ((change - 0.5 * threshold) / threshold).clamp(0, 1)
        return weight.view(batch, length, 1, size, size)

    def _given_landmarks(self, landmarks, batch: int, num_frames: int, views) -> torch.Tensor:
        """Caller-given driving landmarks (pixels of the output frame) -> pixels of the frames, (B, F, 68, 2)."""
        lm = landmarks.detach().cpu().float() if torch.is_tensor(landmarks) else torch.as_tensor(
            np.asarray(landmarks, dtype=np.float32))
        if lm.ndim == 3:
            lm = lm[None].expand(batch, -1, -1, -1)
        if lm.ndim != 4 or lm.shape[0] != batch or lm.shape[2:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"landmarks must be ({batch}, F, {NUM_LANDMARKS}, 2) pixels of the output frame, "
                             f"got shape {tuple(lm.shape)}")
        if lm.shape[1] != num_frames:
            raise ValueError(f"landmarks has {lm.shape[1]} frames but the audio gives {num_frames} at this fps")
        if not torch.isfinite(lm).all():
            raise ValueError("landmarks contain NaN or infinite values")
        return torch.stack([v.to_photo(pts) for v, pts in zip(views, lm)])

    @staticmethod
    def _emit(views, frames: np.ndarray, kept: list | None, callback, dtype: str = "float32") -> None:
        """One run of finished photo frames (B, n, H, W, 3) uint8 -> the output view, the callback, the list."""
        frames = np.stack([view(f) for view, f in zip(views, frames)])
        if callback is not None:
            callback(frames if dtype == "uint8" else frames.astype(np.float32) / 255.0)
        if kept is not None:
            kept.append(frames)


class _OutputView:
    """What the output shows of the photo: all of it, or (output_crop) its square face crop, even-sized."""

    def __init__(self, photo: Photo, crop: bool, max_size: int):
        self.crop = None
        if crop:
            cx, cy, side = photo.face_box
            self.crop = MouthBox(int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)))
            self.out_side = max(2, min(int(max_size), self.crop.side) // 2 * 2)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.crop is None:
            return frames
        t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        t = self.crop.cut(t, self.out_side)
        return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def points(self, pts: torch.Tensor) -> torch.Tensor:
        """Pixels of the photo -> pixels of the output frame."""
        if self.crop is None:
            return pts
        return self.crop.normalise(pts) * self.out_side

    def to_photo(self, pts: torch.Tensor) -> torch.Tensor:
        """Pixels of the output frame -> pixels of the photo."""
        if self.crop is None:
            return pts
        return self.crop.denormalise(pts / self.out_side)
