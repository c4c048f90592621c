#!/usr/bin/env python
"""The audio emotion classifier trainer: `talking_head.trainers.emotion` (run with --help for what it does and
its flags). This script is the same thing for `accelerate launch`:

    accelerate launch train/train_emotion.py --data_dir /path/to/prepared-ravdess --output_dir out/emotion ...
"""

import sys

from talking_head.trainers.emotion import *  # noqa: F401,F403 - the trainer's names, for tests and notebooks
from talking_head.trainers.emotion import main

if __name__ == "__main__":
    main(sys.argv[1:])
