"""Synthetic prepared datasets for tests and CI (no ../shared needed), in seconds.

`make_synthetic_dataset` writes exactly what `talking-head prepare` writes
(talking_head.data.layout): JPEG frames of a drawn face, its EXACT iBUG-68
landmarks in crop pixels, 16 kHz float audio, meta.json per clip, a manifest.
The face: a skin-coloured head (its jaw outline is the 17 jaw landmarks),
eyes (the 12 eye landmarks are the eye outlines), brows, nose, and lips
whose outer/inner outlines are the 20 mouth landmarks. The mouth opening
follows the loudness (RMS per video frame) of the clip's audio, and the jaw
drops with it. Emotions change the mouth-corner curvature, brow height and
slant, eye opening and mouth width, and the voice's pitch, tempo, loudness
and brightness, so both the landmark model and the emotion classifier have
something learnable. Each speaker has its own skin/hair/background colours,
face shape and voice pitch; the head sways by a pixel or two.

The audio is "voice-like": a harmonic tone (8 harmonics, falling spectral
tilt, slow pitch contour and vibrato) multiplied by a syllable envelope
(raised-cosine syllables at ~4 per second with pauses), with changing
harmonic weights per syllable (vowel-like) and a little breath noise.

Splits: every (speaker, emotion) gets `clips_per_emotion` train clips and
`test_clips_per_emotion` (default 1) test clips, all `seconds` long.

`make_synthetic_emotion_audio` writes labelled voice-like utterances either
as a prepared emotion-audio dataset (layout="prepared", split by speaker) or
as raw RAVDESS-named files (layout="ravdess": Actor_XX/03-01-EE-II-SS-RR-XX.wav)
to exercise `talking-head prepare emotion-audio`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from talking_head.constants import EMOTIONS, NULL_EMOTION, NUM_LANDMARKS, SAMPLE_RATE
from talking_head.data import layout as _layout

SUPERSAMPLE = 4

# Per-emotion face parameters: mouth-corner lift, brow raise, brow slant (inner end down > 0),
# eye opening factor, mouth width factor, resting mouth opening (crop units).
FACE_STYLE = {
    "neutral":   dict(smile=0.000, brow=0.000, slant=0.000, eye=1.00, width=1.00, rest=0.000),
    "angry":     dict(smile=-0.010, brow=-0.020, slant=0.022, eye=0.75, width=0.95, rest=0.000),
    "contempt":  dict(smile=0.012, brow=0.000, slant=0.000, eye=0.85, width=1.00, rest=0.000),
    "disgusted": dict(smile=-0.018, brow=-0.012, slant=0.010, eye=0.65, width=0.92, rest=0.004),
    "fear":      dict(smile=-0.006, brow=0.028, slant=-0.014, eye=1.30, width=1.08, rest=0.006),
    "happy":     dict(smile=0.030, brow=0.006, slant=0.000, eye=0.80, width=1.15, rest=0.002),
    "sad":       dict(smile=-0.026, brow=0.012, slant=-0.020, eye=0.85, width=0.96, rest=0.000),
    "surprised": dict(smile=0.000, brow=0.042, slant=0.000, eye=1.45, width=0.90, rest=0.014),
}  # fmt: skip

# Per-emotion voice parameters: pitch factor, syllables per second, loudness, brightness
# (spectral tilt exponent: smaller = brighter), pitch movement (octaves of slow contour).
VOICE_STYLE = {
    "neutral":   dict(pitch=1.00, rate=4.0, loud=0.25, tilt=1.2, move=0.05),
    "angry":     dict(pitch=1.15, rate=5.0, loud=0.45, tilt=0.7, move=0.08),
    "contempt":  dict(pitch=0.92, rate=3.4, loud=0.22, tilt=1.1, move=0.12),
    "disgusted": dict(pitch=0.95, rate=3.2, loud=0.28, tilt=1.0, move=0.10),
    "fear":      dict(pitch=1.30, rate=5.2, loud=0.22, tilt=1.3, move=0.15),
    "happy":     dict(pitch=1.25, rate=4.6, loud=0.35, tilt=0.9, move=0.20),
    "sad":       dict(pitch=0.85, rate=2.8, loud=0.15, tilt=1.6, move=0.03),
    "surprised": dict(pitch=1.35, rate=4.2, loud=0.38, tilt=0.9, move=0.30),
}  # fmt: skip

MAX_OPEN = 0.09  # widest mouth opening, crop units


# ---------------------------------------------------------------- audio


def voice_like(seconds: float, rng: np.random.Generator, f0: float = 150.0,
               emotion: str = "neutral", sr: int = SAMPLE_RATE) -> np.ndarray:  # fmt: skip
    """A voice-like float32 waveform (see the module docstring); peak about `loud`."""
    v = VOICE_STYLE[emotion]
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    # Syllables: raised-cosine bumps at ~rate per second, occasional pauses.
    env = np.zeros(n)
    vowel = np.zeros((n, 3))
    pos = rng.uniform(0.02, 0.12)
    while pos < seconds:
        dur = rng.uniform(0.55, 0.9) / v["rate"]
        a, b = int(pos * sr), min(n, int((pos + dur) * sr))
        if b > a:
            k = np.arange(b - a) / max(1, b - a - 1)
            env[a:b] = np.maximum(env[a:b], rng.uniform(0.6, 1.0) * np.sin(np.pi * k) ** 1.5)
            vowel[a:b] = rng.dirichlet([2, 2, 2])
        gap = rng.uniform(0.1, 0.45) / v["rate"]
        if rng.random() < 0.12:
            gap += rng.uniform(0.15, 0.35)  # a pause between words
        pos += dur + gap
    pitch = f0 * v["pitch"] * 2 ** (v["move"] * np.sin(2 * np.pi * rng.uniform(0.3, 0.7) * t
                                                        + rng.uniform(0, 2 * np.pi)))  # fmt: skip
    pitch = pitch * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))  # vibrato
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    tone = np.zeros(n)
    for h in range(1, 9):
        # vowel-like colour: three harmonic groups weighted per syllable
        w = 0.4 + vowel[:, min(2, (h - 1) // 3)]
        tone += w * np.sin(h * phase) / h ** v["tilt"]
    tone /= np.max(np.abs(tone)) + 1e-9
    x = v["loud"] * env * tone + 0.02 * v["loud"] * env * rng.standard_normal(n)
    return x.astype(np.float32)


def frame_loudness(audio: np.ndarray, fps: float, num_frames: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """RMS of the audio of each video frame (frame f covers [f / fps, (f + 1) / fps))."""
    out = np.zeros(num_frames)
    for f in range(num_frames):
        a, b = int(round(f * sr / fps)), int(round((f + 1) * sr / fps))
        seg = audio[a:b]
        out[f] = math.sqrt(float(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0
    return out


# ---------------------------------------------------------------- face


def face_landmarks(opening: float, emotion: str, speaker: dict, sway=(0.0, 0.0)) -> np.ndarray:
    """(68, 2) landmarks in crop units ([0, 1]) of the drawn face, iBUG-68 order."""
    st = FACE_STYLE[emotion]
    cx, cy = 0.5 + sway[0], 0.52 + sway[1]
    a, b = 0.27 * speaker["face_w"], 0.33
    o = float(np.clip(opening, 0.0, MAX_OPEN))
    pts = np.zeros((NUM_LANDMARKS, 2))
    # jaw 0-16: lower part of the head ellipse; the chin drops with the mouth.
    theta = np.linspace(math.pi - 0.12, 0.12, 17)
    pts[0:17, 0] = cx + a * np.cos(theta)
    pts[0:17, 1] = cy + b * np.sin(theta) + 0.45 * o * np.sin(theta) ** 4
    # brows 17-21 (image left, outer -> inner) and 22-26 (inner -> outer)
    eye_dx, eye_y = 0.11 * speaker["eye_sep"], cy - 0.05
    brow_y = eye_y - 0.075 - st["brow"]
    for side, idx in ((-1, range(17, 22)), (1, range(22, 27))):
        xs = cx + side * eye_dx + np.linspace(-0.065, 0.065, 5)
        u = np.linspace(-1, 1, 5)
        arch = -0.018 * (1 - u**2)
        inner = (u * -side + 1) / 2  # 1 at the inner end
        ys = brow_y + arch + st["slant"] * (inner - 0.5)
        order = list(range(5)) if side < 0 else list(range(5))
        pts[list(idx)] = np.stack([xs[order], ys[order]], 1)
    # nose 27-30 bridge, 31-35 nostrils
    pts[27:31, 0] = cx
    pts[27:31, 1] = np.linspace(eye_y + 0.005, cy + 0.085, 4)
    pts[31:36, 0] = cx + np.linspace(-0.045, 0.045, 5)
    pts[31:36, 1] = cy + 0.105 + np.array([-0.008, 0.0, 0.006, 0.0, -0.008])
    # eyes 36-41, 42-47: corner, two upper-lid points, corner, two lower-lid points
    half_w, half_h = 0.04, 0.016 * st["eye"]
    for side, start in ((-1, 36), (1, 42)):
        ex = cx + side * eye_dx
        xs = ex + half_w * np.array([-1, -1 / 3, 1 / 3, 1, 1 / 3, -1 / 3])
        ys = eye_y + half_h * np.array([0, -1, -1, 0, 1, 1])
        pts[start : start + 6] = np.stack([xs, ys], 1)
    # mouth: outer 48-59 (48 left corner, 51 top, 54 right corner, 57 bottom), inner 60-67
    my = cy + 0.2
    mw = 0.085 * st["width"] * (1 - 1.2 * o)
    lift_l = st["smile"] + (0.0 if emotion != "contempt" else 0.012)
    lift_r = st["smile"] - (0.0 if emotion != "contempt" else 0.012)
    o = o + st["rest"]
    up_in, lo_in = my - 0.3 * o, my + 0.7 * o
    up_out, lo_out = up_in - 0.022, lo_in + 0.028

    def corner_y(u):  # lift at the corners (u = -1 left, +1 right)
        return my - np.where(u < 0, lift_l, lift_r) * np.abs(u) ** 3

    u_up = np.array([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1])
    y_up = corner_y(u_up) + (up_out - my) * (1 - np.abs(u_up) ** 2) ** 0.7 + 0.004 * (
        np.abs(u_up) < 0.1
    )  # cupid's bow dip at the centre
    u_lo = np.array([2 / 3, 1 / 3, 0, -1 / 3, -2 / 3])
    y_lo = corner_y(u_lo) + (lo_out - my) * (1 - np.abs(u_lo) ** 2) ** 0.7
    pts[48:55] = np.stack([cx + mw * u_up, y_up], 1)
    pts[55:60] = np.stack([cx + mw * u_lo, y_lo], 1)
    iw = 0.75 * mw
    u_iu = np.array([-1, -0.5, 0, 0.5, 1])
    y_iu = corner_y(u_iu * 0.75) + (up_in - my) * (1 - np.abs(u_iu) ** 2) ** 0.7
    u_il = np.array([0.5, 0, -0.5])
    y_il = corner_y(u_il * 0.75) + (lo_in - my) * (1 - np.abs(u_il) ** 2) ** 0.7
    pts[60:65] = np.stack([cx + iw * u_iu, y_iu], 1)
    pts[65:68] = np.stack([cx + iw * u_il, y_il], 1)
    return pts


def draw_face(pts: np.ndarray, size: int, speaker: dict, sway=(0.0, 0.0)) -> np.ndarray:
    """Render the face whose landmarks are `pts` (crop units) as uint8 (size, size, 3)."""
    s = size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), speaker["background"])
    d = ImageDraw.Draw(img)

    def P(xy):  # crop units -> PIL coordinates of the supersampled canvas
        xy = np.asarray(xy, np.float64).reshape(-1, 2) * s - 0.5
        return [tuple(p) for p in xy]

    cx, cy = 0.5 + sway[0], 0.52 + sway[1]
    a, b = 0.27 * speaker["face_w"], 0.33
    # shoulders and neck
    d.ellipse(P([[cx - 0.45, 0.93], [cx + 0.45, 1.4]]), fill=speaker["shirt"])
    d.rectangle(P([[cx - 0.1, cy + 0.2], [cx + 0.1, 0.98]]), fill=speaker["skin_dark"])
    # head: upper half ellipse + the jaw landmarks
    th = np.linspace(-0.12, -math.pi + 0.12, 40)  # over the top, right -> left
    upper = np.stack([cx + a * np.cos(th), cy + b * np.sin(th)], 1)
    head = np.concatenate([pts[0:17], upper])
    d.polygon(P(head), fill=speaker["skin"])
    # hair cap
    th = np.linspace(-math.pi + 0.05, -0.05, 30)
    hair = np.stack([cx + 1.03 * a * np.cos(th), cy - 0.01 + 1.04 * b * np.sin(th)], 1)
    hair = np.concatenate([hair, [[cx + 0.7 * a, cy - 0.2], [cx - 0.7 * a, cy - 0.2]]])
    d.polygon(P(hair), fill=speaker["hair"])
    # eyes: white, iris, lid outline
    for start in (36, 42):
        eye = pts[start : start + 6]
        d.polygon(P(eye), fill=(245, 245, 240))
        ec = eye.mean(0)
        r = min(0.014, 0.9 * (eye[4, 1] - eye[1, 1]) / 2 + 0.004)
        d.ellipse(P([ec - r, ec + r]), fill=speaker["iris"])
        d.line(P(np.concatenate([eye, eye[:1]])), fill=(60, 40, 30), width=max(1, s // 128))
    # brows
    for a_, b_ in ((17, 22), (22, 27)):
        d.line(P(pts[a_:b_]), fill=speaker["hair"], width=max(2, int(0.014 * s)), joint="curve")
    # nose
    d.line(P(pts[27:31]), fill=speaker["skin_dark"], width=max(1, int(0.008 * s)))
    d.line(P(pts[31:36]), fill=speaker["skin_dark"], width=max(1, int(0.008 * s)), joint="curve")
    # lips, then the mouth cavity
    d.polygon(P(pts[48:60]), fill=speaker["lips"])
    d.polygon(P(pts[60:68]), fill=(70, 20, 25))
    out = img.resize((size, size), Image.BOX)
    return np.asarray(out)


def _speaker_style(k: int, rng: np.random.Generator) -> dict:
    skin = np.array([224, 172, 140]) * rng.uniform(0.55, 1.05) + rng.uniform(-10, 10, 3)
    skin = np.clip(skin, 40, 250)
    return {
        "skin": tuple(int(v) for v in skin),
        "skin_dark": tuple(int(v) for v in skin * 0.8),
        "lips": tuple(int(v) for v in np.clip(skin * np.array([0.95, 0.55, 0.6]) + [20, 0, 0], 0, 255)),
        "hair": tuple(int(v) for v in rng.uniform(10, 110) * np.array([1.0, 0.8, 0.6])),
        "iris": tuple(int(v) for v in rng.uniform(20, 120, 3)),
        "background": tuple(int(v) for v in rng.uniform(40, 200, 3)),
        "shirt": tuple(int(v) for v in rng.uniform(20, 230, 3)),
        "face_w": float(rng.uniform(0.9, 1.08)),
        "eye_sep": float(rng.uniform(0.92, 1.08)),
        "f0": float(rng.uniform(100, 230)),
        "sway_phase": float(rng.uniform(0, 2 * math.pi)),
    }


def render_clip(speaker: dict, emotion: str, seconds: float, fps: float, size: int,
                rng: np.random.Generator):  # fmt: skip
    """(frames uint8 (T, S, S, 3), landmarks float32 (T, 68, 2) crop pixels, audio float32)."""
    n = int(round(seconds * fps))
    audio = voice_like(n / fps, rng, f0=speaker["f0"], emotion=emotion)
    audio = audio[: int(round(n * SAMPLE_RATE / fps))]
    loud = frame_loudness(audio, fps, n)
    ref = VOICE_STYLE[emotion]["loud"] * 0.55
    opening = MAX_OPEN * np.clip(loud / ref, 0.0, 1.0) ** 0.8
    frames, lms = [], []
    for f in range(n):
        t = f / fps
        sway = (0.012 * math.sin(2 * math.pi * 0.35 * t + speaker["sway_phase"]),
                0.006 * math.sin(2 * math.pi * 0.5 * t + 1.3 * speaker["sway_phase"]))  # fmt: skip
        pts = face_landmarks(opening[f], emotion, speaker, sway)
        frames.append(draw_face(pts, size, speaker, sway))
        lms.append((pts * size).astype(np.float32))
    return np.stack(frames), np.stack(lms), audio


def _write_video_clip(root: Path, clip_id: str, frames, lms, audio, fps, size, split, speaker,
                      emotion) -> dict:  # fmt: skip
    import soundfile as sf

    tmp = _layout.new_tmp_clip_dir(root, clip_id)
    (tmp / _layout.FRAMES).mkdir()
    for i, fr in enumerate(frames):
        Image.fromarray(fr).save(tmp / _layout.FRAMES / _layout.FRAME_PATTERN.format(i),
                                 quality=_layout.JPEG_QUALITY, subsampling=0)  # fmt: skip
    np.save(tmp / "landmarks.npy", lms.astype(np.float32), allow_pickle=False)
    boxes = np.tile([size / 2, size / 2, size], (len(frames), 1)).astype(np.float64)
    np.save(tmp / "boxes.npy", boxes, allow_pickle=False)
    sf.write(tmp / "audio.wav", audio.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    rel = f"{_layout.CLIPS}/{clip_id}"
    meta = {
        "clip_id": clip_id, "kind": "video", "split": split, "speaker": speaker,
        "emotion": emotion, "emotion_id": EMOTIONS.index(emotion) if emotion else NULL_EMOTION,
        "level": None, "fps": float(fps), "num_frames": len(frames), "duration": len(frames) / fps,
        "size": size, "landmark_coverage": 1.0,
        "frames_dir": f"{rel}/{_layout.FRAMES}", "frame_pattern": _layout.FRAME_PATTERN,
        "landmarks": f"{rel}/landmarks.npy", "boxes": f"{rel}/boxes.npy",
        "audio": f"{rel}/audio.wav", "num_samples": int(len(audio)),
        "source": None, "source_kind": "synthetic", "source_start_frame": 0,
        "source_size": [size, size], "warnings": [],
    }  # fmt: skip
    _layout.finish_clip_dir(tmp, root, clip_id, meta)
    return meta


def make_synthetic_dataset(root, num_speakers: int = 1, clips_per_emotion: int = 1,
                           emotions=("neutral", "happy"), seconds: float = 2.0, fps: float = 25,
                           size: int = 64, seed: int = 0, test_clips_per_emotion: int = 1) -> Path:  # fmt: skip
    """Write a small prepared dataset of drawn talking faces to `root` (see the module docstring).

    Clip ids: synth{k}_{emotion}_{j:02d} (train: j < clips_per_emotion, then test).
    Returns `root` as a Path. Deterministic for a given seed.
    """
    root = Path(root)
    for e in emotions:
        if e not in EMOTIONS:
            raise ValueError(f"unknown emotion {e!r}; expected one of {', '.join(EMOTIONS)}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    root.mkdir(parents=True, exist_ok=True)
    _layout.write_json_atomic(root / _layout.DATASET_JSON,
                             _layout.dataset_info(fps=float(fps), size=int(size), synthetic=True))  # fmt: skip
    rows = []
    for k in range(num_speakers):
        spk_rng = np.random.default_rng([seed, k, 1])
        speaker = _speaker_style(k, spk_rng)
        for e in emotions:
            for j in range(clips_per_emotion + test_clips_per_emotion):
                rng = np.random.default_rng([seed, k, EMOTIONS.index(e), j, 2])
                frames, lms, audio = render_clip(speaker, e, seconds, fps, size, rng)
                split = "train" if j < clips_per_emotion else "test"
                rows.append(_write_video_clip(root, f"synth{k}_{e}_{j:02d}", frames, lms, audio,
                                              fps, size, split, f"synth{k}", e))  # fmt: skip
    _layout.write_manifest(root)
    _layout.write_jsonl_atomic(root / _layout.FAILURES, [])
    return root


def make_synthetic_emotion_audio(root, num_speakers: int = 4, utterances_per_emotion: int = 2,
                                 emotions=EMOTIONS, seconds: float = 1.5, seed: int = 0,
                                 test_speakers: int = 1, layout: str = "prepared",
                                 sample_rate: int = SAMPLE_RATE) -> Path:  # fmt: skip
    """Labelled voice-like utterances, prepared (split by speaker) or as raw RAVDESS-named files.

    layout="prepared": clips/<id>/audio.flac + meta.json + manifest; the last
    `test_speakers` speakers are test. layout="ravdess": Actor_XX/03-01-EE-II-SS-RR-XX.wav
    (contempt, which RAVDESS lacks, is left out; `sample_rate` sets the files' rate).
    """
    import soundfile as sf

    from talking_head.data.sources import RAVDESS_CODES

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for e in emotions:
        if e not in EMOTIONS:
            raise ValueError(f"unknown emotion {e!r}")
    if layout not in ("prepared", "ravdess"):
        raise ValueError(f"layout must be 'prepared' or 'ravdess', got {layout!r}")
    for k in range(num_speakers):
        spk = _speaker_style(k, np.random.default_rng([seed, k, 1]))
        actor = f"{k + 1:02d}"
        split = "test" if k >= num_speakers - test_speakers else "train"
        for e in emotions:
            for j in range(utterances_per_emotion):
                rng = np.random.default_rng([seed, k, EMOTIONS.index(e), j, 3])
                audio = voice_like(seconds * rng.uniform(0.85, 1.15), rng, f0=spk["f0"], emotion=e)
                if layout == "ravdess":
                    if e not in RAVDESS_CODES:
                        continue
                    folder = root / f"Actor_{actor}"
                    folder.mkdir(exist_ok=True)
                    intensity = "01" if j % 2 == 0 else "02"
                    name = f"03-01-{RAVDESS_CODES[e]}-{intensity}-{(j // 2) % 2 + 1:02d}-" \
                           f"{j // 4 + 1:02d}-{actor}.wav"  # fmt: skip
                    if sample_rate != SAMPLE_RATE:
                        from talking_head.audio import resample

                        audio = resample(audio, SAMPLE_RATE, sample_rate)
                    sf.write(folder / name, audio, sample_rate, subtype="PCM_16")
                    continue
                clip_id = f"synth{k}_{e}_{j:02d}"
                tmp = _layout.new_tmp_clip_dir(root, clip_id)
                sf.write(tmp / "audio.flac", audio, SAMPLE_RATE, subtype="PCM_24")
                meta = {
                    "clip_id": clip_id, "kind": "audio", "split": split, "speaker": actor,
                    "emotion": e, "emotion_id": EMOTIONS.index(e), "level": None,
                    "audio": f"{_layout.CLIPS}/{clip_id}/audio.flac", "num_samples": len(audio),
                    "duration": len(audio) / SAMPLE_RATE, "source": None, "source_kind": "synthetic",
                }  # fmt: skip
                _layout.finish_clip_dir(tmp, root, clip_id, meta)
    if layout == "prepared":
        _layout.write_json_atomic(root / _layout.DATASET_JSON, _layout.dataset_info(synthetic=True))
        _layout.write_manifest(root)
        _layout.write_jsonl_atomic(root / _layout.FAILURES, [])
    return root


def write_synthetic_video(path, seconds: float = 2.0, fps: float = 25.0, frame_size=(224, 160),
                          face_size: int = 128, audio: str | None = "track", face: bool = True,
                          emotion: str = "neutral", seed: int = 0) -> dict:  # fmt: skip
    """Encode a raw test video (H.264 MP4) of the drawn talking face moving in a larger frame.

    audio: "track" (AAC inside the MP4), "wav" (a sibling <stem>.wav) or None (no audio at all).
    face=False draws textured noise instead of a face (a video with no face in it).
    dlib finds the drawn face on every frame at the default sizes (a 128 px face); much
    smaller faces are missed on some frames.
    Returns {"path", "audio_path", "landmarks": (T, 68, 2) in frame pixels, "audio"}.
    """
    import soundfile as sf

    from talking_head.video import VideoWriter

    path = Path(path)
    rng = np.random.default_rng(seed)
    speaker = _speaker_style(0, np.random.default_rng([seed, 0, 1]))
    frames, lms, voice = render_clip(speaker, emotion, seconds, fps, face_size, rng)
    w, h = frame_size
    if w < face_size or h < face_size:
        raise ValueError(f"frame_size {frame_size} is smaller than face_size {face_size}")
    bg = np.asarray(Image.new("RGB", (w, h), speaker["background"]))
    out, pts = [], []
    for f in range(len(frames)):
        canvas = bg.copy()
        if face:
            # the face drifts across the frame (a stable crop must follow it smoothly)
            x = int(round((w - face_size) * (0.5 + 0.4 * math.sin(2 * math.pi * f / max(1, len(frames))))))
            y = int(round((h - face_size) * 0.5))
            canvas[y : y + face_size, x : x + face_size] = frames[f]
            pts.append(lms[f] + np.array([x, y], np.float32))
        else:
            noise = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
            canvas = np.asarray(Image.fromarray(noise).resize((w, h), Image.BILINEAR))
            pts.append(np.full((NUM_LANDMARKS, 2), np.nan, np.float32))
        out.append(canvas)
    audio_path = None
    with VideoWriter(path, fps=fps, audio=voice if audio == "track" else None) as writer:
        writer.write(np.stack(out))
    if audio == "wav":
        audio_path = path.with_suffix(".wav")
        sf.write(audio_path, voice, SAMPLE_RATE, subtype="PCM_16")
    elif audio not in ("track", None):
        raise ValueError(f"audio must be 'track', 'wav' or None, got {audio!r}")
    return {"path": path, "audio_path": audio_path, "landmarks": np.stack(pts), "audio": voice}
