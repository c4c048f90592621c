"""Streaming: the landmark model runs chunk by chunk ahead of the renderer (issue 15), and the mouth box does
not depend on what the speech does later."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_face_landmarks, voice_like
from talking_head.constants import NULL_EMOTION
from talking_head.identity import Photo, StillIdentity
from talking_head.landmark_stream import LandmarkStream
from talking_head.models.mask_noise import LOWER_FACE_POINTS
from talking_head.mouth_box import BoxTrack, MouthBox
from talking_head.presets import build_pipeline


def test_stream_produces_chunks_on_demand_and_slices_across_them():
    data = torch.arange(2 * 10 * 68 * 2, dtype=torch.float32).view(2, 10, 68, 2)
    made = []

    def chunks():
        for s in (0, 3, 7):
            e = {0: 3, 3: 7, 7: 10}[s]
            made.append(s)
            yield data[:, s:e]

    stream = LandmarkStream(10, chunks())
    assert stream.available == 0 and made == []
    torch.testing.assert_close(stream.frames(0, 2), data[:, 0:2])
    assert made == [0]  # only the first chunk was needed
    torch.testing.assert_close(stream.frames(2, 8), data[:, 2:8])  # spans three chunks
    assert made == [0, 3, 7]
    torch.testing.assert_close(stream.all(), data)
    with pytest.raises(ValueError, match="outside"):
        stream.frames(5, 11)


def test_stream_that_ends_early_says_so():
    stream = LandmarkStream(10, iter([torch.zeros(1, 4, 68, 2)]))
    with pytest.raises(RuntimeError, match="ended at frame 4 of 10"):
        stream.frames(0, 6)


def test_given_landmarks_are_one_known_chunk():
    points = torch.rand(1, 5, 68, 2)
    stream = LandmarkStream.given(points)
    assert stream.known is points and stream.available == 5
    torch.testing.assert_close(stream.frames(1, 4), points[:, 1:4])


def _still(size=120):
    lmk = synthetic_face_landmarks(size)
    image = np.full((size, size, 3), 128, np.uint8)
    from talking_head.face import face_crop_box

    return StillIdentity(Photo(image=image, landmarks=lmk, face_box=tuple(face_crop_box(lmk))))


def test_box_without_points_is_placed_on_the_reference_alone():
    source = _still()
    track = BoxTrack(source, None, num_frames=40)
    ref = source.landmarks_at(0)
    # The same box as from the reference's landmarks, whatever the later frames' landmarks are.
    opened = torch.from_numpy(np.repeat(ref[None], 40, 0)).float()
    opened[:, 48:68, 1] += 6.0  # a wide-open mouth later in the speech
    assert track.box(0) == MouthBox.from_landmarks(ref[None])
    local = track.to_local(range(30, 40), opened[30:])
    assert local.shape == (10, 68, 2)
    # The open mouth's lower face is still inside the box: the box's margin holds it.
    lower = local[:, list(LOWER_FACE_POINTS)]
    assert float(lower.min()) >= 0.05 and float(lower.max()) <= 0.95
    # With the points given, the box covers them too and `local` holds them.
    given = BoxTrack(source, opened)
    assert given.local.shape == (40, 68, 2) and given.box(0).side >= track.box(0).side
    # With the first frames' points only, the box covers those and the reference, nothing later.
    first = BoxTrack(source, opened[:10], num_frames=40)
    assert first.local is None and first.box(0) == MouthBox.from_landmarks(np.concatenate([ref[None], opened[:10]]))


def test_first_frames_come_out_before_the_whole_speech_has_landmarks():
    pipe = build_pipeline("tiny", sample_size=32, seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(landmark_chunk_frames=20)  # 3 s = 75 frames: 4 chunks
    calls = []
    handle = pipe.landmark_model.register_forward_hook(lambda *a: calls.append(1))
    seen = []
    try:
        out = pipe(voice_like(3.0), np.full((80, 80, 3), 100, np.uint8), sample_rate=16000,
                   identity_landmarks=synthetic_face_landmarks(80), num_inference_steps=1,
                   generator=torch.Generator().manual_seed(0), output_type=None, emotion="none",
                   frames_callback=lambda f: seen.append(len(calls)))  # "none": one landmark pass per chunk
    finally:
        handle.remove()
    assert out.landmarks.shape == (1, 75, 68, 2) and np.isfinite(out.landmarks).all()
    assert seen[0] == 1 < len(calls)  # the first frames waited for one landmark chunk, not all of them
    assert len(calls) == 4


def test_smoothing_over_time_is_the_same_in_chunks_and_damps_jitter():
    """landmark_smoothing blurs the predicted landmarks over time; chunks see enough context to match one call."""
    from talking_head.pipelines.pipeline_talking_head import smooth_over_time

    pipe = build_pipeline("tiny", sample_size=32, seed=0)
    pipe.landmark_model.eval()
    wave = torch.from_numpy(voice_like(3.0))[None]
    ident = torch.from_numpy(synthetic_face_landmarks(80) / 80.0)[None].float()
    labels = torch.tensor([NULL_EMOTION])

    def predict(chunk: int, sigma: float):
        pipe.register_to_config(landmark_chunk_frames=chunk, landmark_smoothing=sigma)
        return pipe.predict_landmarks(wave, ident, 75, 25.0, labels)

    raw, smooth = predict(250, 0.0), predict(250, 1.0)
    # Smoothed piece by piece, each with a margin of real frames (as landmark_chunks does), = smoothed at once.
    margin = 25
    pieces = []
    for f0 in range(0, 75, 20):
        a0, a1 = max(0, f0 - margin), min(75, f0 + 20 + margin)
        pieces.append(smooth_over_time(raw[:, a0:a1], 1.0)[:, f0 - a0: min(75, f0 + 20) - a0])
    torch.testing.assert_close(torch.cat(pieces, dim=1), smooth, atol=1e-6, rtol=0)
    jitter = lambda p: (p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).abs().mean()  # noqa: E731
    assert jitter(smooth) < 0.7 * jitter(raw) and (smooth - raw).abs().max() < 0.05
    # A constant sequence stays constant, ends included; sigma 0 changes nothing.
    still = ident[:, None].expand(1, 9, 68, 2).contiguous()
    torch.testing.assert_close(smooth_over_time(still, 1.0), still)
    assert torch.equal(smooth_over_time(raw, 0.0), raw)
    with pytest.raises(ValueError, match="landmark_smoothing"):
        pipe.register_to_config(landmark_smoothing=-1.0)
        pipe.check_components()


def test_the_landmark_stage_alone_predicts_what_the_pipeline_does():
    """talking_head.evaluation.landmark_stage scores a landmark model without a renderer: same landmarks."""
    from talking_head.evaluation.landmark_stage import LandmarkStage

    pipe = build_pipeline("tiny", sample_size=32, seed=0)
    pipe.landmark_model.eval()
    pipe.register_to_config(landmark_chunk_frames=30, landmark_smoothing=1.0, rest_mouth_on_silence=True)
    stage = LandmarkStage(pipe.landmark_model, chunk_frames=30)
    wave = torch.from_numpy(voice_like(2.0))[None]
    ident = torch.from_numpy(synthetic_face_landmarks(80) / 80.0)[None].float()
    labels = torch.tensor([NULL_EMOTION])
    torch.testing.assert_close(stage.predict_landmarks(wave, ident, 50, 25.0, labels),
                               pipe.predict_landmarks(wave, ident, 50, 25.0, labels))
