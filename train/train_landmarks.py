#!/usr/bin/env python
"""The KFusion audio -> landmark model trainer: `talking_head.trainers.landmarks` (run with --help for
what it does and its flags). This script is the same thing for `accelerate launch`:

    accelerate launch train/train_landmarks.py --data_dir /path/to/prepared --output_dir out/landmarks ...
"""

import sys

from talking_head.trainers.landmarks import *  # noqa: F401,F403 - the trainer's names, for tests and notebooks
from talking_head.trainers.landmarks import main

if __name__ == "__main__":
    main(sys.argv[1:])
