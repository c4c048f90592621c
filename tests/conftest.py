from __future__ import annotations

import os
from pathlib import Path

# The tests' tensors are tiny: one thread per process is as fast, and it avoids OpenMP threads
# spinning against each other when test subprocesses (CLI runs, 2-process training) or other jobs
# share the cores (measured: a tiny UNet forward 0.12 s with one thread, 1.15 s with two under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SPEECH = REPO / "assets" / "speech_demo.wav"


def synthetic_face_landmarks(size: int) -> np.ndarray:
    """A plausible iBUG-68 layout (jaw, brows, nose, eyes, mouth) in pixels of a size×size frame."""
    pts = []
    for i in range(17):  # jaw: a U from ear to ear
        a = np.pi * (0.05 + 0.9 * i / 16)
        pts.append((0.5 - 0.32 * np.cos(a), 0.45 + 0.38 * np.sin(a)))
    for x0 in (0.22, 0.58):  # brows, left then right
        for i in range(5):
            pts.append((x0 + 0.05 * i, 0.32))
    for i in range(4):  # nose bridge
        pts.append((0.5, 0.38 + 0.05 * i))
    for i in range(5):  # nostrils
        pts.append((0.44 + 0.03 * i, 0.6))
    for cx in (0.36, 0.64):  # eyes, 6 each
        for a in np.linspace(0, 2 * np.pi, 6, endpoint=False):
            pts.append((cx + 0.05 * np.cos(a), 0.42 + 0.02 * np.sin(a)))
    for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):  # outer lip
        pts.append((0.5 + 0.1 * np.cos(a), 0.72 + 0.04 * np.sin(a)))
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):  # inner lip
        pts.append((0.5 + 0.06 * np.cos(a), 0.72 + 0.015 * np.sin(a)))
    out = np.asarray(pts, dtype=np.float32)
    assert out.shape == (68, 2)
    return out * size


def voice_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A harmonic 'voice' with a syllable-rate loudness envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None)
    return (0.3 * tone * envelope + 0.005 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture
def face_image():
    """A 96×96 RGB image with its synthetic landmarks in pixels."""
    rng = np.random.default_rng(1)
    image = (rng.random((96, 96, 3)) * 60 + 100).astype(np.uint8)
    return image, synthetic_face_landmarks(96)


@pytest.fixture(scope="module")
def tiny_dpm_pipe():
    """A random tiny pipeline (32² mouth box, no classifier) with DPM-Solver, for photo and dubbing tests."""
    from talking_head.presets import build_pipeline
    from talking_head.schedulers import scheduler_from_name

    p = build_pipeline("tiny", sample_size=32, seed=0, with_emotion_classifier=False)
    p.scheduler = scheduler_from_name("dpm", p.scheduler)
    p.set_progress_bar_config(disable=True)
    return p


# A wav2vec 2.0 small enough to build in milliseconds (the pretrained-encoder code paths' tests).
TINY_WAV2VEC2 = dict(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 8, 4),
    conv_stride=(5, 4, 4),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2,
)
