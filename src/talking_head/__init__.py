"""talking_head: audio-driven, emotion-conditioned talking-head video as a diffusers pipeline.

    from talking_head import TalkingHeadPipeline
    pipe = TalkingHeadPipeline.from_pretrained("path/to/pipeline")
    out = pipe("speech.wav", "photo.png")
"""

__version__ = "0.1.0"

# Heavy imports (torch, diffusers) wait until a name is used, so `talking-head --help` is quick.
_LAZY = {
    "TalkingHeadPipeline": "talking_head.pipelines.pipeline_talking_head",
    "TalkingHeadPipelineOutput": "talking_head.pipelines.pipeline_talking_head",
    "ClassConditionedUNet3DModel": "talking_head.models.unet_3d_class",
    "KFusionLandmarkModel": "talking_head.models.kfusion_landmarks",
    "GaussianMaskNoise": "talking_head.models.mask_noise",
    "EMOTIONS": "talking_head.constants",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'talking_head' has no attribute {name!r}")
