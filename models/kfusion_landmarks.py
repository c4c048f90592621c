# Copyright 2026 The talking-head authors. Licensed under the Apache License, Version 2.0.
"""KFusion: a dual-domain audio -> facial-landmark model fused by a KAN.

Paper: "KAN-based Fusion of Dual-Domain for Audio-Driven Facial Landmarks
Generation" (arXiv 2409.05330). See DESIGN.md section 2.2 for where this
implementation departs from the authors' released code and why. The audio front
ends and building blocks are in kfusion_frontends.py, the loss in kfusion_loss.py.

Data flow for a batch of B clips of F video frames:

    waveform (B, S) ──► trim / zero-pad to F / fps seconds, loudness-normalise
       │
       ├─► Global domain: one raw-waveform window per video frame (the frame
       │   plus `global_context_frames` frames on each side), resampled to
       │   `global_window_length` samples ─► 1-D conv ─► + log-energy
       │   ─► temporal convs over frames                      ─► (B, F, Cg)
       │
       └─► Context domain: log-mel (25 ms / 10 ms hop), a wav2vec2 model, or the
           pipeline's Whisper `audio_encoder` states (`context_states`, 20 ms)
           ─► temporal convs at the feature rate ─► interpolated to the
           video frame centres                                 ─► (B, F, Cc)

    identity landmarks (B, 68, 2) ─► MLP                       ─► (B, Ci)
    emotion label (B,) or None    ─► embedding (row `num_emotions` = null) ─► (B, Ce)

    per frame: concat ─► LayerNorm ─► pykan KAN ─► 68 x 2 displacements
    landmarks = identity landmarks + displacements

Landmarks use the project's one normalisation (talking_head.constants):
iBUG-68 (x, y) divided by the side of the square face crop, so (0, 0) is the
crop's top-left and (1, 1) its bottom-right.

pykan notes (verified with pykan 0.2.8, see DESIGN.md section 6):
- `KAN(...)` writes ./model/ and prints unless `auto_save=False`; with
  `symbolic_enabled=True, save_act=True` it is ~400x slower. We set all three.
- Its constructor reseeds the global torch / numpy / random generators; we
  restore them so building this model does not change the user's RNG stream.
- It cannot be built on the meta device or under a float16 default dtype
  (its spline initialisation calls `torch.linalg.lstsq`), so `from_pretrained`
  always loads with `low_cpu_mem_usage=False` and ignores `torch_dtype`.
- The whole model stays float32: casting it to a half dtype is a no-op (the
  device part of `.to(...)` still applies), inputs of any float dtype are
  accepted, and the output is float32.
- `KAN.forward` caches its input (with its autograd graph) on the module,
  which keeps memory alive and breaks `copy.deepcopy`; we clear the cache.
"""

import math
import operator
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput, logging
from kan import KAN
from transformers import Wav2Vec2Model

from talking_head.constants import EMOTIONS, NUM_EMOTIONS, NUM_LANDMARKS, SAMPLE_RATE
from talking_head.models.kfusion_frontends import (
    WAV2VEC2_META_KEYS,
    BandConvStem,
    EncoderStatesFrontend,
    LogMelFrontend,
    TemporalConvBlock,
    Wav2Vec2Frontend,
    WindowEncoder,
    active_rms,
    sample_at_frames,
    wav2vec2_config_from_dict,
)
from talking_head.models.kfusion_loss import landmark_loss

logger = logging.get_logger(__name__)

__all__ = ["KFusionLandmarkModel", "KFusionLandmarkOutput", "landmark_loss"]

# Face width (jaw ends 0-16) of a face in a prepared face crop, in crop units (measured: 0.46-0.52 on the dev
# identity and GRID); identity_frame="face" scales its displacements by the identity's width over this.
_FACE_WIDTH_IN_CROP = 0.5


@dataclass
class KFusionLandmarkOutput(BaseOutput):
    """
    Args:
        landmarks (`torch.Tensor` of shape `(batch, num_frames, 68, 2)`):
            Normalised (x, y) landmarks per video frame: identity landmarks + displacements. float32.
        displacements (`torch.Tensor` of shape `(batch, num_frames, 68, 2)`):
            The predicted offsets from the identity landmarks. float32.
    """

    landmarks: torch.Tensor
    displacements: torch.Tensor


def _build_kan(width, grid, k):
    """pykan KAN with the flags that keep it fast and side-effect free.

    pykan reseeds torch / numpy / random with its `seed` argument; we derive
    that seed from torch's generator (so `torch.manual_seed` still controls
    the init) and restore all generators afterwards.
    """
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    numpy_state, python_state = np.random.get_state(), random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    with torch.random.fork_rng(devices=[]):
        kan = KAN(
            width=list(width),  # a copy: pykan rewrites the list it is given
            grid=grid,
            k=k,
            seed=seed,
            auto_save=False,
            symbolic_enabled=False,
            save_act=False,
            device="cpu",
        )
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)
    # The symbolic branch is disabled, so its parameters get no gradient; freezing
    # them keeps optimisers and DistributedDataParallel from tripping over them.
    kan.symbolic_fun.requires_grad_(False)
    return kan


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class KFusionLandmarkModel(ModelMixin, ConfigMixin):
    r"""
    Audio + identity landmarks (+ optional emotion) -> 68 facial landmarks per video frame.

    Default sizes (logmel front end): 0.50M parameters, 0.38M of them trainable (the
    rest are pykan's spline grids, masks and its disabled symbolic branch); the
    fusion KAN [176, 64, 136] is 0.32M of it. A training step (forward + backward)
    on 8 clips x 16 frames at 25 fps takes about 50 ms on 2 CPU cores.

    Parameters:
        sample_rate (`int`, defaults to 16000): sample rate of the input waveform (Hz).
        num_landmarks (`int`, defaults to 68): landmarks per face (iBUG-68).
        context_encoder (`str`, defaults to `"logmel"`): the Context domain's front end, `"logmel"`
            (no pretrained weights needed), `"wav2vec2"` (a transformers `Wav2Vec2Model` inside the model, see
            [`~KFusionLandmarkModel.from_wav2vec2_pretrained`]) or `"encoder_states"` (hidden states of the
            pipeline's `audio_encoder`, Whisper, passed to `forward` as `context_states`: DESIGN.md 8.3).
        encoder_layers (`list`, *optional*): with `"encoder_states"`, the audio encoder's layers read (their
            states concatenated in this order), e.g. `[2, 4]`; the pipeline asks the encoder for exactly these.
        encoder_state_dim (`int`, *optional*): with `"encoder_states"`, the encoder's hidden size (512 for
            Whisper base, 384 for tiny.en).
        encoder_state_rate (`float`, defaults to 50.0): states per second (Whisper: one per 20 ms).
        n_mels (`int`, defaults to 80): mel bands of the logmel front end.
        wav2vec2_config (`dict`, *optional*): `Wav2Vec2Config` keyword arguments; required for `"wav2vec2"`.
        freeze_wav2vec2 (`bool`, defaults to `True`): keep the wav2vec2 weights fixed (and in eval mode).
        num_emotions (`int`, defaults to 8): emotion classes; label `num_emotions` means "no emotion given".
        global_context_frames (`int`, defaults to 2): video frames of audio context on each side of a
            frame's Global-domain window (window = 2 * context + 1 frames).
        global_window_length (`int`, defaults to 800): samples each window is resampled to, whatever
            the fps (800 = 4 kHz for 5 frames at 25 fps: enough for loudness and syllable rate).
        global_channels (`int`, defaults to 64): Global-domain feature size.
        context_channels (`int`, defaults to 64): Context-domain feature size.
        identity_dim (`int`, defaults to 32): identity-landmark embedding size.
        emotion_dim (`int`, defaults to 16): emotion embedding size.
        num_temporal_blocks (`int`, defaults to 2): residual temporal conv blocks per domain.
        temporal_kernel_size (`int`, defaults to 5): their kernel size (odd).
        context_dilations (`list`, *optional*): the Context domain's temporal blocks as dilations, one block
            each (e.g. `[1, 2, 4, 8]`), instead of `num_temporal_blocks` undilated ones. The log-mel steps are
            10 ms, so two undilated kernel-5 blocks hear only +-40 ms around a frame; the lips move with
            +-100-300 ms of speech (coarticulation): `[1, 2, 4, 8]` hears +-300 ms for twice the blocks.
        context_band_conv (`int`, defaults to 0): with C > 0, the log-mel passes two 3x3 convolutions of C
            channels over (time, mel band) before the Context domain's projection: filters shared across the
            bands, so another voice's formants move a pattern instead of meeting other weights (logmel only).
        dropout (`float`, defaults to 0.1): dropout in the temporal blocks.
        kan_hidden_dims (`tuple`, defaults to `(64,)`): hidden widths of the fusion KAN.
        kan_grid (`int`, defaults to 5): spline grid intervals of the KAN.
        kan_k (`int`, defaults to 3): spline order of the KAN.
        displacement_scale (`float`, defaults to 0.1): KAN outputs are O(1); times this they are
            displacements in face-crop units (a mouth opens by ~0.05).
        normalize_loudness (`bool`, defaults to `True`): scale each clip to RMS 0.1 first, so the
            recording's gain does not decide how wide the mouth opens.
        loudness_floor (`float`, defaults to `1e-3`): the RMS below which a clip is not scaled up further
            (the gain is at most 0.1 / loudness_floor). With 1e-3 (the first models') a window of room
            noise at -45 dBFS is raised to speech level; 0.02 (gain <= 5) keeps silence quiet.
        loudness_reference (`str`, defaults to `"clip"`): what `normalize_loudness` measures. `"clip"` (the
            first models'): the RMS of the whole input, so the same speech gets louder the more silence
            surrounds it. `"active"`: the RMS of the active 20 ms blocks only (those within 30 dB of the
            loudest block), i.e. the speech level, whatever the silence around it.
        identity_frame (`str`, defaults to `"crop"`): the frame the identity landmarks are read in and the
            displacements are made in. `"crop"` (the first models'): the identity encoder reads the raw crop
            coordinates and the displacements are in crop units. `"face"`: the encoder reads the identity's
            shape alone (centred on its mean point, divided by its face width, the jaw ends 0-16 apart), and
            the displacements are in face widths (times `displacement_scale`, then times face width / 0.5, 0.5
            being the face width in a prepared crop): a face of another size or place in the crop gets the
            same motion, scaled to it, which is what lets a model trained on a few faces move others.
        mel_max_frequency (`float`, *optional*): the log-mel's upper edge in Hz (default: half the sample rate).
            4000 makes the Context domain hear only the telephone band, so 8 kHz recordings are not foreign.
        mel_band_mean (`bool`, defaults to `False`): subtract each log-mel band's mean over the input's active
            steps (cepstral-mean-style normalisation: the speaker's and the channel's spectral balance is
            removed, the changes that follow the words are kept).
        mel_deltas (`bool`, defaults to `False`): append the log-mel's first and second time deltas
            (HTK regression over +-2 steps) to the Context domain's input, 3 x n_mels features.
        trained_emotions (`list`, *optional*): the emotion names whose embedding rows were trained (recorded by
            train_landmarks.py from its data; None: not recorded, e.g. the first models, which learned only the
            null row). Informational: the pipeline warns when asked for an emotion outside it.
        emotion_aliases (`dict`, *optional*): `{asked: used}` emotion names; a label `asked` is replaced by
            `used` before the embedding (e.g. `{"contempt": "disgusted", "surprised": "fear"}` for a model
            trained on CREMA-D, which has neither), so an untrained row is never read.
        emotion_head (`bool`, defaults to `False`): an emotion residual branch: a small MLP reads the emotion
            embedding and the identity embedding (and, with `emotion_head_audio`, the Global domain's per-frame
            features) and adds a displacement, in the same units as the KAN's: one expression per clip on top
            of the speech motion. The KAN then always reads the
            null emotion row (the speech motion is the same whatever the emotion) and the branch is off for the
            null class, so a model without an emotion is exactly the model without the branch: a pretrained
            speech model can learn emotions (train only `emotion_residual` and `emotion_embedding`) and keep its
            lip motion bit for bit, with or without an emotion.
        emotion_head_dim (`int`, defaults to 64): the branch's hidden width.
        emotion_head_audio (`bool`, defaults to `False`): the branch also reads the Global domain's per-frame
            features, so the expression can change with the speech. Measured worse (issue 16: learned from
            CREMA-D's 8 kHz audio, it moved the mouth against the speech on full-band audio).
        emotion_head_relative (`bool`, defaults to `False`): the branch's output is its output for the emotion
            minus its output for neutral, so neutral is exactly the null class (the speech model) and every
            emotion is a difference from neutral. What the emotion data has in common across its classes (its
            recording, its speakers: train_landmarks.py --domain_bias absorbs it) then never reaches the face.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        num_landmarks: int = NUM_LANDMARKS,
        context_encoder: str = "logmel",
        n_mels: int = 80,
        wav2vec2_config: dict | None = None,
        freeze_wav2vec2: bool = True,
        encoder_layers: list | None = None,
        encoder_state_dim: int | None = None,
        encoder_state_rate: float = 50.0,
        num_emotions: int = NUM_EMOTIONS,
        global_context_frames: int = 2,
        global_window_length: int = 800,
        global_channels: int = 64,
        context_channels: int = 64,
        identity_dim: int = 32,
        emotion_dim: int = 16,
        num_temporal_blocks: int = 2,
        temporal_kernel_size: int = 5,
        context_dilations: list | None = None,
        context_band_conv: int = 0,
        dropout: float = 0.1,
        kan_hidden_dims: tuple = (64,),
        kan_grid: int = 5,
        kan_k: int = 3,
        displacement_scale: float = 0.1,
        normalize_loudness: bool = True,
        loudness_floor: float = 1e-3,
        mel_deltas: bool = False,
        loudness_reference: str = "clip",
        mel_max_frequency: float | None = None,
        mel_band_mean: bool = False,
        identity_frame: str = "crop",
        trained_emotions: list | None = None,
        emotion_aliases: dict | None = None,
        emotion_head: bool = False,
        emotion_head_dim: int = 64,
        emotion_head_audio: bool = False,
        emotion_head_relative: bool = False,
    ):
        super().__init__()
        self._alias_table = self._make_alias_table(num_emotions, emotion_aliases)
        if context_encoder not in ("logmel", "wav2vec2", "encoder_states"):
            raise ValueError(f"context_encoder must be 'logmel', 'wav2vec2' or 'encoder_states', got {context_encoder!r}")
        if context_encoder == "encoder_states" and (not encoder_layers or not encoder_state_dim
                                                    or encoder_state_dim < 1 or encoder_state_rate <= 0):
            raise ValueError("context_encoder='encoder_states' needs encoder_layers (the audio encoder's layers "
                             "read), a positive encoder_state_dim and encoder_state_rate")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if global_window_length < 105:  # the window encoder's three strided convs need this many
            raise ValueError(f"global_window_length must be at least 105 samples, got {global_window_length}")
        if not (loudness_floor > 0 and math.isfinite(loudness_floor)):
            raise ValueError(f"loudness_floor must be a positive RMS, got {loudness_floor}")
        if identity_frame not in ("crop", "face"):
            raise ValueError(f"identity_frame must be 'crop' or 'face', got {identity_frame!r}")
        if loudness_reference not in ("clip", "active"):
            raise ValueError(f"loudness_reference must be 'clip' or 'active', got {loudness_reference!r}")
        if (mel_deltas or mel_band_mean or mel_max_frequency is not None) and context_encoder != "logmel":
            raise ValueError("mel_deltas, mel_band_mean and mel_max_frequency apply to the logmel context encoder only")
        if mel_max_frequency is not None and not (0 < mel_max_frequency <= sample_rate / 2):
            raise ValueError(f"mel_max_frequency must be in (0, {sample_rate / 2:g}] Hz, got {mel_max_frequency}")
        if context_band_conv < 0 or (context_band_conv and context_encoder != "logmel"):
            raise ValueError(f"context_band_conv must be >= 0 and needs the logmel context encoder, got "
                             f"{context_band_conv} with {context_encoder!r}")
        if temporal_kernel_size % 2 != 1:
            raise ValueError(f"temporal_kernel_size must be odd (keeps frames aligned), got {temporal_kernel_size}")
        if context_dilations is not None and (
            len(context_dilations) == 0 or any(int(d) != d or d < 1 for d in context_dilations)
        ):
            raise ValueError(f"context_dilations must be a non-empty list of positive integers, got {context_dilations}")

        # Global domain: raw waveform windows, one per video frame.
        self.global_window_encoder = WindowEncoder(global_channels)
        # +2: log-energy of the whole window and of the frame itself (loudness, explicitly).
        self.global_in = nn.Linear(global_channels + 2, global_channels)
        self.global_temporal = nn.Sequential(
            *[TemporalConvBlock(global_channels, temporal_kernel_size, dropout) for _ in range(num_temporal_blocks)]
        )

        # Context domain: log-mel or wav2vec2 features at their own rate, resampled to frames later.
        if context_encoder == "encoder_states":
            self.context_frontend = EncoderStatesFrontend(encoder_state_dim, len(encoder_layers), encoder_state_rate)
        elif context_encoder == "logmel":
            self.context_frontend = LogMelFrontend(sample_rate, n_mels, deltas=mel_deltas,
                                                    max_frequency=mel_max_frequency, band_mean=mel_band_mean)
        else:
            if wav2vec2_config is None:
                raise ValueError(
                    "context_encoder='wav2vec2' needs wav2vec2_config (a Wav2Vec2Config dict); to start from "
                    "pretrained weights use KFusionLandmarkModel.from_wav2vec2_pretrained(local_path)"
                )
            if sample_rate != SAMPLE_RATE:
                raise ValueError(f"wav2vec2 models read {SAMPLE_RATE} Hz audio; sample_rate is {sample_rate}")
            self.context_frontend = Wav2Vec2Frontend(wav2vec2_config_from_dict(wav2vec2_config), freeze_wav2vec2)
        context_dim = self.context_frontend.output_dim
        if context_band_conv:
            self.context_stem = BandConvStem(3 if mel_deltas else 1, int(context_band_conv), n_mels)
            context_dim = self.context_stem.output_dim
        self.context_in = nn.Linear(context_dim, context_channels)
        dilations = [int(d) for d in context_dilations] if context_dilations else [1] * num_temporal_blocks
        self.context_temporal = nn.Sequential(
            *[TemporalConvBlock(context_channels, temporal_kernel_size, dropout, d) for d in dilations]
        )

        # Conditioning.
        self.identity_encoder = nn.Sequential(
            nn.Linear(num_landmarks * 2, 64), nn.SiLU(), nn.Linear(64, identity_dim)
        )
        self.emotion_embedding = nn.Embedding(num_emotions + 1, emotion_dim)  # last row: null / unknown

        # Fusion: a KAN per frame. pykan's spline grid covers [-1, 1]; the LayerNorm puts inputs there.
        fusion_dim = global_channels + context_channels + identity_dim + emotion_dim
        self.fusion_norm = nn.LayerNorm(fusion_dim)
        self.fusion_kan = _build_kan([fusion_dim, *kan_hidden_dims, num_landmarks * 2], kan_grid, kan_k)
        if emotion_head:
            self.emotion_residual = nn.Sequential(
                nn.Linear(emotion_dim + identity_dim + (global_channels if emotion_head_audio else 0),
                          emotion_head_dim), nn.SiLU(),
                nn.Linear(emotion_head_dim, emotion_head_dim), nn.SiLU(),
                nn.Linear(emotion_head_dim, num_landmarks * 2),
            )
            nn.init.zeros_(self.emotion_residual[-1].weight)  # starts as "no emotion effect"
            nn.init.zeros_(self.emotion_residual[-1].bias)

    # -- dtype / device handling ----------------------------------------------------------------------------------

    def _apply(self, fn, recurse=True):
        # Every cast (.to(dtype), .half(), .bfloat16(), a pipeline's .to(torch.float16)) goes through
        # here. Keep float tensors float32 but honour the device part: probe `fn` on an empty tensor
        # to learn the target, so no weight is ever rounded through a half type.
        def keep_float32(tensor):
            if tensor.is_floating_point():
                target = fn(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
                if target.dtype != tensor.dtype:
                    return tensor.to(device=target.device)
            return fn(tensor)

        super()._apply(keep_float32, recurse)
        # nn.Module.to does not call KAN.to, so pykan's own `device` bookkeeping would go stale.
        device = self.fusion_kan.act_fun[0].coef.device
        self.fusion_kan.device = device
        for layer in [*self.fusion_kan.act_fun, *self.fusion_kan.symbolic_fun]:
            layer.device = device
        self.fusion_kan.input_id = self.fusion_kan.input_id.to(device)
        return self

    def to(self, *args, **kwargs):
        # Drop the dtype before ModelMixin.to sees it (it warns on any dtype cast); _apply above
        # catches the casts that do not go through here (.half(), .bfloat16(), .to(tensor)).
        dtype = kwargs.pop("dtype", None)
        dtypes = [a for a in args if isinstance(a, torch.dtype)]
        args = tuple(a for a in args if not isinstance(a, torch.dtype))
        for requested in [dtype, *dtypes]:
            if requested is not None and requested != torch.float32:
                logger.info(f"KFusionLandmarkModel stays float32 (pykan fails in half precision), not {requested}.")
        if not args and "device" not in kwargs and "tensor" not in kwargs:
            return self
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if isinstance(self.context_frontend, Wav2Vec2Frontend) and self.context_frontend.freeze:
            self.context_frontend.wav2vec2.eval()  # no dropout / SpecAugment in a frozen feature extractor
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""[`ModelMixin.from_pretrained`], always with `low_cpu_mem_usage=False` (pykan cannot be built on
        the meta device) and in float32 (`torch_dtype` is ignored). A single-device `device_map`
        (`"cuda"`, `0`, ...) moves the loaded model there."""
        if kwargs.get("low_cpu_mem_usage"):
            logger.info("KFusionLandmarkModel loads with low_cpu_mem_usage=False: pykan cannot be built on 'meta'.")
        kwargs["low_cpu_mem_usage"] = False
        for key in ("torch_dtype", "dtype"):
            dtype = kwargs.pop(key, None)
            if dtype is not None and dtype != torch.float32:
                logger.info(f"KFusionLandmarkModel stays float32 (pykan fails in half precision), not {dtype}.")
        device_map = kwargs.pop("device_map", None)
        device = None
        if device_map is not None:
            try:
                device = torch.device(device_map)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"KFusionLandmarkModel cannot be dispatched with device_map={device_map!r}; give one device "
                    "('cpu', 'cuda', 0) or load it and call .to(device)"
                ) from None
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if device is not None:
            (loaded[0] if isinstance(loaded, tuple) else loaded).to(device)
        return loaded

    @classmethod
    def from_wav2vec2_pretrained(cls, wav2vec2_path: str | os.PathLike, **kwargs) -> "KFusionLandmarkModel":
        r"""
        A new model whose Context domain is the pretrained wav2vec 2.0 in the local directory `wav2vec2_path`
        (anything `Wav2Vec2Model.from_pretrained` reads: a saved `Wav2Vec2Model`, `Wav2Vec2ForCTC`, ...). The
        rest of the model is randomly initialised; `kwargs` are the other config arguments. The wav2vec2
        config is copied into this model's config, and its weights into this model's state dict, so
        `save_pretrained` / `from_pretrained` need the original directory no more.
        """
        if not os.path.isdir(wav2vec2_path):
            raise ValueError(
                f"wav2vec2_path must be a local directory with a saved wav2vec2 model (config.json + weights); "
                f"{str(wav2vec2_path)!r} is not a directory (models are never downloaded here)"
            )
        for key in ("context_encoder", "wav2vec2_config"):
            if key in kwargs:
                raise ValueError(f"from_wav2vec2_pretrained sets {key} itself; do not pass it")
        wav2vec2 = Wav2Vec2Model.from_pretrained(wav2vec2_path, local_files_only=True)
        config = {k: v for k, v in wav2vec2.config.to_diff_dict().items() if k not in WAV2VEC2_META_KEYS}
        model = cls(context_encoder="wav2vec2", wav2vec2_config=config, **kwargs)
        model.context_frontend.wav2vec2.load_state_dict(wav2vec2.state_dict())
        return model

    @staticmethod
    def _make_alias_table(num_emotions: int, aliases: dict | None) -> torch.Tensor:
        """(num_emotions + 1,) label -> the label whose embedding row is read (identity unless aliased)."""
        table = torch.arange(num_emotions + 1)
        if not aliases:
            return table
        if not isinstance(aliases, dict):
            raise ValueError(f"emotion_aliases must be a dict of emotion names, got {type(aliases).__name__}")
        if num_emotions != NUM_EMOTIONS:
            raise ValueError("emotion_aliases needs the project's emotion classes (num_emotions = 8)")
        for asked, used in aliases.items():
            for name in (asked, used):
                if name not in EMOTIONS:
                    raise ValueError(f"emotion_aliases: unknown emotion {name!r}; expected one of "
                                     f"{', '.join(EMOTIONS)}")
            if used in aliases:
                raise ValueError(f"emotion_aliases: {asked!r} -> {used!r}, which is aliased itself")
            table[EMOTIONS.index(asked)] = EMOTIONS.index(used)
        return table

    def resolved_emotion(self, name: str) -> str:
        """The emotion whose embedding row `name` reads (itself unless `emotion_aliases` maps it)."""
        return (self.config.emotion_aliases or {}).get(name, name)

    # -- forward --------------------------------------------------------------------------------------------------

    def forward(
        self,
        waveform: torch.Tensor,
        identity_landmarks: torch.Tensor,
        num_frames: int,
        fps: float = 25.0,
        emotion_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        context_states: torch.Tensor | None = None,
    ) -> KFusionLandmarkOutput | tuple:
        r"""
        Args:
            waveform (`torch.Tensor` of shape `(batch, samples)`):
                Mono audio at `config.sample_rate`, any float dtype. Video frame `f` covers audio
                `[f / fps, (f + 1) / fps)`; audio shorter than `num_frames / fps` is zero-padded, audio
                past the end is ignored.
            identity_landmarks (`torch.Tensor` of shape `(batch, 68, 2)`):
                The person's own landmarks (normalised, see module docstring); the output moves from these.
            num_frames (`int`): video frames to predict (>= 1).
            fps (`float`, defaults to 25.0): video frame rate (> 0).
            emotion_labels (`torch.Tensor` of shape `(batch,)`, *optional*):
                Class ids in `[0, num_emotions]` (talking_head.constants.EMOTIONS order); `num_emotions`
                or `None` means no emotion given.
            return_dict (`bool`, defaults to `True`): return a [`KFusionLandmarkOutput`] or a tuple.
            context_states (`torch.Tensor` of shape `(batch, states, len(encoder_layers) * encoder_state_dim)`):
                With `context_encoder="encoder_states"` (required then, refused otherwise): the audio encoder's
                states of the same waveform, state t centred at t / encoder_state_rate seconds of it, e.g.
                `audio_encoder.encode(waveform, layers=model.config.encoder_layers)`.

        Returns:
            [`KFusionLandmarkOutput`] or `(landmarks, displacements)`, both `(batch, num_frames, 68, 2)` float32.
        """
        waveform, identity_landmarks, num_frames, fps, emotion_labels = self._check_inputs(
            waveform, identity_landmarks, num_frames, fps, emotion_labels
        )
        context_states = self._check_context_states(context_states, waveform.shape[0])
        # float32 throughout, also under a caller's autocast: pykan is not half-precision safe.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            batch = waveform.shape[0]
            waveform = self._prepare_waveform(waveform, num_frames, fps)

            global_features = self._global_domain(waveform, num_frames, fps)  # (B, F, Cg)
            context_features = self._context_domain(waveform, num_frames, fps, context_states)  # (B, F, Cc)
            if self.config.identity_frame == "face":
                centre = identity_landmarks.mean(dim=1, keepdim=True)
                width = (identity_landmarks[:, 16] - identity_landmarks[:, 0]).norm(dim=-1).clamp_min(1e-3)
                shape = (identity_landmarks - centre) / width[:, None, None]  # roughly [-0.6, 0.6]
                identity = self.identity_encoder(shape.flatten(1) * 2.0)
                unit = (width / _FACE_WIDTH_IN_CROP)[:, None, None, None]
            else:
                identity = self.identity_encoder((identity_landmarks.flatten(1) - 0.5) * 2.0)  # roughly [-1, 1] in
                unit = 1.0
            emotion = self.emotion_embedding(self._alias_table.to(emotion_labels.device)[emotion_labels])
            if self.config.emotion_head:
                # The speech motion (the KAN) always reads the null row; the emotion enters through the branch.
                kan_emotion = self.emotion_embedding.weight[self.config.num_emotions].expand(batch, -1)
            else:
                kan_emotion = emotion

            fused = torch.cat(
                [
                    global_features,
                    context_features,
                    identity[:, None].expand(-1, num_frames, -1),
                    kan_emotion[:, None].expand(-1, num_frames, -1),
                ],
                dim=-1,
            )
            out = self.fusion_kan(self.fusion_norm(fused).reshape(batch * num_frames, -1))
            # pykan keeps its last input (and autograd graph) as `cache_data`; drop it.
            self.fusion_kan.cache_data = None
            self.fusion_kan.acts = None

            if self.config.emotion_head:
                head_in = [emotion[:, None].expand(-1, num_frames, -1), identity[:, None].expand(-1, num_frames, -1)]
                if self.config.emotion_head_audio:
                    head_in.append(global_features)
                residual = self.emotion_residual(torch.cat(head_in, dim=-1))
                if self.config.emotion_head_relative:
                    neutral = self.emotion_embedding.weight[EMOTIONS.index("neutral")].expand(batch, -1)
                    base_in = [neutral[:, None].expand(-1, num_frames, -1)] + head_in[1:]
                    residual = residual - self.emotion_residual(torch.cat(base_in, dim=-1))
                has_emotion = (emotion_labels != self.config.num_emotions).to(residual.dtype)
                out = out + (residual * has_emotion[:, None, None]).reshape(batch * num_frames, -1)
            displacements = out.reshape(batch, num_frames, self.config.num_landmarks, 2)
            displacements = displacements * (self.config.displacement_scale * unit)
            landmarks = identity_landmarks[:, None] + displacements

        if not return_dict:
            return landmarks, displacements
        return KFusionLandmarkOutput(landmarks=landmarks, displacements=displacements)

    def _prepare_waveform(self, waveform: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
        """Trim / zero-pad to exactly the samples the frames cover, and normalise loudness."""
        needed = math.ceil(num_frames * self.config.sample_rate / fps - 1e-6)
        waveform = F.pad(waveform[:, :needed], (0, max(needed - waveform.shape[1], 0)))
        if self.config.normalize_loudness:
            # After padding, so short audio behaves exactly like the caller's own zero padding.
            # The floor keeps near-silence from being blown up.
            if self.config.loudness_reference == "active":
                rms = active_rms(waveform, block=max(1, round(0.02 * self.config.sample_rate)))
            else:
                rms = waveform.pow(2).mean(dim=1, keepdim=True).sqrt()
            waveform = waveform * (0.1 / rms.clamp_min(self.config.loudness_floor))
        return waveform

    def _global_domain(self, waveform: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
        windows = self._frame_windows(waveform, num_frames, fps)  # (B, F, L)
        batch, _, length = windows.shape
        features = self.global_window_encoder(windows.reshape(batch * num_frames, length))
        features = features.reshape(batch, num_frames, -1)

        context = self.config.global_context_frames
        start = round(context * length / (2 * context + 1))
        end = max(round((context + 1) * length / (2 * context + 1)), start + 1)
        energy = torch.stack([windows.pow(2).mean(-1), windows[..., start:end].pow(2).mean(-1)], dim=-1)
        log_energy = torch.log10(energy + 1e-8) / 4.0  # ~[-2, 0]
        features = self.global_in(torch.cat([features, log_energy], dim=-1))
        return self.global_temporal(features)

    def _frame_windows(self, waveform: torch.Tensor, num_frames: int, fps: float) -> torch.Tensor:
        """Per video frame f, the audio in [(f - c) / fps, (f + 1 + c) / fps) resampled to L samples:
        (B, S) -> (B, F, L). Outside the audio counts as silence.

        Resampling is by area (each output sample is the mean of the input it covers), computed from a
        cumulative sum: anti-aliased, exact for any ratio, and one vectorised gather.
        """
        batch, num_samples = waveform.shape
        context, length = self.config.global_context_frames, self.config.global_window_length
        # float64 so differences of a long running sum stay exact (MPS has no float64).
        acc = torch.float32 if waveform.device.type == "mps" else torch.float64
        cumsum = F.pad(waveform.to(acc).cumsum(dim=1), (1, 0))  # cumsum[:, n] = sum of samples before n

        samples_per_frame = self.config.sample_rate / fps
        bin_width = (2 * context + 1) * samples_per_frame / length
        frames = torch.arange(num_frames, device=waveform.device, dtype=acc)
        edges = (frames[:, None] - context) * samples_per_frame + torch.arange(
            length + 1, device=waveform.device, dtype=acc
        ) * bin_width  # (F, L + 1), in samples
        edges = edges.clamp(0, num_samples).flatten()
        lower = edges.floor().long().clamp(max=num_samples - 1)
        frac = edges - lower
        # The running sum is piecewise linear between samples: interpolate it at the bin edges.
        at_edges = cumsum[:, lower] + frac * (cumsum[:, lower + 1] - cumsum[:, lower])
        at_edges = at_edges.reshape(batch, num_frames, length + 1)
        return ((at_edges[..., 1:] - at_edges[..., :-1]) / bin_width).to(torch.float32)

    def _context_domain(self, waveform: torch.Tensor, num_frames: int, fps: float,
                        context_states: torch.Tensor | None = None) -> torch.Tensor:
        frontend = self.context_frontend
        features = frontend(waveform if context_states is None else context_states)
        if self.config.context_band_conv:
            features = self.context_stem(features)
        features = self.context_temporal(self.context_in(features))
        return sample_at_frames(features, frontend.first_time, frontend.time_step, num_frames, fps)

    @property
    def reads_encoder_states(self) -> bool:
        """True when `forward` needs `context_states` from the pipeline's `audio_encoder`."""
        return self.config.context_encoder == "encoder_states"

    def _check_context_states(self, states, batch: int) -> torch.Tensor | None:
        if not self.reads_encoder_states:
            if states is not None:
                raise ValueError(f"this landmark model's Context domain is {self.config.context_encoder!r}; it "
                                 "reads the waveform, not context_states")
            return None
        dim = len(self.config.encoder_layers) * self.config.encoder_state_dim
        if states is None:
            raise ValueError(f"this landmark model reads audio-encoder states: pass context_states (batch, states, "
                             f"{dim}), e.g. audio_encoder.encode(waveform, layers={self.config.encoder_layers})")
        if not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[0] != batch \
                or states.shape[2] != dim or states.shape[1] < 1:
            got = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
            raise ValueError(f"context_states must have shape ({batch}, states >= 1, {dim}) (encoder layers "
                             f"{self.config.encoder_layers} x {self.config.encoder_state_dim}), got {got}")
        if not states.is_floating_point() or not torch.isfinite(states).all():
            raise ValueError("context_states must be finite float values")
        return states.to(device=self.device, dtype=torch.float32)

    def _check_inputs(self, waveform, identity_landmarks, num_frames, fps, emotion_labels):
        if not isinstance(waveform, torch.Tensor):
            raise ValueError(f"waveform must be a torch.Tensor (batch, samples), got {type(waveform).__name__}")
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be 2-D (batch, samples) mono audio, got shape {tuple(waveform.shape)}")
        if not waveform.is_floating_point():
            raise ValueError(f"waveform must be a float tensor, got {waveform.dtype}")
        if waveform.shape[0] < 1 or waveform.shape[1] < 1:
            raise ValueError(f"waveform must have at least one item and one sample, got shape {tuple(waveform.shape)}")
        if not torch.isfinite(waveform).all():
            raise ValueError("waveform contains NaN or infinite values")

        shape = (waveform.shape[0], self.config.num_landmarks, 2)
        is_tensor = isinstance(identity_landmarks, torch.Tensor)
        if not is_tensor or tuple(identity_landmarks.shape) != shape:
            got = tuple(identity_landmarks.shape) if is_tensor else type(identity_landmarks).__name__
            raise ValueError(
                f"identity_landmarks must be a tensor of shape {shape} (batch matching waveform, normalised "
                f"(x, y) points), got {got}"
            )
        if not identity_landmarks.is_floating_point() or not torch.isfinite(identity_landmarks).all():
            raise ValueError("identity_landmarks must be finite float values")

        try:
            if isinstance(num_frames, bool):
                raise TypeError
            num_frames = operator.index(num_frames)
        except TypeError:
            raise ValueError(f"num_frames must be an integer, got {num_frames!r}") from None
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
            raise ValueError(f"fps must be a number, got {fps!r}")
        fps = float(fps)
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive finite number, got {fps}")

        device = self.device
        if emotion_labels is None:
            emotion_labels = torch.full((waveform.shape[0],), self.config.num_emotions, dtype=torch.long)
        else:
            emotion_labels = torch.as_tensor(emotion_labels)
            labels_dtype = emotion_labels.dtype
            integer = not (labels_dtype.is_floating_point or labels_dtype.is_complex or labels_dtype == torch.bool)
            if emotion_labels.shape != (waveform.shape[0],) or not integer:
                raise ValueError(
                    f"emotion_labels must be integer class ids of shape ({waveform.shape[0]},), got "
                    f"{emotion_labels.dtype} of shape {tuple(emotion_labels.shape)}"
                )
            if emotion_labels.min() < 0 or emotion_labels.max() > self.config.num_emotions:
                raise ValueError(
                    f"emotion_labels must be in [0, {self.config.num_emotions}] ({self.config.num_emotions} = no "
                    f"emotion), got {emotion_labels.tolist()}"
                )
        return (
            waveform.to(device=device, dtype=torch.float32),
            identity_landmarks.to(device=device, dtype=torch.float32),
            num_frames,
            fps,
            emotion_labels.to(device=device, dtype=torch.long),
        )
