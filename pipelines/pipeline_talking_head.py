"""TalkingHeadPipeline: speech + one photo -> a talking-head video (DESIGN.md sections 1-2).

    audio ──► emotion classifier ──► emotion class (or the caller's `emotion=`)
      └────► KFusion audio→landmarks ──► 68 landmarks per video frame
    identity frame ──► face crop ──► Gaussian mask-noise at the landmarks
                 class-conditioned 3D UNet + scheduler, from t_start ──► frames

Sampling is SDEdit-style (DESIGN 2.5): the mask-noised identity frames are
noised to `t_start` and denoised from there to 0. The UNet also sees the
clean mask-noised frames and the mask as extra input channels when its
`in_channels` is 7 (3 noisy + 3 condition + 1 mask); with `in_channels=3` it
sees only the noisy frames, as in the paper.

Audio of any length is rendered clip by clip (`clip_frames` frames, the last
`clip_overlap` of each clip generated again by the next one and cross-faded),
so memory stays bounded and there is no seam.
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
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from talking_head.audio import load_audio
from talking_head.constants import EMOTIONS, NO_EMOTION, NULL_EMOTION, NUM_LANDMARKS, SAMPLE_RATE, emotion_label
from talking_head.face import crop_face, detect_face_landmarks, face_crop_box, landmarks_to_crop
from talking_head.image import load_image
from talking_head.models.emotion_classifier import predict_emotion
from talking_head.schedulers.scheduling_sdedit import DEFAULT_T_START, sdedit_timesteps, validate_t_start


@dataclass
class TalkingHeadPipelineOutput(BaseOutput):
    """What `TalkingHeadPipeline.__call__` returns.

    frames: (B, F, H, W, 3) float in [0, 1] ("np"), a (B, F, 3, H, W) tensor
        ("pt"), B lists of PIL images ("pil"), or None (output_type=None, when
        the frames went to `frames_callback` only).
    landmarks: (B, F, 68, 2) float32, (x, y) in pixels of the output frame.
    emotion: B emotion names (predicted, or the one given).
    emotion_probs: (B, 8) classifier probabilities, or None when `emotion` was given.
    fps: frames per second of `frames`.
    audio: (B, S) float32 16 kHz mono audio that drove the video.
    sample_rate: the rate of `audio` (16000).
    """

    frames: np.ndarray | torch.Tensor | list | None
    landmarks: np.ndarray
    emotion: list[str]
    emotion_probs: np.ndarray | None
    fps: float
    audio: np.ndarray
    sample_rate: int


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


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
        unet ([`ClassConditionedUNet3DModel`]): denoises (B, C, F, H, W) frame clips.
        scheduler ([`SchedulerMixin`]): DDPM by default; DDIM or DPM-Solver for fewer steps.
        landmark_model ([`KFusionLandmarkModel`]): audio -> 68 landmarks per frame.
        mask_noise ([`GaussianMaskNoise`]): noise where the landmarks are.
        emotion_classifier (transformers audio classifier, optional): audio -> 8 MEAD emotions.
        feature_extractor ([`Wav2Vec2FeatureExtractor`], optional): the classifier's input processing.

    Config (saved in model_index.json):
        clip_frames: frames generated per UNet call.
        clip_overlap: frames shared by consecutive clips (cross-faded).
        landmark_chunk_frames: frames per landmark-model call for long audio.
    """

    model_cpu_offload_seq = "emotion_classifier->landmark_model->unet"
    _optional_components = ["emotion_classifier", "feature_extractor"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, scheduler, landmark_model, mask_noise, emotion_classifier=None,
                 feature_extractor=None, clip_frames: int = 16, clip_overlap: int = 4,
                 landmark_chunk_frames: int = 750):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, landmark_model=landmark_model,
                              mask_noise=mask_noise, emotion_classifier=emotion_classifier,
                              feature_extractor=feature_extractor)
        self.register_to_config(clip_frames=clip_frames, clip_overlap=clip_overlap,
                                landmark_chunk_frames=landmark_chunk_frames)
        self.check_components()

    # ------------------------------------------------------------------ checks
    def check_components(self):
        """Refuse a pipeline whose parts do not fit together, before any model runs."""
        cfg = self.config
        if not (isinstance(cfg.clip_frames, int) and cfg.clip_frames >= 1):
            raise ValueError(f"clip_frames must be an integer >= 1, got {cfg.clip_frames!r}")
        if not (isinstance(cfg.clip_overlap, int) and 0 <= cfg.clip_overlap < cfg.clip_frames):
            raise ValueError(f"clip_overlap must be an integer in [0, clip_frames), got {cfg.clip_overlap!r}")
        if not (isinstance(cfg.landmark_chunk_frames, int) and cfg.landmark_chunk_frames >= 1):
            raise ValueError(f"landmark_chunk_frames must be an integer >= 1, got {cfg.landmark_chunk_frames!r}")
        unet = self.unet
        if unet.config.out_channels != 3:
            raise ValueError(f"unet must output 3 (RGB) channels, has out_channels={unet.config.out_channels}")
        if unet.config.in_channels not in (3, 7):
            raise ValueError(
                f"unet in_channels must be 3 (noisy frames) or 7 (noisy frames + mask-noised frames + mask), "
                f"got {unet.config.in_channels}"
            )
        levels = len(unet.config.block_out_channels)
        if unet.config.sample_size % (2 ** (levels - 1)):
            raise ValueError(f"unet sample_size {unet.config.sample_size} is not divisible by 2**{levels - 1}")
        if self.landmark_model.config.num_landmarks != NUM_LANDMARKS:
            raise ValueError(f"landmark_model predicts {self.landmark_model.config.num_landmarks} landmarks, "
                             f"the pipeline needs {NUM_LANDMARKS}")
        if unet.config.num_class_embeds != len(EMOTIONS):
            raise ValueError(f"unet has {unet.config.num_class_embeds} emotion classes, expected {len(EMOTIONS)}")
        if self.emotion_classifier is not None:
            labels = getattr(self.emotion_classifier.config, "id2label", {})
            names = [str(labels[i]).lower() for i in sorted(labels, key=int)] if labels else []
            if tuple(names) != EMOTIONS:
                raise ValueError(f"emotion_classifier labels {names} differ from the project's {list(EMOTIONS)}")
            if self.feature_extractor is None:
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
        return pipe

    # ----------------------------------------------------------------- inputs
    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)

    def prepare_identity(self, identity_frame, identity_landmarks=None, crop_face_box: bool = True):
        """Load one identity image, find its face and crop it to the UNet's resolution.

        With `crop_face_box=False` the image is taken as an existing face crop (as prepared
        datasets store them): only its centre square is kept and resized.
        Returns (crop uint8 (S, S, 3), landmarks (68, 2) in crop pixels).
        """
        image = load_image(identity_frame, name="identity_frame")
        if identity_landmarks is None:
            points = detect_face_landmarks(image, name="identity_frame")
        else:
            points = np.asarray(
                identity_landmarks.detach().cpu() if torch.is_tensor(identity_landmarks) else identity_landmarks,
                dtype=np.float32,
            )
            if points.shape != (NUM_LANDMARKS, 2):
                raise ValueError(f"identity_landmarks must be ({NUM_LANDMARKS}, 2) pixel points, got shape {points.shape}")
            if not np.isfinite(points).all():
                raise ValueError("identity_landmarks contain NaN or infinite values")
        size = self.sample_size
        if crop_face_box:
            box = face_crop_box(points)
        else:
            height, width = image.shape[:2]
            box = (width / 2.0, height / 2.0, float(min(height, width)))
        crop = crop_face(image, box, size)
        return crop, landmarks_to_crop(points, box, size).astype(np.float32)

    def check_inputs(self, audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                     sample_rate, output_type, identity_landmarks, callback_on_step_end_tensor_inputs=None):
        audios, frames = _as_list(audio), _as_list(identity_frame)
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
        if callback_on_step_end_tensor_inputs is not None and not set(callback_on_step_end_tensor_inputs) <= set(
                self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                             f"got {list(callback_on_step_end_tensor_inputs)}")
        if output_type not in ("np", "pt", "pil", None):
            raise ValueError(f"output_type must be 'np', 'pt', 'pil' or None, got {output_type!r}")

    # ------------------------------------------------------------- components
    @torch.no_grad()
    def classify_emotion(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """(B, 8) emotion probabilities from 16 kHz waveforms."""
        probs = predict_emotion(self.emotion_classifier, self.feature_extractor, waveforms)
        return probs.float().cpu().numpy()

    @torch.no_grad()
    def predict_landmarks(self, waveforms: torch.Tensor, identity_landmarks: torch.Tensor, num_frames: int,
                          fps: float, emotion_labels: torch.Tensor) -> torch.Tensor:
        """(B, F, 68, 2) normalised landmarks, in chunks of `landmark_chunk_frames` for long audio.

        Each chunk sees one second of audio beyond each of its ends, so a chunk's
        edge frames have the same context as inside one long call.
        """
        model = self.landmark_model
        device = model.device
        chunk = int(self.config.landmark_chunk_frames)
        margin = int(np.ceil(fps))
        spf = SAMPLE_RATE / fps
        out = []
        for f0 in range(0, num_frames, chunk):
            f1 = min(num_frames, f0 + chunk)
            a0, a1 = max(0, f0 - margin), min(num_frames, f1 + margin)
            s0, s1 = int(round(a0 * spf)), int(round(a1 * spf))
            piece = waveforms[:, s0:s1]
            pred = model(piece.to(device), identity_landmarks.to(device), num_frames=a1 - a0, fps=fps,
                         emotion_labels=emotion_labels.to(device)).landmarks
            out.append(pred[:, f0 - a0: f1 - a0].float().cpu())
        return torch.cat(out, dim=1)

    def clip_starts(self, num_frames: int) -> list[int]:
        """Start frame of each clip: stride clip_frames - clip_overlap, the last clip ends on the last frame."""
        length, overlap = self.config.clip_frames, self.config.clip_overlap
        if num_frames <= length:
            return [0]
        stride = length - overlap
        starts = list(range(0, num_frames - length, stride))
        starts.append(num_frames - length)
        return starts

    def denoise_clip(self, cond: torch.Tensor, mask: torch.Tensor, class_labels: torch.Tensor, t_start: int,
                     num_inference_steps, guidance_scale: float, generator, callback_on_step_end,
                     callback_on_step_end_tensor_inputs, progress_bar) -> torch.Tensor:
        """SDEdit from `t_start`: noise the mask-noised frames, then denoise them to t = 0."""
        device = cond.device
        timesteps = sdedit_timesteps(self.scheduler, t_start, num_inference_steps, device=device)
        noise = randn_tensor(cond.shape, generator=generator, device=device, dtype=cond.dtype)
        latents = self.scheduler.add_noise(cond, noise, timesteps[:1].repeat(cond.shape[0]))
        do_cfg = guidance_scale > 1.0
        null = torch.full_like(class_labels, NULL_EMOTION)
        for i, t in enumerate(timesteps):
            model_in = self.scheduler.scale_model_input(latents, t)
            if self.unet.config.in_channels == 7:
                model_in = torch.cat([model_in, cond, mask], dim=1)
            if do_cfg:
                pred = self.unet(torch.cat([model_in, model_in]), t, class_labels=torch.cat([class_labels, null])).sample
                pred_cond, pred_uncond = pred.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
            else:
                pred = self.unet(model_in, t, class_labels=class_labels).sample
            latents = self.scheduler.step(pred, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                state = {"latents": latents}
                out = callback_on_step_end(self, i, t, {k: state[k] for k in callback_on_step_end_tensor_inputs})
                latents = out.pop("latents", latents)
            progress_bar.update()
        return latents

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
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        frames_callback: Callable[[np.ndarray], None] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        r"""Generate a talking-head video.

        Args:
            audio: a file path (wav, flac, mp3, m4a, or a video's audio track), or a
                1-D/2-D numpy array or tensor with `sample_rate=`; any rate, mono or
                stereo. A list gives a batch (all items must give the same frame count).
            identity_frame: the person: a path, PIL image, or array (RGB, RGBA or
                greyscale, any size). One for all audio items or one per item.
            emotion: an emotion name (see `talking_head.constants.EMOTIONS`) that
                overrides the classifier, or a list of one per item. "none" (or no emotion
                and no classifier in the pipeline) uses the null class: the models'
                unconditional output, all a model trained on unlabelled video has learned.
            t_start: the SDEdit start, in timesteps (paper: 300). Frames are noised to
                t = t_start - 1 and denoised to 0.
            num_inference_steps: denoising steps between t_start and 0; None = one per
                timestep (300 DDPM steps). Use 25-50 with DPM-Solver or DDIM.
            guidance_scale: classifier-free guidance on the emotion class; 1 = off.
            fps: video frame rate. The frame count is round(duration * fps).
            sample_rate: the rate of an array/tensor `audio`.
            identity_landmarks: (68, 2) pixel landmarks of `identity_frame` (per item
                for a list), instead of detecting them with dlib.
            landmarks: (B, F, 68, 2) or (F, 68, 2) landmarks in pixels of the output
                frame that drive the video instead of the landmark model's (e.g. ground
                truth, for the renderer's ceiling). F must match the audio's frame count.
            crop_face: crop the identity frame around the detected face (default). False:
                the frame already is a face crop (e.g. a prepared dataset's frame); its
                centre square is resized to the pipeline's resolution.
            generator: torch generator(s) for reproducible output.
            output_type: "np", "pt", "pil", or None to keep no frames in memory (use
                `frames_callback` to stream them, e.g. to a `VideoWriter`).
            frames_callback: called with each finished run of frames, a (B, n, H, W, 3)
                float array in [0, 1], in order; together they are the whole video.
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
            return self._generate(audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                                  sample_rate, identity_landmarks, landmarks, crop_face, generator, output_type, return_dict,
                                  frames_callback, callback_on_step_end, callback_on_step_end_tensor_inputs)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    def _generate(self, audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                  sample_rate, identity_landmarks, landmarks, crop_face_box, generator, output_type, return_dict, frames_callback,
                  callback_on_step_end, callback_on_step_end_tensor_inputs):
        self.check_inputs(audio, identity_frame, emotion, t_start, num_inference_steps, guidance_scale, fps,
                          sample_rate, output_type, identity_landmarks, callback_on_step_end_tensor_inputs)
        fps = float(fps)
        device = self._execution_device
        dtype = self.unet.dtype

        # 1. Audio -> 16 kHz mono; one frame count for the batch.
        waves = [load_audio(a, sample_rate=sample_rate, name="audio") for a in _as_list(audio)]
        batch = len(waves)
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
        num_frames = counts[0]
        length = max(len(w) for w in waves)
        wave_batch = torch.zeros(batch, length)
        for i, w in enumerate(waves):
            wave_batch[i, : len(w)] = torch.from_numpy(w)

        # 2. Identity frames -> face crops at the UNet's resolution + their landmarks.
        frames_in = _as_list(identity_frame)
        if identity_landmarks is None:
            lmk_in = [None] * len(frames_in)
        elif np.ndim(identity_landmarks) == 2:
            lmk_in = [identity_landmarks] * len(frames_in)
        else:
            lmk_in = _as_list(identity_landmarks)
        identities = [self.prepare_identity(f, l, crop_face_box) for f, l in zip(frames_in, lmk_in)]
        if len(identities) == 1 and batch > 1:
            identities = identities * batch
        size = self.sample_size
        crops = torch.from_numpy(np.stack([c for c, _ in identities])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        id_landmarks = torch.from_numpy(np.stack([l for _, l in identities])) / size  # normalised

        # 3. Emotion: the caller's choice, or the classifier's, or (no classifier) none: the null class.
        if emotion is not None:
            names = [n.strip().lower() for n in _as_list(emotion)]
            names = names * batch if len(names) == 1 else names
            probs = None
        elif self.emotion_classifier is None:
            names, probs = [NO_EMOTION] * batch, None
        else:
            probs = self.classify_emotion(waves)
            names = [EMOTIONS[int(k)] for k in probs.argmax(axis=1)]
        labels = torch.tensor([emotion_label(n) for n in names], dtype=torch.long)

        # 4. Audio -> landmarks for every frame (normalised to the crop), unless the caller gave them.
        if landmarks is None:
            landmarks = self.predict_landmarks(wave_batch, id_landmarks, num_frames, fps, labels)
        else:
            landmarks = self._given_landmarks(landmarks, batch, num_frames)

        # 5. Clip by clip: mask-noise at the landmarks, SDEdit, cross-fade the overlaps.
        starts = self.clip_starts(num_frames)
        clip_len = min(self.config.clip_frames, num_frames)
        steps = len(sdedit_timesteps(self.scheduler, t_start, num_inference_steps))
        reference = crops.to(device=device, dtype=dtype)[:, :, None]  # (B, 3, 1, S, S)
        labels_dev = labels.to(device)
        kept = [] if output_type is not None else None
        pending = None  # frames of the previous clip not yet emitted (they overlap the next clip)
        emitted = 0
        with self.progress_bar(total=len(starts) * steps) as progress_bar:
            for start in starts:
                target = landmarks[:, start: start + clip_len].to(device=device, dtype=dtype)
                ref = reference.expand(-1, -1, clip_len, -1, -1)
                cond, mask = self.mask_noise(ref, target, generator=generator, return_dict=False)
                mask = mask.to(dtype)
                clip = self.denoise_clip(cond, mask, labels_dev, t_start, num_inference_steps, guidance_scale,
                                         generator, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                         progress_bar)
                clip = (clip.float().clamp(-1, 1) + 1) / 2  # (B, 3, L, S, S) in [0, 1]
                clip = clip.permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, L, S, S, 3)
                if pending is not None:
                    # Drop what was already written, then cross-fade the frames both clips made.
                    clip = clip[:, emitted - start:]
                    shared = min(pending.shape[1], clip.shape[1])
                    w = np.linspace(0, 1, shared + 2, dtype=np.float32)[1:-1][None, :, None, None, None]
                    pending[:, :shared] = (1 - w) * pending[:, :shared] + w * clip[:, :shared]
                    emitted += self._emit(pending, kept, frames_callback)
                    clip = clip[:, shared:]
                # Hold back the overlap: the next clip blends into it.
                hold = self.config.clip_overlap if start != starts[-1] else 0
                hold = min(hold, clip.shape[1])
                if clip.shape[1] - hold > 0:
                    emitted += self._emit(clip[:, : clip.shape[1] - hold], kept, frames_callback)
                pending = clip[:, clip.shape[1] - hold:]
            if pending is not None and pending.shape[1]:
                emitted += self._emit(pending, kept, frames_callback)
        assert emitted == num_frames, (emitted, num_frames)

        self.maybe_free_model_hooks()
        landmarks_px = (landmarks.numpy() * size).astype(np.float32)
        frames = None
        if kept is not None:
            frames = np.concatenate(kept, axis=1)
            if output_type == "pt":
                frames = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
            elif output_type == "pil":
                frames = [[PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in video] for video in frames]
        audio_out = wave_batch.numpy()
        if not return_dict:
            return frames, landmarks_px, names
        return TalkingHeadPipelineOutput(frames=frames, landmarks=landmarks_px, emotion=names,
                                         emotion_probs=probs, fps=fps, audio=audio_out, sample_rate=SAMPLE_RATE)

    def _given_landmarks(self, landmarks, batch: int, num_frames: int) -> torch.Tensor:
        """Caller-given driving landmarks (pixels of the output frame) -> normalised (B, F, 68, 2)."""
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
        return lm / self.sample_size

    @staticmethod
    def _emit(frames: np.ndarray, kept: list | None, callback) -> int:
        if frames.shape[1] == 0:
            return 0
        if callback is not None:
            callback(frames)
        if kept is not None:
            kept.append(frames.copy())
        return frames.shape[1]
