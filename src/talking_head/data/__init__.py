"""Data preparation (talking-head prepare), the synthetic test set and the training Datasets.

    from talking_head.data import TalkingHeadClipDataset, EmotionAudioDataset, collate_clips
    from talking_head.data import make_synthetic_dataset, make_synthetic_emotion_audio

Modules: layout (the on-disk format and manifest), sources (video / MEAD /
RAVDESS inputs -> jobs), process (decode, detect, crop, write one source),
prepare (the `talking-head prepare` command), preview (`talking-head preview`),
dataset (the torch Datasets), synthetic (drawn talking faces for tests),
storage_bench (the frame-format measurement behind the JPEG choice).
"""

# Names resolve on first use, so `talking-head prepare` starts without importing torch.
_LAZY = {
    "TalkingHeadClipDataset": "talking_head.data.dataset",
    "EmotionAudioDataset": "talking_head.data.dataset",
    "collate_clips": "talking_head.data.dataset",
    "make_synthetic_dataset": "talking_head.data.synthetic",
    "make_synthetic_emotion_audio": "talking_head.data.synthetic",
    "write_synthetic_video": "talking_head.data.synthetic",
    "read_manifest": "talking_head.data.layout",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'talking_head.data' has no attribute {name!r}")
