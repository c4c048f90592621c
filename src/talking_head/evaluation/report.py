"""metrics.json, report.md and the plots of an evaluation run."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from talking_head.constants import EMOTIONS
from talking_head.utils import make_public

# DESIGN.md section 5: the paper's Table 1 (MEAD M030, their protocol) and Table 2 (t_start sweep).
PAPER_TABLE1 = [
    {"method": "MEAD baseline", "psnr": 23.88, "ssim": 0.53, "m_ld": 3.23, "f_ld": 3.35},
    {"method": "MakeItTalk", "psnr": 26.78, "ssim": 0.56, "m_ld": 3.23, "f_ld": 3.65},
    {"method": "Wav2Lip", "psnr": 27.69, "ssim": 0.59, "m_ld": 2.19, "f_ld": 2.33},
    {"method": "EVP", "psnr": 27.63, "ssim": 0.71, "m_ld": 1.38, "f_ld": 2.88},
    {"method": "paper", "psnr": 24.69, "ssim": 0.85, "m_ld": 1.22, "f_ld": 1.33},
]
PAPER_TABLE2 = {
    "t_start": [100, 200, 300, 400, 500, 1000],
    "psnr": [19.27, 21.13, 24.69, 20.26, 17.12, 12.62],
    "ssim": [0.728, 0.802, 0.854, 0.817, 0.748, 0.061],
}

DEFINITIONS = """\
- **PSNR** (dB, higher is better): `skimage.metrics.peak_signal_noise_ratio(gt, gen, data_range=255)` per
  frame on uint8 RGB frames of the face crop at the scoring resolution (the stored 256x256 crop unless
  `--resolution` says otherwise), averaged over all scored frames of all clips. Frames of another size are
  resized to it with PIL's bilinear filter. **box PSNR / SSIM**: the same inside the clip's mouth box only
  (`talking_head.mouth_box.MouthBox` around the lower face of the reference and every ground-truth frame). An identical frame (PSNR = +inf) counts as the PSNR of a one-step error in
  one value (101.1 dB at 256x256); `psnr_identical_frames` says how many there were.
- **SSIM** (higher is better): `skimage.metrics.structural_similarity(gt, gen, channel_axis=-1,
  data_range=255)` with scikit-image's defaults (7x7 uniform window, sample covariance), i.e. the mean SSIM
  of the R, G and B channels, averaged over frames like PSNR (the settings of the public EAT/MEAD evaluator).
- **M-LD / F-LD** (pixels of a 256x256 frame, lower is better): dlib's 68 landmarks detected on the
  generated frame and on the ground-truth frame, both resized to 256x256 (bicubic). M-LD: the 20 mouth
  points (48-67) of each frame centred on their own mean; F-LD: all 68 points centred on their mean; then the
  mean Euclidean distance between corresponding points. Averaged over the frames of a clip where a face was
  found on both frames, then over clips (the EAT/MEAD evaluator's `calibrate_lmk` + `ld`). Frames where dlib
  finds no face on the generated frame are left out of LD and counted in *face found*.
- **identity similarity** (higher is better, the ground truth's own is the reference): cosine similarity of
  dlib's 128-d face-recognition embeddings (`dlib_face_recognition_resnet_model_v1.dat` of
  face-recognition-models, on dlib's 68 landmarks) of the output frame and of the identity frame (the clip's
  reference frame), both at the scoring resolution, on every 5th scored frame where dlib finds a face, averaged.
  Two different people still score about 0.8; the same photo mirrored about 0.99.
- **mouth sharpness** (1 = as sharp as the ground truth): the variance of the 4-neighbour Laplacian of the grey
  level inside the mouth box, output over ground truth, per scored frame, averaged.
- **Landmark model LD**: the same distances between the landmark model's predicted landmarks and the
  dataset's landmarks (dlib on the source video, mapped into the crop), both in pixels of a 256x256 crop;
  no detection on generated frames is involved.
- The **reference frame** is each clip's first frame with a face, as stored in the dataset (the face crop,
  at the scoring resolution); it is not scored (photo protocol, DESIGN 7.5: the identity is the test clip's
  first frame and the head holds its pose). Every other frame of the clip (or of its first
  `--max-seconds`) is.
- **s / generated s**: wall-clock seconds of the pipeline call (landmark model + renderer, scoring time
  excluded) per second of generated video, on the machine below.
"""


# ---------------------------------------------------------------------- json


def _plain(x):
    """JSON-safe: numpy scalars/arrays to Python, +-inf and NaN to the strings "inf", "-inf", "nan"."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path, obj) -> None:
    """Write `obj` as strict JSON (no NaN/Infinity literals) through a temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_plain(obj), f, indent=1, allow_nan=False)
            f.write("\n")
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- formatting


def _f(v, digits=2, pct=False):
    if v is None or (isinstance(v, str)):
        return "—" if v is None else v
    if pct:
        return f"{100 * v:.0f} %"
    return f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _quality_cells(s: dict) -> list[str]:
    return [_f(s.get("psnr")), _f(s.get("ssim"), 3), _f(s.get("box_psnr")), _f(s.get("box_ssim"), 3),
            _f(s.get("m_ld")), _f(s.get("f_ld")), _f(s.get("face_detection_rate"), pct=True)]


# ---------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_t_start(rows: list[dict], path: Path, title: str) -> None:
    plt = _plt()
    ts = [r["t_start"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, name in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        ax.plot(ts, [r.get(key) if r.get(key) is not None else np.nan for r in rows], "o-", label="this run")
        ax.plot(PAPER_TABLE2["t_start"], PAPER_TABLE2[key], "s--", color="grey", label="paper Table 2")
        ax.set_xlabel("t_start")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for key, name in (("m_ld", "M-LD"), ("f_ld", "F-LD")):
        ax.plot(ts, [r.get(key) if r.get(key) is not None else np.nan for r in rows], "o-", label=name)
    if all(r.get("m_ld") is None for r in rows):
        ax.text(0.5, 0.5, "no face found on the\ngenerated frames", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    ax.set_xlabel("t_start")
    ax.set_ylabel("landmark distance (px @256)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_scheduler(rows: list[dict], path: Path, title: str) -> None:
    plt = _plt()
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    speed = [r.get("seconds_per_generated_second") or np.nan for r in rows]
    for ax, key, name in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        vals = [r.get(key) if r.get(key) is not None else np.nan for r in rows]
        ax.plot(speed, vals, "o")
        for x, y, r in zip(speed, vals, rows):
            ax.annotate(f"{r['sampler']}:{r['steps']}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("seconds per generated second (log)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _emotion_lines(emo: dict, out: Path, files: list, png: str, what: str) -> list[str]:
    """Accuracy line, per-class recall table and confusion matrix (written to `out / png`) of one scoring."""
    plot_confusion(emo, out / png, f"emotion classifier, {emo['n']} utterances, accuracy {emo['accuracy']:.3f}")
    files.append(png)
    return [f"{what}: **accuracy {emo['accuracy']:.3f}** on {emo['n']} utterances, balanced accuracy "
            f"{emo['balanced_accuracy']:.3f}, chance (largest class) {emo['chance']:.3f}. "
            f"Classifier: {emo.get('classifier', 'as above')}.", "",
            _table(["class", "recall", "items"],
                   [[e, _f(emo["per_class_recall"][e], 3), emo["support"][e]] for e in EMOTIONS]), "",
            f"![confusion matrix]({png})", ""]


def plot_confusion(result: dict, path: Path, title: str) -> None:
    plt = _plt()
    cm = np.asarray(result["confusion"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.2, 5.8), layout="constrained")
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), [f"{e} ({int(n)})" for e, n in zip(EMOTIONS, rows[:, 0])])
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (items)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall (row-normalised)")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------- verdict
VERDICT_METRICS = (("psnr", "PSNR", True, 2), ("ssim", "SSIM", True, 3), ("m_ld", "M-LD", False, 2),
                   ("f_ld", "F-LD", False, 2))


def verdict(m: dict, method: str = "pipeline", floor: str = "static") -> dict | None:
    """How `method` compares with the floor (the still photo under the photo protocol) on PSNR, SSIM, M-LD and
    F-LD: {"line": "beats the still photo on 3/4 metrics; misses M-LD (2.31 vs 2.18)", "beats": [...],
    "misses": [...]}; None without both rows."""
    methods = m.get("methods", {})
    if method not in methods or floor not in methods:
        return None
    ours, base = methods[method]["summary"], methods[floor]["summary"]
    beats, misses = [], []
    for key, name, higher, digits in VERDICT_METRICS:
        a, b = ours.get(key), base.get(key)
        if a is None or b is None:
            continue
        (beats if (a > b if higher else a < b) else misses).append(
            {"metric": name, "value": a, "floor": b, "text": f"{name} ({a:.{digits}f} vs {b:.{digits}f})"})
    if not beats and not misses:
        return None
    floor_name = "the still photo" if m.get("config", {}).get("protocol", "photo") == "photo" else "the frozen mouth"
    n = len(beats) + len(misses)
    line = f"beats {floor_name} on {len(beats)}/{n} metrics"
    if misses:
        line += "; misses " + ", ".join(x["text"] for x in misses)
    return {"line": line, "beats": [x["metric"] for x in beats], "misses": [x["metric"] for x in misses]}


# ---------------------------------------------------------------------- report


def write_report(out: Path, m: dict) -> list[str]:
    """Write report.md and the plots into `out`; returns the files written (relative to `out`)."""
    out = Path(out)
    files = ["metrics.json", "frames.json", "report.md"]
    md: list[str] = ["# Evaluation report", ""]
    if m.get("note"):
        md += [f"> **{m['note']}**", ""]
    if m.get("command"):
        md += ["```", m["command"], "```", ""]
    md += _setup_lines(m) + _quality_lines(m) + _face_measure_lines(m) + _landmark_model_lines(m)
    md += _classifier_and_expression_lines(m, out, files) + _sweep_lines(m, out, files)
    md += _per_clip_lines(m) + _sample_lines(m, out, files)
    if m.get("warnings"):
        md += ["## Warnings", ""] + [f"- {w}" for w in m["warnings"]] + [""]
    md += ["## Metric definitions", "", DEFINITIONS]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return files


def _setup_lines(m: dict) -> list[str]:
    """The set-up table: pipeline, resolution, protocol, data, sampling, machine."""
    size = m["resolution"]["psnr_ssim"]
    ld_size = m["resolution"]["landmarks"]
    pipe = m.get("pipeline")
    cfg = m["config"]
    md: list[str] = []
    data = m["data"]
    setup = [
        ["pipeline", f"`{pipe['path']}` (sha256 `{(pipe['sha256'] or '')[:16]}`, UNet "
                     f"{pipe['unet_parameters'] / 1e6:.2f} M parameters)" if pipe else "none (rows without a model only)"],
        ["resolution", f"PSNR / SSIM at **{size}x{size}**; LD at {ld_size}x{ld_size}" if ld_size
         else f"PSNR / SSIM at **{size}x{size}**; LD not computed"],
        ["protocol", {"dubbing": "**dubbing**: the test clip itself is the identity video, its lower face "
                                 "regenerated from its own audio (DESIGN 7.5)"}.get(
            cfg.get("protocol", "photo"), "**photo**: each clip's first frame is the identity, held still "
                                          "(DESIGN 7.5)")],
        ["data", f"`{data['path']}` split `{data['split']}`: {len(data['clips'])} clips, {data['frames']} frames "
                 f"({sum(c['seconds'] for c in data['clips']):.1f} s), {data['scored_frames']} scored"],
        ["sampling", f"{cfg['sampler']} from t_start {cfg['t_start']}, seed {cfg['seed']}, "
                     f"guidance {cfg['guidance_scale']}, {cfg['dtype']}" if pipe else "—"],
        ["machine", f"{m['machine'].get('gpu') or m['machine'].get('cpu')} ({m['machine']['device']}, "
                    f"{m['machine']['cpu_count']} CPUs, torch {m['machine']['torch']} with "
                    f"{m['machine']['torch_threads']} threads"
                    + (f", load average {m['machine']['load_average'][0]:.1f} at the start"
                       if m["machine"].get("load_average") else "") + ")"],
        ["created", f"{m['created']}, {m.get('seconds', 0):.0f} s"],
    ]  # fmt: skip
    if data["skipped"]:
        setup.append(["skipped clips", ", ".join(f"{s['clip_id']} ({s['reason']})" for s in data["skipped"])])
    md += ["## Setup", "", _table(["", ""], setup), ""]
    return md


def _quality_lines(m: dict) -> list[str]:
    """The paper's Table 1 layout: each method's summary next to the paper's rows, and the verdict."""
    size = m["resolution"]["psnr_ssim"]
    md: list[str] = []
    if m["methods"]:
        md += ["## Quality (paper Table 1 layout)", ""]
        rows = []
        for name, res in m["methods"].items():
            s = res["summary"]
            rows.append([res["label"]] + _quality_cells(s) + [_f(s.get("seconds_per_generated_second"), 1)])
        for p in PAPER_TABLE1:
            rows.append([f"*paper Table 1: {p['method']}*", _f(p["psnr"]), _f(p["ssim"], 2), "", "", _f(p["m_ld"]),
                         _f(p["f_ld"]), "", ""])
        md += [_table(["method", "PSNR ↑", "SSIM ↑", "box PSNR ↑", "box SSIM ↑", "M-LD ↓", "F-LD ↓", "face found",
                       "s / generated s"], rows), ""]
        if m.get("verdict"):
            md += [f"**Verdict: the pipeline {m['verdict']['line']}** (PSNR, SSIM higher; M-LD, F-LD lower).", ""]
        md += [f"Our rows: this dataset and split at {size}x{size}. The paper's rows are MEAD M030 under its own "
               "protocol (resolution, crop, test clips), so they frame the scale; they are not the same "
               "experiment. *box*: PSNR / SSIM inside the clip's mouth box only (the square the renderer "
               "regenerates, around the lower face of the reference and ground-truth frames), the stricter row. "
               "*face found*: share of scored generated frames on which dlib found a face (LD uses only those).", ""]
    return md


def _face_measure_lines(m: dict) -> list[str]:
    """Identity similarity and mouth sharpness of each method, with the ground truth's as the reference row."""
    methods = {name: res for name, res in m["methods"].items() if "sharpness_ratio" in res["summary"]}
    if not methods:
        return []
    rows = [[res["label"], _f(res["summary"].get("identity_similarity"), 3),
             res["summary"].get("identity_frames", 0), _f(res["summary"].get("sharpness_ratio"), 3)]
            for res in methods.values()]
    truth = next((res["summary"].get("gt_identity_similarity") for res in methods.values()
                  if res["summary"].get("gt_identity_similarity") is not None), None)
    rows.append(["*ground truth (reference)*", _f(truth, 3), "", "1.000"])
    return ["## Identity and mouth sharpness", "",
            _table(["method", "identity similarity ↑", "frames", "mouth sharpness (output / GT)"], rows), "",
            "*identity similarity*: cosine similarity of dlib's face-recognition embeddings, output frame vs the "
            "identity (reference) frame, on every 5th scored frame with a face; the ground truth's own frames "
            "score the reference row. *mouth sharpness*: variance of the Laplacian inside the mouth box, output "
            "over ground truth, per frame, averaged (below 1: blurrier than the real mouth).", ""]


def _landmark_model_lines(m: dict) -> list[str]:
    """The landmark model alone against the identity-repeated floor (issue 12's metrics)."""
    md: list[str] = []
    lm = m.get("landmark_model")
    if lm:
        def lm_row(label, r):
            return [label, _f(r["m_ld"]), _f(r.get("m_ld_posed")), _f(r["f_ld"]), _f(r.get("mouth_opening_r"), 3),
                    _f(r.get("silent_opening"), 4), _f(r.get("silent_opening_gt"), 4),
                    _f(r.get("silent_opening_diff"), 4)]

        model, floor = lm["model"], lm["identity_floor"]
        md += ["## Landmark model alone", "",
               _table(["landmarks", "M-LD ↓", "M-LD posed ↓", "F-LD ↓", "mouth-opening r ↑", "silent opening",
                       "GT silent opening", "silent diff (abs) ↓"], [
                   lm_row("landmark model (predicted from audio)", model),
                   lm_row("identity landmarks repeated (floor)", floor),
               ]), "",
               f"Against the dataset's landmarks on {lm['frames']} scored frames, pixels of a 256x256 crop "
               f"(M-LD / F-LD). *M-LD posed*: against the ground truth moved into the identity frame's head "
               f"pose (a similarity transform fitted per frame on the jaw ends and the nose, which move with the "
               f"head, not with speech). Mouth opening: inner-lip distance (points 62-66) over the face width "
               f"(points 0-16). *mouth-opening r*: Pearson r of the predicted and ground-truth opening over "
               f"time, per clip, averaged over {model.get('r_clips', 0)} clips (a constant prediction scores 0). "
               f"*silent opening*: mean opening over the {model.get('silent_frames', 0)} silent frames (audio "
               f"RMS of the frame and the 2 on each side > 25 dB below the clip's loudest frame, or < -60 dBFS), "
               f"next to the ground truth's and their absolute difference (goal: <= 0.02).", ""]
        if "m_ld" in model and model["m_ld"] is not None and floor.get("m_ld"):
            md += [f"M-LD ratio model / floor: {model['m_ld'] / floor['m_ld']:.3f}"
                   + (f"; posed: {model['m_ld_posed'] / floor['m_ld_posed']:.3f}" if model.get("m_ld_posed")
                      and floor.get("m_ld_posed") else "") + ".", ""]
    return md


def _classifier_and_expression_lines(m: dict, out: Path, files: list) -> list[str]:
    """The emotion classifier (test speakers, then cross-corpus; confusion matrices as PNGs) and the
    expression score of generated landmarks."""
    md: list[str] = []
    emo = m.get("emotion_classifier")
    if emo:
        md += ["## Emotion classifier", ""]
        if "skipped" in emo:
            md += [f"Not evaluated: {emo['skipped']}.", ""]
        else:
            md += _emotion_lines(emo, out, files, "emotion_confusion.png",
                                 f"`{emo['data']}` split `{emo['split']}` (speakers {', '.join(map(str, emo['speakers']))})")
            x = emo.get("cross_corpus")
            if x:
                which = "all of it" if x.get("split") in (None, "all") else f"its `{x['split']}` split"
                md += ["### Cross-corpus", "",
                       f"The same classifier on another corpus' speakers it never trained on, {which}; it chooses "
                       f"among that corpus's {len(x['classes'])} classes ({', '.join(x['classes'])}).", ""]
                md += _emotion_lines(x, out, files, "emotion_confusion_cross_corpus.png",
                                     f"`{x['data']}` ({len(x['speakers'])} speakers)")

    calm = m.get("calm_speech")
    if calm:
        from talking_head.evaluation.calm_speech import report_lines as calm_speech_lines

        md += [f"Calm-speech check not run: {calm['skipped']}.", ""] if "skipped" in calm else calm_speech_lines(calm)

    if m.get("expression"):
        from talking_head.evaluation.expression import report_lines

        md += report_lines(m["expression"])
        if m["expression"].get("contact_sheet"):
            files.append(m["expression"]["contact_sheet"]["file"])
    return md


def _sweep_lines(m: dict, out: Path, files: list) -> list[str]:
    """The t_start (paper Table 2 layout) and sampler ablations, each with its plot."""
    size = m["resolution"]["psnr_ssim"]
    md: list[str] = []
    sweeps = m.get("sweeps", {})
    if "t_start" in sweeps:
        sw = sweeps["t_start"]
        png = "t_start_sweep.png"
        plot_t_start(sw["rows"], out / png, f"t_start sweep ({sw['sampler']}), {size}x{size}")
        files.append(png)
        paper = dict(zip(PAPER_TABLE2["t_start"], zip(PAPER_TABLE2["psnr"], PAPER_TABLE2["ssim"])))
        rows = []
        for r in sw["rows"]:
            pp = paper.get(r["t_start"], (None, None))
            rows.append([r["t_start"]] + _quality_cells(r) + [_f(pp[0]), _f(pp[1], 3)])
        how = " (ddpm without a step count: one step per timestep, t_start steps)" if sw["sampler"] == "ddpm" else ""
        md += ["## Ablation: SDEdit start t_start (paper Table 2 layout)", "",
               f"The `pipeline` method with sampler `{sw['sampler']}`{how}; a sampler with more steps than "
               "t_start runs one step per timestep.", "",
               _table(["t_start", "PSNR ↑", "SSIM ↑", "box PSNR ↑", "box SSIM ↑", "M-LD ↓", "F-LD ↓", "face found",
                       "paper PSNR",
                       "paper SSIM"], rows), "", f"![t_start sweep]({png})", ""]
    if "scheduler" in sweeps:
        sw = sweeps["scheduler"]
        png = "scheduler_sweep.png"
        plot_scheduler(sw["rows"], out / png, f"samplers from t_start {sw['t_start']}, {size}x{size}")
        files.append(png)
        rows = [[r["sampler"], r["steps"]] + _quality_cells(r) + [_f(r.get("seconds_per_generated_second"), 2)]
                for r in sw["rows"]]
        md += ["## Ablation: samplers", "",
               f"The `pipeline` method from t_start {sw['t_start']}; speed on the machine above (wall clock: "
               "other load on the machine shows in it). DDIM takes no explicit timesteps: its schedule keeps "
               "the steps of a full-range schedule that fall below t_start, so its first step can be below "
               "t_start - 1 (talking_head.schedulers.scheduling_sdedit).", "",
               _table(["sampler", "steps", "PSNR ↑", "SSIM ↑", "box PSNR ↑", "box SSIM ↑", "M-LD ↓", "F-LD ↓",
                       "face found", "s / generated s"], rows), "", f"![sampler sweep]({png})", ""]
    return md


def _per_clip_lines(m: dict) -> list[str]:
    """One table per method, one row per clip."""
    md: list[str] = []
    if m["methods"]:
        md += ["## Per clip", ""]
        for name, res in m["methods"].items():
            no_emotion = name in ("static", "warp")  # rows that draw no emotion
            rows = [[c["clip_id"], "—" if no_emotion else c["emotion"], c["frames"]] + _quality_cells(c)
                    + [_f(c.get("seconds_per_generated_second"), 1)] for c in res["clips"]]
            md += [f"**{res['label']}**", "",
                   _table(["clip", "emotion", "frames", "PSNR", "SSIM", "box PSNR", "box SSIM", "M-LD", "F-LD",
                           "face found", "s / generated s"], rows), ""]
    return md


def _sample_lines(m: dict, out: Path, files: list) -> list[str]:
    """Links to the sample videos and strips, and the contact sheet."""
    md: list[str] = []
    samples = [(name, c) for name, res in m["methods"].items() for c in res["clips"] if c.get("samples")]
    if samples:
        md += ["## Samples", "",
               "Each panel: generated (upscaled to 256) | ground truth | landmarks on the darkened ground truth "
               "(green: dataset, red: the landmarks that drove the rendering, yellow: dlib on the generated "
               "frame). Videos have the clip's audio.", ""]
        for name, c in samples:
            vids = [f for f in c["samples"] if f.endswith(".mp4")]
            imgs = [f for f in c["samples"] if f.endswith(".jpg")]
            md += [f"- {m['methods'][name]['label']}, `{c['clip_id']}`: " + ", ".join(f"[{v}]({v})" for v in vids)]
            md += [f"\n  ![{name} {c['clip_id']}]({i})" for i in imgs]
            files += c["samples"]
        md += [""]
        sheet = write_contact_sheet(out, samples)
        if sheet:
            files.append(sheet)
            md += ["**Contact sheet**: one row per sampled frame (3 per clip); columns: "
                   + " | ".join(m["methods"][n]["label"] for n in dict.fromkeys(n for n, _ in samples))
                   + " | ground truth.", "", f"![contact sheet]({sheet})", ""]
    return md


def write_contact_sheet(out: Path, samples: list) -> str | None:
    """contact_sheet.jpg from the sample strips: per sampled frame, each method's generated frame side by side,
    then the ground truth (the strips' first and second panels); None when there is nothing to show."""
    import PIL.Image

    by_clip: dict = {}
    for name, c in samples:
        imgs = [f for f in c["samples"] if f.endswith(".jpg")]
        if imgs:
            by_clip.setdefault(c["clip_id"], []).append(np.asarray(PIL.Image.open(out / imgs[0]).convert("RGB")))
    rows = []
    for strips in by_clip.values():
        side = strips[0].shape[1] // 3  # each strip row: generated | ground truth | landmarks
        if any(s.shape != strips[0].shape for s in strips):
            continue
        for top in range(0, strips[0].shape[0], side):
            cells = [s[top: top + side, :side] for s in strips] + [strips[0][top: top + side, side: 2 * side]]
            rows.append(np.concatenate(cells, axis=1))
    if not rows:
        return None
    PIL.Image.fromarray(np.concatenate(rows, axis=0)).save(out / "contact_sheet.jpg", quality=90)
    return "contact_sheet.jpg"


def rewrite_report(out) -> list[str]:
    """Re-write report.md and the plots of a finished run from its metrics.json (no recomputation)."""
    out = Path(out)
    with open(out / "metrics.json", encoding="utf-8") as f:
        m = json.load(f)
    return write_report(out, m)


if __name__ == "__main__":  # python -m talking_head.evaluation.report REPORT_DIR
    import sys

    for folder in sys.argv[1:]:
        print("\n".join(rewrite_report(folder)))
