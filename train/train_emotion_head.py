#!/usr/bin/env python
"""The emotion head trainer (issue 38): `talking_head.trainers.emotion_head` (run with --help for what it does and
its flags). A small head on the frozen Whisper `audio_encoder`, trained on cached encoder states:

    python train/train_emotion_head.py --encoder out/whisper/base_full --layer 4 \
        --train_data out/default/data/ravdess_calm:train --output_dir out/emotion_head/final
"""

import sys

from talking_head.trainers.emotion_head import *  # noqa: F401,F403 - the trainer's names, for tests and notebooks
from talking_head.trainers.emotion_head import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
