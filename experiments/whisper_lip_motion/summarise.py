"""One markdown table of the landmark model alone on every held-out set, from `talking-head evaluate` reports.

    python experiments/whisper_lip_motion/summarise.py out/default/eval/today out/default/eval/base24 ...

Each argument is a folder of per-set report folders (<set>/metrics.json), as /tmp/eval_lm.sh-style runs write.
"""

import json
import sys
from pathlib import Path

SETS = ["obama", "grid_s1_test", "grid_speakers", "cremad_test", "cnn_anchor", "oneshot_eval"]


def row(name, set_name, m):
    lm = m["landmark_model"]
    model, floor = lm["model"], lm["identity_floor"]

    def ratio(key):
        return model[key] / floor[key] if model.get(key) and floor.get(key) else float("nan")

    return (f"| {name} | {set_name} | {model['mouth_opening_r']:.3f} | {model['m_ld']:.2f} / {floor['m_ld']:.2f} "
            f"({ratio('m_ld'):.3f}) | {model['m_ld_posed']:.2f} / {floor['m_ld_posed']:.2f} ({ratio('m_ld_posed'):.3f}) "
            f"| {model['f_ld']:.2f} / {floor['f_ld']:.2f} | {model['silent_opening_diff'] if model['silent_opening_diff'] is not None else float('nan'):.4f} "
            f"| {lm['frames']} |")


def main(roots):
    print("| model | held-out set | mouth-opening r | M-LD model / floor (ratio) | M-LD posed model / floor (ratio) "
          "| F-LD model / floor | silent-opening diff | frames |")
    print("|---|---|---|---|---|---|---|---|")
    for root in roots:
        for set_name in SETS:
            f = Path(root) / set_name / "metrics.json"
            if f.is_file():
                print(row(Path(root).name, set_name, json.loads(f.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
