"""Turn the inputs of `talking-head prepare` into jobs: what to prepare, under which clip ids and labels.

video          --split time (default): each file of one person gives two clips, `<stem>-train`
               (its first 1 - f of the time) and `<stem>-test` (the last f; f = --test-fraction,
               default 0.1); with f = 0 one clip `<stem>` in train.
               --split file: each file is one whole clip `<stem>`; the last f of the files, sorted
               by path (round(f * n), at least 1 when f > 0 and n > 1), are test, the others train.
               For corpora of many short sentences (GRID: 3 s each, silence at both ends), where
               a whole-sentence hold-out is the honest test and the last 10 % of a 3 s clip would
               be mostly silence.
               --split test: each file is one whole clip `<stem>` in test (a held-out set, e.g.
               speakers a model never trained on). Audio: the sibling audio file with the same stem
               (.wav, .flac, .m4a, .mp3, .ogg, .aac) when there is one, else the video's track.
mead           `<ID>/video/<view>/<emotion>/level_<n>/<nnn>.mp4` with its audio in
               `<ID>/audio/<emotion>/level_<n>/<nnn>.m4a` (required). One clip per video,
               `<ID>_<view>_<emotion>_level<n>_<nnn>`. Official split: within each
               (speaker, emotion, level), the last 10 neutral / last 6 other clips (by number)
               are test.
emotion-audio  RAVDESS-named files anywhere under ROOT (`MM-CC-EE-II-SS-RR-AA.wav|flac`; EE the
               emotion, II the intensity, AA the actor). Calm (02) has no MEAD class and is
               skipped unless --calm neutral; files whose names are not RAVDESS-style are
               skipped too (both are counted and printed, not failures). Split by speaker
               (--test-speakers; default the last quarter of the actors, sorted by number).
               Speaker ids are the actor field as written ("01".."24"); level = intensity.
cremad         CREMA-D-named videos anywhere under ROOT (`<actor>_<sentence>_<EMO>_<level>.mp4`,
               e.g. 1005_IEO_ANG_HI.mp4; audio: the sibling .wav, else the video's track). One
               whole clip per file, `cremad_<stem>`; speaker = the actor number; emotion from
               EMO (ANG angry, DIS disgusted, FEA fear, HAP happy, NEU neutral, SAD sad; CREMA-D
               has no contempt and no surprised); level LO 1, MD 2, HI 3, XX (unspecified) none.
               Split by actor (--test-speakers; default the last fifth of the actors, sorted by
               number, round(0.2 n)). Files whose names are not CREMA-D-style are skipped.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from talking_head.constants import EMOTIONS
from talking_head.data.process import SIBLING_AUDIO_EXTS

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac")

# RAVDESS emotion field -> project emotion (None: no MEAD class).
RAVDESS_EMOTIONS = {
    "01": "neutral", "02": None, "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgusted", "08": "surprised",
}  # fmt: skip
RAVDESS_CODES = {v: k for k, v in RAVDESS_EMOTIONS.items() if v}
# CREMA-D emotion and level codes -> project emotion / level number (XX: unspecified).
CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy", "NEU": "neutral",
                   "SAD": "sad"}  # fmt: skip
CREMAD_LEVELS = {"LO": 1, "MD": 2, "HI": 3, "XX": None}
_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_LEVEL = re.compile(r"^level_?(\d+)$", re.IGNORECASE)

# Official MEAD test split: the last N clips of each (speaker, emotion, level) are test.
MEAD_TEST_NEUTRAL = 10
MEAD_TEST_OTHER = 6


def file_stamp(path) -> list:
    """(size, mtime in ns) of a source file: a changed source is prepared again on the next run."""
    st = Path(path).stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "clip"


def sibling_audio(video: Path) -> Path | None:
    for ext in SIBLING_AUDIO_EXTS:
        for cand in (video.with_suffix(ext), video.with_suffix(ext.upper())):
            if cand.is_file() and cand != video:
                return cand
    return None


VIDEO_SPLITS = ("time", "file", "test")


def video_jobs(files, *, test_fraction=0.1, speaker=None, emotion=None, level=None,
               split="time") -> list[dict]:  # fmt: skip
    """Jobs for `prepare video FILES...` (see the module docstring)."""
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("no video files given")
    if split not in VIDEO_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(VIDEO_SPLITS)}, got {split!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    test_files: set[int] = set()
    if split == "file":
        order = sorted(range(len(paths)), key=lambda i: str(paths[i]))
        n_test = int(round(float(test_fraction) * len(paths)))
        if float(test_fraction) > 0 and len(paths) > 1:
            n_test = min(max(n_test, 1), len(paths) - 1)  # at least one test file, at least one train file
        elif len(paths) == 1:
            n_test = 0
        test_files = set(order[len(order) - n_test:]) if n_test else set()
    if emotion is not None:
        emotion = EMOTIONS[EMOTIONS.index(emotion.lower())] if emotion.lower() in EMOTIONS else None
        if emotion is None:
            raise ValueError(f"unknown emotion; expected one of {', '.join(EMOTIONS)}")
    if speaker is None:
        parents = {p.resolve().parent.name for p in paths}
        speaker = parents.pop() if len(parents) == 1 else "speaker"
    stems = [_safe_id(p.stem) for p in paths]
    jobs = []
    for i, (p, stem) in enumerate(zip(paths, stems)):
        if stems.count(stem) > 1:  # same name in different folders (or the same stem, other extension)
            stem = f"{stem}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:6]}"
        f = float(test_fraction)
        if split == "file":
            parts = [{"clip_id": stem, "split": "test" if i in test_files else "train", "begin": 0.0, "end": 1.0}]
        elif split == "test":
            parts = [{"clip_id": stem, "split": "test", "begin": 0.0, "end": 1.0}]
        elif f > 0:
            parts = [
                {"clip_id": f"{stem}-train", "split": "train", "begin": 0.0, "end": 1.0 - f},
                {"clip_id": f"{stem}-test", "split": "test", "begin": 1.0 - f, "end": 1.0},
            ]
        else:
            parts = [{"clip_id": stem, "split": "train", "begin": 0.0, "end": 1.0}]
        audio = sibling_audio(p)
        jobs.append({
            "key": str(p),
            "video": str(p),
            "audio": str(audio) if audio else None,
            "speaker": speaker,
            "emotion": emotion,
            "level": level,
            "parts": parts,
            "source_kind": "video",
        })  # fmt: skip
    return jobs


def _split_list(text) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def mead_jobs(root, *, speakers=None, view="front", emotions=None, levels=None) -> list[dict]:
    """Jobs for `prepare mead ROOT` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MEAD root folder not found: {root}")
    wanted = _split_list(speakers)
    wanted_emotions = [e.lower() for e in _split_list(emotions)] if emotions else None
    for e in wanted_emotions or []:
        if e not in EMOTIONS:
            raise ValueError(f"unknown emotion {e!r} in --emotions; expected {', '.join(EMOTIONS)}")
    wanted_levels = [int(x) for x in _split_list(levels)] if levels else None
    speaker_dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "video").is_dir())
    if not speaker_dirs:
        raise ValueError(f"{root} is not a MEAD root: no <ID>/video folders in it")
    if wanted:
        have = {p.name for p in speaker_dirs}
        missing = [s for s in wanted if s not in have]
        if missing:
            raise ValueError(
                f"speakers not found under {root}: {', '.join(missing)} "
                f"(have {', '.join(sorted(have)[:20])})"
            )
        speaker_dirs = [p for p in speaker_dirs if p.name in wanted]
    groups: dict[tuple, list] = {}
    for sd in speaker_dirs:
        vdir = sd / "video" / view
        if not vdir.is_dir():
            views = sorted(p.name for p in (sd / "video").iterdir() if p.is_dir())
            raise ValueError(f"{sd.name} has no view {view!r} (has {', '.join(views)})")
        for edir in sorted(p for p in vdir.iterdir() if p.is_dir()):
            emotion = edir.name.lower()
            if emotion not in EMOTIONS:
                continue
            if wanted_emotions and emotion not in wanted_emotions:
                continue
            for ldir in sorted(p for p in edir.iterdir() if p.is_dir()):
                m = _LEVEL.match(ldir.name)
                if not m:
                    continue
                level = int(m.group(1))
                if wanted_levels and level not in wanted_levels:
                    continue
                vids = [p for p in ldir.iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file()]
                groups[(sd.name, emotion, level, edir.name, ldir.name)] = sorted(
                    vids, key=lambda p: (int(p.stem) if p.stem.isdigit() else 10**9, p.stem)
                )
    jobs = []
    for (spk, emotion, level, edir_name, ldir_name), vids in sorted(groups.items()):
        n_test = MEAD_TEST_NEUTRAL if emotion == "neutral" else MEAD_TEST_OTHER
        for i, v in enumerate(vids):
            split = "test" if i >= len(vids) - n_test else "train"
            audio = root / spk / "audio" / edir_name / ldir_name / f"{v.stem}.m4a"
            clip_id = _safe_id(f"{spk}_{view}_{emotion}_level{level}_{v.stem}")
            jobs.append({
                "key": str(v),
                "video": str(v),
                "audio": str(audio),  # required: a missing file is a failure
                "speaker": spk,
                "emotion": emotion,
                "level": level,
                "parts": [{"clip_id": clip_id, "split": split, "begin": 0.0, "end": 1.0}],
                "source_kind": "mead",
            })  # fmt: skip
    if not jobs:
        raise ValueError(f"no MEAD videos found under {root} (view {view!r})")
    return jobs


def parse_ravdess_name(name: str) -> dict | None:
    """Fields of a RAVDESS file name (stem), or None when it is not one."""
    m = _RAVDESS_NAME.match(Path(name).stem)
    if not m:
        return None
    modality, channel, emo, intensity, statement, rep, actor = m.groups()
    return {"modality": modality, "channel": channel, "emotion_code": emo,
            "intensity": int(intensity), "statement": statement, "repetition": rep,
            "actor": actor}  # fmt: skip


def emotion_audio_jobs(root, *, test_speakers=None, calm="skip") -> tuple[list[dict], list[dict]]:
    """(items, skipped) for `prepare emotion-audio ROOT` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"emotion-audio root folder not found: {root}")
    if calm not in ("skip", "neutral"):
        raise ValueError(f"--calm must be skip or neutral, got {calm!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    items, skipped = [], []
    for p in files:
        f = parse_ravdess_name(p.name)
        if f is None:
            skipped.append({"source": str(p), "reason": "file name is not RAVDESS-style "
                            "(MM-CC-EE-II-SS-RR-AA)"})  # fmt: skip
            continue
        if f["emotion_code"] not in RAVDESS_EMOTIONS:
            skipped.append({"source": str(p), "reason": f"unknown emotion code {f['emotion_code']}"})
            continue
        emotion = RAVDESS_EMOTIONS[f["emotion_code"]]
        if emotion is None:
            if calm == "skip":
                skipped.append({"source": str(p), "reason": "calm has no MEAD class (--calm skip)"})
                continue
            emotion = "neutral"
        items.append({
            "path": str(p),
            "clip_id": _safe_id(f"ravdess_{p.stem}"),
            "speaker": f["actor"],
            "emotion": emotion,
            "level": f["intensity"],
            "source_label": f["emotion_code"],
        })  # fmt: skip
    if not items:
        raise ValueError(f"no RAVDESS-style audio files found under {root}")
    actors = sorted({it["speaker"] for it in items}, key=int)
    test = held_out_actors(actors, test_speakers, max(1, len(actors) // 4) if len(actors) > 1 else 0)
    for it in items:
        it["split"] = "test" if it["speaker"] in test else "train"
    return items, skipped


def parse_cremad_name(name: str) -> dict | None:
    """Fields of a CREMA-D file name (stem `<actor>_<sentence>_<EMO>_<level>`), or None when it is not one."""
    m = _CREMAD_NAME.match(Path(name).stem)
    if not m or m.group(3) not in CREMAD_EMOTIONS or m.group(4) not in CREMAD_LEVELS:
        return None
    actor, sentence, emo, level = m.groups()
    return {"actor": actor, "sentence": sentence, "emotion": CREMAD_EMOTIONS[emo], "level": CREMAD_LEVELS[level]}


def held_out_actors(actors, test_speakers=None, default_count: int = 1) -> set[str]:
    """The held-out actors (numbers as strings): `test_speakers` (comma-separated numbers), or the last
    `default_count` by number."""
    actors = sorted(set(actors), key=int)
    if test_speakers is None:
        return set(actors[len(actors) - default_count:]) if default_count else set()
    wanted = {int(s) for s in _split_list(test_speakers)}
    unknown = wanted - {int(a) for a in actors}
    if unknown:
        raise ValueError(f"--test-speakers {', '.join(str(u) for u in sorted(unknown))} not found "
                         f"(actors present: {', '.join(actors)})")
    return {a for a in actors if int(a) in wanted}


def cremad_test_actors(actors, test_speakers=None, test_fraction: float = 0.2) -> set[str]:
    """The held-out CREMA-D actors: `test_speakers`, or the last `test_fraction` of them (at least one, and one
    left to train on)."""
    n = len(set(actors))
    count = min(max(int(round(test_fraction * n)), 1), n - 1) if n > 1 else 0
    return held_out_actors(actors, test_speakers, count)


def cremad_jobs(root, *, test_speakers=None) -> tuple[list[dict], list[dict]]:
    """(jobs, skipped) for `prepare cremad ROOT` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CREMA-D folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    found, skipped = [], []
    for p in files:
        f = parse_cremad_name(p.name)
        if f is None:
            skipped.append({"source": str(p), "reason": "file name is not CREMA-D-style (AAAA_SSS_EMO_LV)"})
            continue
        found.append((p, f))
    if not found:
        raise ValueError(f"no CREMA-D-named videos (<actor>_<sentence>_<EMO>_<level>.mp4) under {root}")
    test = cremad_test_actors([f["actor"] for _, f in found], test_speakers)
    jobs = []
    for p, f in found:
        audio = sibling_audio(p)
        jobs.append({
            "key": str(p),
            "video": str(p),
            "audio": str(audio) if audio else None,
            "speaker": f["actor"],
            "emotion": f["emotion"],
            "level": f["level"],
            "parts": [{"clip_id": _safe_id(f"cremad_{p.stem}"), "split": "test" if f["actor"] in test else "train",
                       "begin": 0.0, "end": 1.0}],
            "source_kind": "cremad",
        })  # fmt: skip
    return jobs, skipped
