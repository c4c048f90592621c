"""Where a trainer's data comes from: `--data_dir`, or a synthetic set made once (`--synthetic`); and the
held-out split it validates on."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def resolve_data_dir(args, accelerator, kind: str, size: int = 64) -> Path:
    """`--data_dir`, or with `--synthetic` a synthetic set made once in OUTPUT_DIR/synthetic_data.

    kind: "video" (drawn talking faces: frames, landmarks, audio; 4 emotions, train + test clips) or
    "emotion" (labelled voice-like utterances of 6 speakers, 2 of them held out).
    """
    if args.data_dir is not None:
        return Path(args.data_dir)
    from talking_head.data.synthetic import make_synthetic_dataset, make_synthetic_emotion_audio

    root = Path(args.output_dir) / "synthetic_data"
    if accelerator.is_main_process and not (root / "manifest.jsonl").is_file():
        logger.info(f"--synthetic: writing a synthetic {kind} dataset to {root}")
        if kind == "video":
            make_synthetic_dataset(root, num_speakers=1, clips_per_emotion=2,
                                   emotions=("neutral", "happy", "sad", "angry"), seconds=3.0,
                                   size=max(32, int(size)), seed=args.seed)
        else:
            make_synthetic_emotion_audio(root, num_speakers=6, utterances_per_emotion=4, seconds=1.5,
                                         seed=args.seed, test_speakers=2)
    accelerator.wait_for_everyone()
    return root


def held_out(factory, data_dir):
    """`factory(split)` for the held-out split: "test", or "train" (with a warning) when the dataset has no
    usable test split (none, or clips shorter than the training window)."""
    try:
        return factory("test")
    except ValueError as err:
        logger.warning(f"{data_dir}: no usable 'test' split ({err}); validating on training data")
        return factory("train")
