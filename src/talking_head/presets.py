"""Randomly initialised pipelines of known sizes: `talking-head init --preset NAME`.

tiny:  a 64×64 mouth box, a 3-level UNet with 16/32/64 channels; a fraction of a second per clip on a
       CPU, for CPU use, tests and CI.
paper: a 256×256 mouth box, the paper's 4-level "Basic UNet" with 32/64/128/256 channels,
       8 emotion classes, DDPM with 1000 training timesteps (300 at inference).
"""

from __future__ import annotations

from talking_head.models.emotion_classifier import build_emotion_classifier, build_emotion_feature_extractor
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.models.mask_noise import GaussianMaskNoise
from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel
from talking_head.schedulers.scheduling_sdedit import default_ddpm_scheduler

PRESETS = {
    "tiny": dict(sample_size=64, block_out_channels=(16, 32, 64), layers_per_block=1, emotion="tiny"),
    "paper": dict(sample_size=256, block_out_channels=(32, 64, 128, 256), layers_per_block=2, emotion="paper"),
}


def build_pipeline(preset: str = "tiny", sample_size: int | None = None, seed: int = 0,
                   with_emotion_classifier: bool = True):
    """A `TalkingHeadPipeline` with freshly initialised weights for `preset`."""
    import torch

    from talking_head.pipelines.pipeline_talking_head import UNET_IN_CHANNELS, TalkingHeadPipeline

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    size = int(sample_size or spec["sample_size"])
    torch.manual_seed(seed)
    # The renderer regenerates the lower face in a mouth box of `size` pixels (DESIGN 7.2).
    mask_noise = GaussianMaskNoise()
    unet = ClassConditionedUNet3DModel(sample_size=size, in_channels=UNET_IN_CHANNELS, out_channels=3,
                                       block_out_channels=spec["block_out_channels"],
                                       layers_per_block=spec["layers_per_block"])
    landmark_model = KFusionLandmarkModel()
    classifier = build_emotion_classifier(spec["emotion"]) if with_emotion_classifier else None
    extractor = build_emotion_feature_extractor(classifier) if with_emotion_classifier else None
    return TalkingHeadPipeline(unet=unet, scheduler=default_ddpm_scheduler(), landmark_model=landmark_model,
                               mask_noise=mask_noise, emotion_classifier=classifier, feature_extractor=extractor)
