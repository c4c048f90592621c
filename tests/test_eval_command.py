"""`talking-head evaluate` end to end on a tiny synthetic set with a tiny random pipeline."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from talking_head.data.synthetic import make_synthetic_dataset, make_synthetic_emotion_audio
from talking_head.evaluation.cli import add_evaluate_parser
from talking_head.evaluation.runner import evaluate
from talking_head.face import dlib_available
from talking_head.presets import build_pipeline
from talking_head.utils import save_pipeline_atomic

pytestmark = pytest.mark.skipif(not dlib_available(), reason="landmark distances need dlib (the face extra)")

SIZE = 32  # the UNet's mouth box
STORED = 64  # the synthetic clips' face crops: what every method is scored on


def parse(argv):
    parser = argparse.ArgumentParser(prog="talking-head")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def strict_json(path):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    # 2 test clips of 8 frames (one UNet window each), drawn faces at 64x64.
    data = make_synthetic_dataset(root / "data", emotions=("neutral", "happy"), clips_per_emotion=0,
                                  test_clips_per_emotion=1, seconds=0.32, size=64)
    emo = make_synthetic_emotion_audio(root / "emo", num_speakers=2, utterances_per_emotion=1, seconds=0.5,
                                       test_speakers=1)
    # A second corpus with fewer classes, for the cross-corpus scoring.
    cross = make_synthetic_emotion_audio(root / "cross", num_speakers=2, utterances_per_emotion=1, seconds=0.5,
                                         emotions=("neutral", "angry", "sad"), seed=3)
    pipe = build_pipeline("tiny", sample_size=SIZE, seed=0)
    save_pipeline_atomic(pipe, root / "pipe")
    return {"root": root, "data": data, "emo": emo, "cross": cross, "pipe": root / "pipe"}


@pytest.fixture(scope="module")
def report(synth):
    out = synth["root"] / "report"
    args = parse(["evaluate", "--pipeline", str(synth["pipe"]), "--data", str(synth["data"]), "--output", str(out),
                  "--sampler", "ddpm:2", "--t-start", "100,300", "--scheduler", "ddpm:2,dpm:2",
                  "--emotion-data", str(synth["emo"]), "--emotion-cross-corpus", str(synth["cross"]),
                  "--samples", "1", "--quiet"])
    assert args.handler(args) == 0
    return out, strict_json(out / "metrics.json")


def test_metrics_json_has_every_figure(report):
    out, m = report
    assert m["format"] == "talking-head-evaluation"
    assert m["resolution"] == {"psnr_ssim": STORED, "landmarks": 256}
    assert len(m["pipeline"]["sha256"]) == 64 and m["pipeline"]["sample_size"] == SIZE
    assert {"cpu", "torch", "device", "platform"} <= set(m["machine"])
    assert m["config"]["sampler"] == "ddpm:2" and m["config"]["t_start"] == 300
    assert m["command"].startswith("talking-head evaluate ") and "--t-start 100,300" in m["command"]
    data = m["data"]
    assert [c["clip_id"] for c in data["clips"]] == ["synth0_happy_00", "synth0_neutral_00"]
    assert data["frames"] == 16 and data["scored_frames"] == 14  # the reference frame is not scored
    assert [c["emotion_source"] for c in data["clips"]] == ["label", "label"]

    assert set(m["methods"]) == {"static", "warp", "pipeline", "gt_landmarks"}
    for name, res in m["methods"].items():
        s = res["summary"]
        assert s["frames"] == 14 and s["clips"] == 2 and len(res["clips"]) == 2
        assert 0 < s["psnr"] < 100 and -1 <= s["ssim"] <= 1, name
        # dlib misses the small drawn face (64 px upscaled) on a frame or two: counted, not fatal.
        assert 0 <= s["face_detection_rate"] <= 1 and s["gt_face_detection_rate"] >= 0.5
        assert s["sharpness_ratio"] > 0 and "identity_similarity" in s, name
        if name == "static":
            assert s["seconds_per_generated_second"] is None
        elif name == "warp":
            assert s["seconds_per_generated_second"] > 0 and "sampler" not in s
        else:
            assert s["seconds_per_generated_second"] > 0 and s["sampler"] == "ddpm:2"
    floor = m["methods"]["static"]["summary"]
    # The drawn face is found on the (upscaled) reference frame: the floor has real LD figures.
    assert floor["face_detection_rate"] == 1.0
    assert floor["ld_frames"] == round(14 * floor["gt_face_detection_rate"])
    assert 0 <= floor["m_ld"] < 20 and 0 <= floor["f_ld"] < 20
    # An untrained renderer is far below the floor.
    assert m["methods"]["pipeline"]["summary"]["psnr"] < floor["psnr"]

    lm = m["landmark_model"]
    assert lm["frames"] == 14
    for key in ("model", "identity_floor"):
        assert math.isfinite(lm[key]["m_ld"]) and math.isfinite(lm[key]["f_ld"])

    frames = strict_json(out / "frames.json")
    rows = frames["pipeline t_start=300 sampler=ddpm:2"]["synth0_happy_00"]
    assert len(rows) == 7 and {"frame", "psnr", "ssim", "face", "gt_face"} <= set(rows[0])


def test_report_md_has_the_tables(report):
    out, m = report
    text = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Setup", "## Quality (paper Table 1 layout)", "## Landmark model alone",
                    "## Emotion classifier", "## Ablation: SDEdit start t_start", "## Ablation: samplers",
                    "## Per clip", "## Samples", "## Metric definitions"):
        assert heading in text, heading
    assert "| static reference frame (floor) |" in text
    assert "| *paper Table 1: paper* | 24.69 | 0.85 |  |  | 1.22 | 1.33 |" in text
    assert f"PSNR / SSIM at **{STORED}x{STORED}**" in text
    assert "| synth0_neutral_00 | neutral | 7 |" in text  # per-clip rows
    for f in m["files"]:
        assert (out / f).is_file(), f


def test_sweeps_write_tables_and_plots(report):
    out, m = report
    t_rows = m["sweeps"]["t_start"]["rows"]
    assert [r["t_start"] for r in t_rows] == [100, 300]
    # t_start 300 with the method rows' sampler IS the pipeline row: reused, not recomputed.
    assert t_rows[1]["run"] == m["methods"]["pipeline"]["run"]
    assert t_rows[1]["psnr"] == m["methods"]["pipeline"]["summary"]["psnr"]
    assert t_rows[0]["psnr"] != t_rows[1]["psnr"]
    s_rows = m["sweeps"]["scheduler"]["rows"]
    assert [(r["sampler"], r["steps"]) for r in s_rows] == [("ddpm", 2), ("dpm", 2)]
    assert all(r["seconds_per_generated_second"] > 0 for r in s_rows)
    for png in ("t_start_sweep.png", "scheduler_sweep.png", "emotion_confusion.png"):
        with PIL.Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_emotion_classifier_scores(report):
    out, m = report
    e = m["emotion_classifier"]
    assert e["n"] == 8 and e["speakers"] == ["02"]  # the held-out speaker, one utterance per class
    assert 0 <= e["accuracy"] <= 1 and np.array(e["confusion"]).sum() == 8
    assert set(e["per_class_recall"]) == set(e["labels"]) and e["support"]["neutral"] == 1
    # Cross-corpus: all of the other corpus (both speakers), predictions among its three classes only.
    x = e["cross_corpus"]
    assert x["n"] == 6 and x["split"] == "all" and x["classes"] == ["neutral", "angry", "sad"]
    assert {item["predicted"] for item in x["items"]} <= {"neutral", "angry", "sad"}
    text = (out / "report.md").read_text()
    assert "### Cross-corpus" in text and (out / "emotion_confusion_cross_corpus.png").is_file()


def test_sample_videos(report):
    out, m = report
    for method in ("static", "pipeline", "gt_landmarks"):
        clip = m["methods"][method]["clips"][0]
        assert clip["samples"] == [f"samples/{method}/synth0_happy_00.mp4", f"samples/{method}/synth0_happy_00.jpg"]
        with PIL.Image.open(out / clip["samples"][1]) as im:
            assert im.size == (768, 256 * 3)  # generated | ground truth | landmarks, three frames
        assert (out / clip["samples"][0]).stat().st_size > 1000
    assert "samples" not in m["methods"]["pipeline"]["clips"][1] or not m["methods"]["pipeline"]["clips"][1]["samples"]


def test_static_floor_alone_needs_no_pipeline_and_matches(synth, report):
    _, full = report
    out = synth["root"] / "floor"
    args = parse(["evaluate", "--data", str(synth["data"]), "--output", str(out), "--methods", "static",
                  "--resolution", str(STORED), "--samples", "0", "--quiet"])
    assert args.handler(args) == 0
    m = strict_json(out / "metrics.json")
    assert m["pipeline"] is None and m["landmark_model"] is None
    a, b = m["methods"]["static"]["summary"], full["methods"]["static"]["summary"]
    for key in ("psnr", "ssim", "box_psnr", "box_ssim", "m_ld", "f_ld", "face_detection_rate"):
        assert a[key] == b[key], key


def test_bad_requests_fail_before_any_work(synth, tmp_path):
    with pytest.raises(ValueError, match="--pipeline is required"):
        evaluate(data=str(synth["data"]), output=str(tmp_path / "a"), methods=("static", "pipeline"))
    with pytest.raises(ValueError, match="unknown sampler"):
        evaluate(data=str(synth["data"]), pipeline=str(synth["pipe"]), output=str(tmp_path / "b"), sampler="euler")
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(data=str(synth["data"]), output=str(tmp_path / "c"), methods=("wav2lip",))
    with pytest.raises(ValueError, match="t_start"):
        evaluate(data=str(synth["data"]), pipeline=str(synth["pipe"]), output=str(tmp_path / "d"),
                 t_start_sweep=(0,))
    with pytest.raises(FileNotFoundError):
        evaluate(data=str(tmp_path / "missing"), output=str(tmp_path / "e"), methods=("static",))
    assert not (tmp_path / "b").exists()


def test_dubbing_protocol_scores_the_clip_as_its_own_identity(synth):
    out = synth["root"] / "dubbing"
    args = parse(["evaluate", "--pipeline", str(synth["pipe"]), "--data", str(synth["data"]), "--output", str(out),
                  "--protocol", "dubbing", "--sampler", "dpm:1", "--samples", "1", "--quiet"])
    assert args.handler(args) == 0
    m = strict_json(out / "metrics.json")
    assert m["config"]["protocol"] == "dubbing"
    static = m["methods"]["static"]
    assert static["label"].startswith("frozen mouth")
    # The floor keeps every pixel outside the mouth box: far closer to the ground truth than a still frame.
    photo_floor = strict_json(synth["root"] / "report" / "metrics.json")["methods"]["static"]["summary"]
    assert static["summary"]["psnr"] > photo_floor["psnr"] + 3
    for method in ("pipeline", "gt_landmarks"):
        summary = m["methods"][method]["summary"]
        assert summary["frames"] == static["summary"]["frames"] and math.isfinite(summary["box_psnr"])
    assert "**dubbing**" in (out / "report.md").read_text()


@pytest.mark.parametrize("protocol", ["photo", "dubbing"])
def test_the_warp_row_needs_no_pipeline(synth, protocol):
    """static,warp run without a model under both protocols; the warp (driven by the ground-truth landmarks)
    moves the mouth the floor keeps still, and the report shows it with the identity and sharpness measures."""
    out = synth["root"] / f"warp-{protocol}"
    args = parse(["evaluate", "--data", str(synth["data"]), "--output", str(out), "--methods", "static,warp",
                  "--protocol", protocol, "--samples", "1", "--quiet"])
    assert args.handler(args) == 0
    m = strict_json(out / "metrics.json")
    assert m["pipeline"] is None and list(m["methods"]) == ["static", "warp"]
    warp, floor = m["methods"]["warp"], m["methods"]["static"]
    assert warp["label"] == "warp: the reference's lower face warped onto the ground-truth landmarks (no learning)"
    s = warp["summary"]
    assert s["frames"] == floor["summary"]["frames"] == 14 and math.isfinite(s["psnr"]) and s["box_psnr"] > 10
    assert s["m_ld"] is None or s["m_ld"] < 20
    assert 0 < s["sharpness_ratio"] < 10 and s["seconds_per_generated_second"] > 0
    assert warp["clips"][0]["samples"] == ["samples/warp/synth0_happy_00.mp4", "samples/warp/synth0_happy_00.jpg"]
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Identity and mouth sharpness" in text and f"| {warp['label']} |" in text
    assert "*ground truth (reference)*" in text
