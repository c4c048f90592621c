#!/usr/bin/env python
"""Average trained emotion classifiers into one model: an `EmotionClassifierEnsemble` (their mean
log-probabilities) saved with its feature extractor, loadable wherever one classifier is (the pipeline,
`talking-head evaluate --emotion-classifier`, train_diffusion.py --emotion_model).

    python train/ensemble_emotion.py out/emotion/all_s0/emotion_classifier out/emotion/all_s1/emotion_classifier \
        --output_dir out/emotion/ensemble

The members must read the same features (one train_emotion.py recipe, other seeds). Why an average of seeds:
docs/results/emotion-classifier/ (stop 32, cross-validation over the training speakers; the offsets: stop 33;
reading each clip at three speeds: stop 34).
"""

import argparse
import json
import sys

from talking_head.models.emotion_classifier import EmotionClassifierEnsemble
from talking_head.training import save_component_atomic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", help="trained classifier folders (train_emotion.py's emotion_classifier)")
    parser.add_argument("--output_dir", required=True, help="where the averaged classifier is saved")
    parser.add_argument("--logit_offsets", type=json.loads, default=None,
                        help="a JSON list, one number per emotion (constants.EMOTIONS order), added to the averaged "
                             "log-probabilities (logit_offsets.py fits them on a speaker cross-validation)")
    parser.add_argument("--test_time_speeds", type=json.loads, default=None,
                        help="a JSON list of speed factors (e.g. [0.9, 1.0, 1.1]): every clip is also read resampled "
                             "to these speeds and the logits averaged (saved in the feature extractor; stop 34)")
    args = parser.parse_args(argv)
    if len(args.members) < 2:
        parser.error("give at least two classifier folders to average")
    try:
        ensemble, extractor = EmotionClassifierEnsemble.from_members(args.members, logit_offsets=args.logit_offsets)
        if args.test_time_speeds is not None:
            extractor = extractor.with_test_time_speeds(args.test_time_speeds)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    path = save_component_atomic(ensemble, args.output_dir, extras=[extractor])
    print(f"saved the average of {len(args.members)} classifiers to {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
