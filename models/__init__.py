"""The pipeline's models, one file each (the file a class lives in is part of every saved checkpoint)."""

from talking_head.models.kfusion_landmarks import KFusionLandmarkModel, KFusionLandmarkOutput, landmark_loss
from talking_head.models.mask_noise import GaussianMaskNoise, MaskNoiseOutput
from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel, UNet3DClassOutput

__all__ = [
    "ClassConditionedUNet3DModel",
    "GaussianMaskNoise",
    "KFusionLandmarkModel",
    "KFusionLandmarkOutput",
    "MaskNoiseOutput",
    "UNet3DClassOutput",
    "landmark_loss",
]
