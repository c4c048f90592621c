"""A pipeline folder for one landmark-model candidate: a base pipeline (default: the bundled one) with the given
landmark model and, when it reads encoder states, the audio encoder (keeping only the layers up to the deepest one
any reader needs).

    python experiments/whisper_lip_motion/assemble.py --landmark_model out/default/lm_base24/landmark_model \
        --audio_encoder out/whisper/base_full --output out/default/cand_base24
"""

import argparse
import sys

import torch

from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.models.whisper_encoder import WhisperSpeechEncoder
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.utils import save_pipeline_atomic


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="assets/pipeline")
    p.add_argument("--landmark_model", required=True)
    p.add_argument("--audio_encoder", default=None)
    p.add_argument("--keep_layers", type=int, default=None, help="default: the landmark model's deepest layer")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    pipe = TalkingHeadPipeline.from_pretrained(args.base)
    model = KFusionLandmarkModel.from_pretrained(args.landmark_model)
    modules = {"landmark_model": model}
    if model.reads_encoder_states:
        encoder = WhisperSpeechEncoder.from_pretrained(args.audio_encoder).float()
        keep = args.keep_layers or max(model.config.encoder_layers)
        modules["audio_encoder"] = encoder.truncated(keep, model.config.encoder_layers).to(torch.float16)
    pipe.register_modules(**modules)
    save_pipeline_atomic(pipe, args.output)
    print(f"assembled {args.output}")


if __name__ == "__main__":
    sys.exit(main())
