#!/usr/bin/env python
"""The lower-face renderer (class-conditioned 3D UNet) trainer: `talking_head.trainers.diffusion` (run with --help for
what it does and its flags). This script is the same thing for `accelerate launch`:

    accelerate launch train/train_diffusion.py --data_dir /path/to/prepared --output_dir out/diffusion ...
"""

import sys

from talking_head.trainers.diffusion import *  # noqa: F401,F403 - the trainer's names, for tests and notebooks
from talking_head.trainers.diffusion import main

if __name__ == "__main__":
    main(sys.argv[1:])
