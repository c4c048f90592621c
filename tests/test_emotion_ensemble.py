"""Emotion classifiers averaged into one model (`EmotionClassifierEnsemble`, stop 32's shipped form): the
average of its members' log-probabilities, saved and loaded like any classifier, refused when its members read
other features; `train/ensemble_emotion.py` builds one; the trainer's `--keep_weights last` keeps the last update."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import voice_like
from safetensors.torch import load_file

from talking_head.models.emotion_classifier import (
    EmotionClassifierEnsemble,
    build_emotion_classifier,
    build_emotion_feature_extractor,
    load_emotion_classifier,
    load_emotion_feature_extractor,
    predict_emotion,
)

SMALL = dict(hidden_sizes=[8, 8, 16, 16], embedding_size=8)
ROOT = Path(__file__).resolve().parents[1]


def save_members(folder: Path, seeds=(0, 1, 2), **feature_kwargs) -> list[Path]:
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_emotion_classifier("cnn-small", **SMALL)
        model.save_pretrained(folder / f"m{seed}")
        build_emotion_feature_extractor(model, **feature_kwargs).save_pretrained(folder / f"m{seed}")
        paths.append(folder / f"m{seed}")
    return paths


def test_ensemble_is_the_members_mean_log_probability_and_round_trips(tmp_path):
    members = save_members(tmp_path)
    ensemble, extractor = EmotionClassifierEnsemble.from_members(members)
    waves = [voice_like(0.7, seed=1), voice_like(1.2, seed=2)]  # one window each
    probs = predict_emotion(ensemble, extractor, waves)
    assert probs.shape == (2, 8) and torch.allclose(probs.sum(-1), torch.ones(2))
    each = [predict_emotion(load_emotion_classifier(m), extractor, waves) for m in members]
    torch.testing.assert_close(probs, torch.softmax(torch.stack([p.log() for p in each]).mean(0), -1))
    assert not torch.allclose(each[0], each[1])  # the members differ, so the average is not any one of them

    ensemble.save_pretrained(tmp_path / "ens")
    extractor.save_pretrained(tmp_path / "ens")
    config = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert config["model_type"] == "emotion-classifier-ensemble" and len(config["members"]) == 3
    assert config["id2label"]["6"] == "sad"
    loaded = load_emotion_classifier(tmp_path / "ens")
    assert isinstance(loaded, EmotionClassifierEnsemble)
    loaded_extractor = load_emotion_feature_extractor(tmp_path / "ens", loaded)
    assert loaded_extractor.to_dict() == build_emotion_feature_extractor(loaded).to_dict() == extractor.to_dict()
    torch.testing.assert_close(predict_emotion(loaded, loaded_extractor, waves), probs)
    silence = predict_emotion(loaded, loaded_extractor, [np.zeros(1600, np.float32)])
    assert torch.isfinite(silence).all() and torch.allclose(silence.sum(-1), torch.ones(1))


def test_ensemble_refuses_members_that_read_other_features(tmp_path):
    members = save_members(tmp_path / "a", seeds=(0,)) + save_members(tmp_path / "b", seeds=(1,), min_frequency=300)
    with pytest.raises(ValueError, match="reads other features"):
        EmotionClassifierEnsemble.from_members(members)
    with pytest.raises(ValueError, match="at least one"):
        EmotionClassifierEnsemble.from_members([])
    with pytest.raises(ValueError, match="not a directory"):
        EmotionClassifierEnsemble.from_members([tmp_path / "missing"])


def test_logit_offsets_shift_the_average_and_round_trip(tmp_path):
    members = save_members(tmp_path, seeds=(0, 1))
    plain, extractor = EmotionClassifierEnsemble.from_members(members)
    offsets = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]  # a large push towards "sad" (index 6)
    shifted, _ = EmotionClassifierEnsemble.from_members(members, logit_offsets=offsets)
    waves = [voice_like(0.9, seed=3), voice_like(1.1, seed=4)]
    before, after = predict_emotion(plain, extractor, waves), predict_emotion(shifted, extractor, waves)
    torch.testing.assert_close(after, torch.softmax(before.log() + torch.tensor(offsets), -1))
    assert (after[:, 6] > before[:, 6]).all() and torch.allclose(after.sum(-1), torch.ones(2))
    shifted.save_pretrained(tmp_path / "ens")
    loaded = load_emotion_classifier(tmp_path / "ens")
    assert loaded.config.logit_offsets == offsets
    torch.testing.assert_close(predict_emotion(loaded, extractor, waves), after)
    for bad in ([1.0, 2.0], [0.0] * 7 + [float("nan")]):
        with pytest.raises(ValueError, match="logit_offsets must be 8 finite numbers"):
            EmotionClassifierEnsemble.from_members(members, logit_offsets=bad)


def test_ensemble_script_saves_a_loadable_average(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ensemble_emotion", ROOT / "train" / "ensemble_emotion.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    members = save_members(tmp_path, seeds=(0, 1))
    script.main([str(m) for m in members] + ["--output_dir", str(tmp_path / "avg")])
    assert "average of 2 classifiers" in capsys.readouterr().out
    loaded = load_emotion_classifier(tmp_path / "avg")
    assert isinstance(loaded, EmotionClassifierEnsemble) and len(loaded.members) == 2
    with pytest.raises(SystemExit):  # one folder is not an average
        script.main([str(members[0]), "--output_dir", str(tmp_path / "one")])
    script.main([str(m) for m in members]
                + ["--output_dir", str(tmp_path / "off"), "--logit_offsets", "[0.5, 0, 0, 0, 0, 0, 0, 0]"])
    assert load_emotion_classifier(tmp_path / "off").config.logit_offsets == [0.5] + [0.0] * 7
    with pytest.raises(SystemExit):  # seven numbers for eight emotions
        script.main([str(m) for m in members]
                    + ["--output_dir", str(tmp_path / "bad"), "--logit_offsets", "[0, 0, 0, 0, 0, 0, 0]"])
    assert not (tmp_path / "bad").exists()


def test_trainer_keeps_the_last_weights_when_asked(tmp_path):
    """--keep_weights last: the saved classifier is the last update's (the final checkpoint's weights), though
    validation speakers are scored; with early stopping it is a parser error."""
    from talking_head.data.synthetic import make_synthetic_emotion_audio
    from talking_head.trainers.emotion import main, parse_args

    data = make_synthetic_emotion_audio(tmp_path / "data", num_speakers=4, utterances_per_emotion=1, seconds=0.5)
    out = tmp_path / "run"
    main(["--data_dir", str(data), "--output_dir", str(out), "--preset", "tiny", "--train_batch_size", "4",
          "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "1", "--report_to", "none",
          "--keep_weights", "last"])
    saved = load_file(out / "emotion_classifier" / "model.safetensors")
    last = load_file(out / "checkpoint-3" / "model.safetensors")
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)
    assert not (out / "best.json").exists()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("val/balanced_accuracy" in row for row in logged) >= 3
    with pytest.raises(SystemExit):
        parse_args(["--data_dir", str(data), "--keep_weights", "last", "--early_stopping_patience", "3"])
