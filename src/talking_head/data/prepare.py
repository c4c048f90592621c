"""`talking-head prepare`: real recordings -> a prepared dataset (DESIGN.md section 3).

    talking-head prepare video FILES... --output DIR [--fps 25] [--size 256] [--test-fraction 0.1]
                                        [--split time|file|test]
    talking-head prepare mead ROOT --output DIR [--speakers M030,M031] [--view front]
    talking-head prepare emotion-audio ROOT --output DIR [--test-speakers 13,14,15,16]
    talking-head prepare cremad ROOT --output DIR [--test-speakers 1076,1077] [--size 128]

Sources and clip ids: see talking_head.data.sources. The on-disk layout and the
manifest fields: see talking_head.data.layout. How one video is processed
(decode at the target fps, dlib landmarks with face tracking, smoothed square
crop with talking_head.face, aligned audio): see talking_head.data.process.

Corpora of short sentences (GRID) use `--split file`: every file is one whole clip, the
last --test-fraction of the files (by name) are test (a whole-sentence hold-out); `--split test` makes
every file a test clip (speakers a model never trains on). A folder holding one recording in two
containers (GRID s1/: `x.mp4` and `x.mpg`) contributes it once (the first in VIDEO_EXTS order).

Video sources (with the default --split time) are split into TWO clips per file, `<stem>-train` (first 90 %)
and `<stem>-test` (last 10 %), each a complete clip of its own, so every
consumer simply filters the manifest by `split`. The crop boxes are smoothed
over the whole file before it is cut, so the two parts are framed alike.

Storage of the frames: per-frame JPEG, quality 95, 4:4:4 chroma, in
clips/<id>/frames/. Measured with `python -m talking_head.data.storage_bench`
on 250 frames of address_clip1.mp4 (256x256, this 2-core machine, page
cache warm; read = a random 16-frame window as uint8):

    format                       write ms/frame  kB/frame  read ms/16 frames  PSNR dB
    npy uint8 (memmap)                0.6         196.6          1.8            inf
    PNG per frame (level 6)          20.5          66.1         34.9            inf
    PNG per frame (level 1)           5.6          76.5         40.0            inf
    JPEG q95 4:2:0 per frame          0.9          16.9         12.7           45.2
    JPEG q95 4:4:4 per frame          1.0          21.2         11.9           46.4
    JPEG q90 4:2:0 per frame          0.8          11.8          9.9           43.7
    JPEG q95 in one zip (stored)      0.4          17.0         12.4           45.2
    H.264 lossless rgb (g=16)        11.7          33.5        153.6            inf
    FFV1 (g=16)                       3.2          34.7        140.6            inf

JPEG q95 4:4:4 is 9x smaller than raw .npy and 3x smaller than PNG, reads a
16-frame window in 12 ms (0.75 ms a frame, about 10x faster than a training
step needs at any batch size this project uses), and its 46 dB PSNR is far
below anything a model here can resolve (the paper's generator reaches 25 dB);
4:4:4 rather than 4:2:0 keeps lip colour edges (+1.2 dB, 3.6 dB on the
720p clip, for 25 % more bytes). Lossless video cannot serve random windows
fast (seek + decode of a GOP: 140-150 ms). A folder of files rather than a zip
keeps the dataset inspectable with any image viewer, at the same speed.

Speed (this 2-core machine, shared with other jobs at load 4-6 during the
measurement): the four obama videos (2603 frames at 25 fps, 104 s) take 61 s
wall and 63 s of CPU (24 ms per frame: dlib ~8 ms on a 256x256 frame, ~13 ms
on 1280x720 with face tracking; two decodes; crop_face's pixel gather ~8 ms
on a 720p frame; JPEG ~1 ms), i.e. 43 frames/s; an idle machine does about
twice the CPU-bound rate. The result takes 58 MB (22 kB per frame).

Robustness: every clip is written into clips/.tmp-<id>-* and renamed into
place only when complete, meta.json last; a clip folder with meta.json is
complete, and a re-run skips every source whose clips are all complete with
the same settings and an unchanged source file (size + mtime). Half-written
folders of a killed run are deleted and redone. A source that fails (no
audio, no face, undecodable, ...) is recorded in failures.jsonl with the
reason and the run goes on; the exit status is 1 only when none of the given
sources has a prepared clip at the end. manifest.jsonl is rebuilt from the
clip folders (so it can never list a half clip) and rewritten atomically at
most once a second and at the end. Work is spread over --workers processes
(default 2): short sources one per worker, a long video's face detection cut
into one chunk per worker.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from talking_head.argtypes import positive_float, whole_number
from talking_head.constants import DEFAULT_FPS, EMOTIONS
from talking_head.data import layout
from talking_head.data.process import (
    PrepareError,
    detect_chunk,
    finalize_video,
    prepare_audio_items,
    probe_video,
)
from talking_head.data.sources import (
    AUDIO_EXTS,
    VIDEO_EXTS,
    cremad_jobs,
    emotion_audio_jobs,
    file_stamp,
    mead_jobs,
    video_jobs,
)

# A video longer than this many seconds has its face detection split across workers.
CHUNK_SECONDS = 10.0
AUDIO_BATCH = 16
MANIFEST_EVERY_S = 1.0


# ---------------------------------------------------------------- executors


class _InlineExecutor:
    """ProcessPoolExecutor's interface, running each task at submit time (--workers 1)."""

    def submit(self, fn, *args):
        fut = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as err:  # noqa: BLE001 - handed to the caller like a pool would
            fut.set_exception(err)
        return fut

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def _worker_init():
    # Each worker is single-threaded; BLAS/OpenMP threads would only fight over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    # A forked worker shares the main process's lock on the output folder; drop its reference,
    # so the lock ends with the main process (a killed run must not block the next one).
    for fd in list(_Lock.held):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    except (ValueError, OSError):
        pass


def _make_executor(workers: int):
    if workers <= 1:
        return _InlineExecutor()
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=False) == "fork":
        # Import the heavy modules and load dlib's models (100 MB, ~1 s) once here:
        # forked workers inherit them instead of each paying for them again.
        import imageio_ffmpeg  # noqa: F401
        import soundfile  # noqa: F401

        import talking_head.audio  # noqa: F401  (scipy.signal: seconds on a busy machine)
        from talking_head.face import _load_models, _predictor_path, dlib_available

        if dlib_available():
            _load_models(str(_predictor_path().resolve()))
    return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)


def _reason(err: BaseException) -> str:
    if isinstance(err, PrepareError):
        return str(err)
    if isinstance(err, BrokenProcessPool):
        return "the worker process died (out of memory, or a crash in ffmpeg/dlib)"
    if isinstance(err, (ValueError, FileNotFoundError)):
        return str(err)
    return f"unexpected error: {type(err).__name__}: {err}"


class _Scheduler:
    """Runs tasks on a pool with priorities and a bounded queue, calling back on completion.

    A worker that dies (out of memory, a crash in a native library) breaks the
    whole pool, and every task in flight fails with it: those tasks become
    suspects, the pool is restarted, and the suspects are run again one at a
    time; a suspect that kills its worker while running alone is the culprit
    and is reported through its on_error, the others complete normally.
    """

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.pool = None  # started with the first task (a run with nothing to do starts nothing)
        self.ready: list = []
        self.in_flight: dict = {}
        self.seq = itertools.count()
        self.suspects = 0  # suspects queued or in flight

    def add(self, priority: int, fn, args: tuple, on_done, on_error, suspect: bool = False):
        if suspect:
            self.suspects += 1
            priority = -1  # before everything else
        heapq.heappush(self.ready, (priority, next(self.seq), fn, args, on_done, on_error, suspect))

    def _submit_ready(self):
        limit = 1 if self.suspects else 2 * self.workers
        if self.ready and self.pool is None:
            self.pool = _make_executor(self.workers)
        while self.ready and len(self.in_flight) < limit:
            task = heapq.heappop(self.ready)
            try:
                fut = self.pool.submit(task[2], *task[3])
            except BrokenProcessPool:
                self._restart()
                fut = self.pool.submit(task[2], *task[3])
            self.in_flight[fut] = task

    def _restart(self):
        try:
            self.pool.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001
            pass
        self.pool = _make_executor(self.workers)

    def run(self):
        while self.ready or self.in_flight:
            self._submit_ready()
            alone = len(self.in_flight) == 1
            done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                task = self.in_flight.pop(fut)
                prio, _, fn, args, on_done, on_error, suspect = task
                if suspect:
                    self.suspects -= 1
                err = fut.exception()
                if err is None:
                    on_done(fut.result())
                elif isinstance(err, BrokenProcessPool):
                    broken = True
                    if suspect and alone:
                        on_error(err)  # it broke the pool on its own: the culprit
                    else:
                        self.add(prio, fn, args, on_done, on_error, suspect=True)
                else:
                    on_error(err)
            if broken:
                for fut, task in list(self.in_flight.items()):  # they died with the pool
                    self.in_flight.pop(fut)
                    prio, _, fn, args, on_done, on_error, suspect = task
                    if suspect:
                        self.suspects -= 1
                    self.add(prio, fn, args, on_done, on_error, suspect=True)
                self._restart()

    def shutdown(self, abort: bool = False):
        """Wait for the pool to finish; with abort (Ctrl-C, an error) stop its workers at once."""
        if self.pool is None:
            return
        if abort:
            for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                proc.terminate()  # their half-written clip folders are removed by the next run
            self.pool.shutdown(wait=False, cancel_futures=True)
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- the run


class _Lock:
    """An exclusive lock on DIR/.prepare.lock, so two runs never write one dataset."""

    held: set = set()  # file descriptors holding locks in this process

    def __init__(self, root: Path):
        self.path = root / ".prepare.lock"
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"another `talking-head prepare` is writing to {self.path.parent}") from None
        _Lock.held.add(self.fd)
        return self

    def __exit__(self, *exc):
        _Lock.held.discard(self.fd)
        os.close(self.fd)


class _Run:
    """State of one `prepare` run: manifest rows, failures, counters, progress bar."""

    def __init__(self, root: Path, quiet: bool, unit: str):
        from tqdm.auto import tqdm

        self.root = root
        self.rows = {r["clip_id"]: r for r in layout.collect_manifest(root)}
        self.failures: list[dict] = []
        self.done_rows: list[dict] = []
        self.skipped_rows: list[dict] = []
        self.frames_done = 0
        self.started = time.perf_counter()
        self._last_write = 0.0
        self.bar = tqdm(total=0, unit=unit, disable=quiet, dynamic_ncols=True, smoothing=0.1,
                        desc="prepare", file=sys.stderr)  # fmt: skip

    def fail(self, job: dict, stage: str, err) -> None:
        reason = err if isinstance(err, str) else _reason(err)
        ids = [p["clip_id"] for p in job.get("parts", [])] or [job.get("clip_id")]
        self.failures.append({"source": str(job.get("video") or job.get("path")),
                              "clip_ids": ids, "stage": stage, "reason": reason})  # fmt: skip
        self.bar.set_postfix(failed=len(self.failures), refresh=False)
        self.save(force=False)

    def add_rows(self, rows: list[dict]) -> None:
        for r in rows:
            self.rows[r["clip_id"]] = r
            self.done_rows.append(r)
        self.save(force=False)

    def save(self, force: bool = True) -> None:
        now = time.perf_counter()
        if not force and now - self._last_write < MANIFEST_EVERY_S:
            return
        self._last_write = now
        layout.write_jsonl_atomic(self.root / layout.MANIFEST,
                                  [self.rows[k] for k in sorted(self.rows)])  # fmt: skip
        layout.write_jsonl_atomic(self.root / layout.FAILURES, self.failures)

    def close(self):
        self.bar.close()


def _prepare_root(output, settings: dict) -> Path:
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--output {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    info_path = root / layout.DATASET_JSON
    info = {}
    if info_path.is_file():
        import json

        info = json.loads(info_path.read_text())
        if info.get("format") != layout.FORMAT_NAME:
            raise ValueError(f"{root} holds something else than a prepared dataset ({info_path})")
        for key, value in settings.items():
            old = info.get(key)
            if old is not None and value is not None and old != value:
                raise ValueError(
                    f"{root} was prepared with {key}={old}; this run asks for {key}={value}. "
                    "Use the same settings, or another --output folder"
                )
    elif any(root.iterdir()) and not (root / layout.CLIPS).is_dir():
        raise ValueError(f"--output {root} is a non-empty folder that is not a prepared dataset")
    merged = {**layout.dataset_info(), **{k: v for k, v in info.items() if v is not None}}
    merged.update({k: v for k, v in settings.items() if v is not None})
    layout.write_json_atomic(info_path, merged)
    return root


def _is_done(root: Path, clip_id: str, settings: dict) -> dict | None:
    meta = layout.read_clip_meta(root, clip_id)
    if meta is None or meta.get("prepare_settings") != settings:
        return None
    return meta


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _expand_files(files) -> list[Path]:
    out = []
    for f in files:
        p = Path(f)
        if not p.exists():  # a mistyped argument: say so before any work, not as a recorded failure
            raise FileNotFoundError(f"video file not found: {p}")
        if p.is_dir():
            videos = sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_EXTS and q.is_file())
            if not videos:
                raise ValueError(f"{p} is a folder with no video files in it ({', '.join(sorted(VIDEO_EXTS))})")
            # The same recording in two containers (GRID's s1/ holds bbbs7a.mp4 and bbbs7a.mpg) would be
            # prepared twice, and with --split file could land in train AND test: keep one per stem.
            by_stem: dict = {}
            for q in videos:
                by_stem.setdefault(q.stem, []).append(q)
            for stem, same in by_stem.items():
                if len(same) > 1:
                    same.sort(key=lambda q: VIDEO_EXTS.index(q.suffix.lower()))
                    print(f"note: {p} has {stem} as {', '.join(q.suffix for q in same)}; using {same[0].name}",
                          file=sys.stderr)
            out += sorted(same[0] for same in by_stem.values())
        else:
            out.append(p)
    # A sibling audio file given along with its video (e.g. `folder/*`) is that video's audio.
    stems = {p.with_suffix("") for p in out if p.suffix.lower() in VIDEO_EXTS}
    return [p for p in out if not (p.suffix.lower() in AUDIO_EXTS and p.with_suffix("") in stems)]


def run_video_jobs(jobs: list[dict], output, *, fps=DEFAULT_FPS, size=256, workers=2,
                   max_seconds=None, min_face_fraction=0.5, redo=False, quiet=False,
                   chunk_seconds=CHUNK_SECONDS) -> dict:  # fmt: skip
    """Prepare video jobs (from talking_head.data.sources) into `output`; returns the summary."""
    if size < 16:
        raise ValueError(f"--size must be at least 16, got {size}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"--max-seconds must be positive, got {max_seconds}")
    from talking_head.face import INSTALL_HINT, dlib_available

    if not dlib_available():
        raise ImportError(INSTALL_HINT.split(", or pass")[0])
    root = _prepare_root(output, {"fps": fps if fps else "source", "size": int(size)})
    with _Lock(root):
        layout.remove_stale_tmp(root)
        run = _Run(root, quiet, unit="frame")
        sched = _Scheduler(workers)
        todo = []
        for job in jobs:
            job = dict(job, fps=fps, size=int(size), max_seconds=max_seconds,
                       min_face_fraction=min_face_fraction)  # fmt: skip
            try:
                job["stamp"] = file_stamp(job["video"])
            except OSError:
                job["stamp"] = None
            done = []
            for part in job["parts"]:
                part["settings"] = {
                    "fps": fps, "size": int(size), "max_seconds": max_seconds,
                    "part": [part["begin"], part["end"]], "split": part["split"],
                    "stamp": job["stamp"], "audio": job.get("audio"),
                    "labels": [job["speaker"], job.get("emotion"), job.get("level")],
                }  # fmt: skip
                meta = None if redo else _is_done(root, part["clip_id"], part["settings"])
                done.append(meta)
            if all(m is not None for m in done):
                run.skipped_rows += done
            else:
                todo.append(job)
        ok = False
        try:
            for job in todo:
                _schedule_video(sched, run, job, chunk_seconds)
            sched.run()
            ok = True
        finally:
            sched.shutdown(abort=not ok)
            run.save(force=True)
            run.close()
        return _summarise(run, jobs, kind="video")


def _schedule_video(sched: _Scheduler, run: _Run, job: dict, chunk_seconds: float):
    root = str(run.root)
    state = {"chunks": {}, "failed": False}

    def fail(stage):
        def on_error(err):
            if not state["failed"]:  # one record per source, even if several chunks fail
                state["failed"] = True
                run.fail(job, stage, err)

        return on_error

    def on_probe(probe):
        state["probe"] = probe
        est = probe["est_frames"]
        chunk_frames = max(1, int(round(chunk_seconds * probe["fps"])))
        n = 1 if not est else min(sched.workers, max(1, math.ceil(est / chunk_frames)))
        starts = [int(round(k * est / n)) for k in range(n)] if est else [0]
        stops = starts[1:] + [None]
        state["n"] = n
        run.bar.total = (run.bar.total or 0) + (est or 0)
        run.bar.refresh()
        for a, b in zip(starts, stops):
            sched.add(1, detect_chunk, (job, probe["fps"], a, b), on_chunk, fail("detect"))

    def on_chunk(result):
        state["chunks"][result["start"]] = result
        run.bar.update(len(result["landmarks"]))
        if len(state["chunks"]) == state["n"] and not state["failed"]:
            lms = np.concatenate([state["chunks"][k]["landmarks"] for k in sorted(state["chunks"])])
            state["chunks"] = None
            sched.add(0, finalize_video, (_job_for_finalize(job), state["probe"], lms, root),
                      on_final, fail("crop/write"))  # fmt: skip

    def on_final(rows):
        run.frames_done += sum(r["num_frames"] for r in rows)
        run.add_rows(rows)

    sched.add(2, probe_video, (job,), on_probe, fail("probe"))


def _job_for_finalize(job: dict) -> dict:
    """The job as finalize_video sees it: prepare_settings go into each clip's meta.json."""
    return {**job, "parts": [dict(p) for p in job["parts"]]}


def run_emotion_audio(items: list[dict], skipped: list[dict], output, *, workers=2,
                      redo=False, quiet=False) -> dict:  # fmt: skip
    root = _prepare_root(output, {})
    with _Lock(root):
        layout.remove_stale_tmp(root)
        run = _Run(root, quiet, unit="file")
        sched = _Scheduler(workers)
        todo = []
        for it in items:
            try:
                it["stamp"] = file_stamp(it["path"])
            except OSError:
                it["stamp"] = None
            it["settings"] = {"split": it["split"], "stamp": it["stamp"],
                              "labels": [it["speaker"], it["emotion"], it["level"]]}  # fmt: skip
            meta = None if redo else _is_done(root, it["clip_id"], it["settings"])
            if meta is not None:
                run.skipped_rows.append(meta)
            else:
                todo.append(it)
        run.bar.total = len(todo)

        def on_batch(results):
            rows = []
            for r in results:
                if "ok" in r:
                    rows.append(r["ok"])
                else:
                    run.fail(r["item"], "decode/write", r["error"])
            run.bar.update(len(results))
            run.add_rows(rows)

        ok = False
        try:
            for k in range(0, len(todo), AUDIO_BATCH):
                batch = todo[k : k + AUDIO_BATCH]
                sched.add(1, prepare_audio_items, (batch, str(root)), on_batch,
                          lambda e, batch=batch: [run.fail(it, "decode/write", e) for it in batch])
            sched.run()
            ok = True
        finally:
            sched.shutdown(abort=not ok)
            run.save(force=True)
            run.close()
        summary = _summarise(run, items, kind="audio")
        summary["skipped_files"] = skipped
        return summary


def _summarise(run: _Run, jobs: list[dict], kind: str) -> dict:
    ids = set()
    for j in jobs:
        ids.update([p["clip_id"] for p in j["parts"]] if "parts" in j else [j["clip_id"]])
    present = [r for r in run.rows.values() if r["clip_id"] in ids]
    elapsed = time.perf_counter() - run.started
    s = {
        "output": str(run.root),
        "clips": len(present),
        "train": sum(r["split"] == "train" for r in present),
        "test": sum(r["split"] == "test" for r in present),
        "prepared_now": len(run.done_rows),
        "skipped_done": len(run.skipped_rows),
        "failed": len(run.failures),
        "failures": run.failures,
        "hours": sum(r["duration"] for r in present) / 3600.0,
        "seconds": elapsed,
        "bytes": _du(run.root),
        "speakers": sorted({r["speaker"] for r in present}),
        "warnings": [f"{r['clip_id']}: {w}" for r in run.done_rows for w in r.get("warnings", [])],
    }
    if kind == "video":
        frames = sum(r["num_frames"] for r in present)
        valid = sum(r["landmark_coverage"] * r["num_frames"] for r in present)
        s.update(frames=frames, coverage=valid / frames if frames else 0.0,
                 frames_now=run.frames_done,
                 fps_now=run.frames_done / elapsed if elapsed > 0 else 0.0,
                 per_clip={r["clip_id"]: round(r["landmark_coverage"], 4) for r in present})  # fmt: skip
    return s


def print_summary(s: dict, kind: str, file=None) -> None:
    file = file or sys.stdout
    mb = s["bytes"] / 1e6
    head = (f"prepared {s['output']}: {s['clips']} clips ({s['train']} train, {s['test']} test), "
            f"{s['hours']:.3f} h")  # fmt: skip
    if kind == "video":
        head += f", {s['frames']} frames, landmark coverage {100 * s['coverage']:.1f} %"
    print(head, file=file)
    line = (f"this run: {s['prepared_now']} clips prepared, {s['skipped_done']} already done, "
            f"{s['failed']} failed, {s['seconds']:.1f} s")  # fmt: skip
    if kind == "video" and s["frames_now"]:
        line += f" ({s['frames_now']} frames, {s['fps_now']:.1f} frames/s)"
    print(line + f"; {mb:.1f} MB on disk", file=file)
    if s.get("skipped_files"):
        from collections import Counter

        for reason, n in Counter(k["reason"] for k in s["skipped_files"]).most_common():
            print(f"skipped {n} files: {reason}", file=file)
    for w in s.get("warnings", [])[:10]:
        print(f"warning: {w}", file=file)
    if kind == "video":
        low = {k: v for k, v in s["per_clip"].items() if v < 0.99}
        if low:
            print("clips with landmarks on < 99 % of frames: "
                  + ", ".join(f"{k} {100 * v:.1f} %" for k, v in sorted(low.items())), file=file)
    for f in s["failures"][:20]:
        print(f"FAILED {f['source']}: {f['reason']}", file=file)
    if len(s["failures"]) > 20:
        print(f"... and {len(s['failures']) - 20} more in failures.jsonl", file=file)


# ---------------------------------------------------------------- CLI


def _fps_arg(text: str):
    if str(text).lower() == "source":
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame rate or 'source', got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a frame rate > 0, got {text}")
    return v


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {v}")
    return v



def add_prepare_parser(sub) -> argparse.ArgumentParser:
    """Register `prepare {video,mead,emotion-audio,cremad}` on the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", required=True, help="prepared dataset folder (created; re-runs resume)")
    common.add_argument("--workers", type=whole_number(1), default=min(2, os.cpu_count() or 1),
                        help="worker processes (default 2)")
    common.add_argument("--redo", action="store_true", help="prepare again even what is already done")
    common.add_argument("--quiet", action="store_true", help="no progress bar")

    vid = argparse.ArgumentParser(add_help=False)
    vid.add_argument("--fps", type=_fps_arg, default=DEFAULT_FPS,
                     help="frame rate to resample to, or 'source' to keep it (default 25)")
    vid.add_argument("--size", type=whole_number(16), default=256, help="crop side in pixels (default 256)")
    vid.add_argument("--max-seconds", type=positive_float, default=None,
                     help="use only the first N seconds of each video (quick checks)")
    vid.add_argument("--min-face-fraction", type=_fraction, default=0.5,
                     help="fail a video when a face is found on fewer frames (default 0.5)")
    vid.add_argument("--chunk-seconds", type=positive_float, default=CHUNK_SECONDS,
                     help="videos longer than this have face detection split across workers")

    p = sub.add_parser("prepare", help="turn videos, MEAD or emotion-labelled speech into a prepared dataset",
                       description=__doc__.split("\n\n")[0])
    src = p.add_subparsers(dest="source", required=True, metavar="{video,mead,emotion-audio,cremad}")

    v = src.add_parser("video", parents=[common, vid],
                       help="video files of one person (90/10 split by time, or whole files: --split)")
    v.add_argument("files", nargs="+", help="video files (or folders of them); audio inside or in a sibling .wav")
    v.add_argument("--split", choices=["time", "file", "test"], default="time",
                   help="time (default): the last --test-fraction of each file's time is test; file: the last "
                        "--test-fraction of the files (by name) are test, whole (short sentences, e.g. GRID); "
                        "test: every file is a whole test clip (held-out speakers)")
    v.add_argument("--test-fraction", type=_fraction, default=0.1,
                   help="with --split time, the last part of each file used as test; with --split file, the "
                        "fraction of the files (default 0.1)")
    v.add_argument("--speaker", default=None, help="speaker name (default: the files' folder name)")
    v.add_argument("--emotion", choices=list(EMOTIONS), default=None, help="emotion label of all files")
    v.add_argument("--level", type=int, default=None, help="emotion intensity label of all files")
    v.set_defaults(handler=cmd_prepare)

    m = src.add_parser("mead", parents=[common, vid], help="a MEAD-layout root (official test split)")
    m.add_argument("root", help="folder holding <ID>/video/... and <ID>/audio/...")
    m.add_argument("--speakers", default=None, help="comma-separated speaker ids (default: all)")
    m.add_argument("--view", default="front", help="camera view (default front)")
    m.add_argument("--emotions", default=None, help="comma-separated emotions (default: all)")
    m.add_argument("--levels", default=None, help="comma-separated levels, e.g. 3 (default: all)")
    m.set_defaults(handler=cmd_prepare)

    e = src.add_parser("emotion-audio", parents=[common], help="RAVDESS-style labelled speech (speaker split)")
    e.add_argument("root", help="folder with RAVDESS-named audio files (any depth)")
    e.add_argument("--test-speakers", default=None,
                   help="comma-separated actor numbers for the test split (default: the last quarter)")
    e.add_argument("--calm", choices=["skip", "neutral"], default="skip",
                   help="RAVDESS 'calm' has no MEAD class: skip it (default) or label it neutral")
    e.set_defaults(handler=cmd_prepare)

    c = src.add_parser("cremad", parents=[common, vid],
                       help="CREMA-D face clips <actor>_<sentence>_<EMO>_<level>.mp4 (emotion from the name, split "
                            "by actor)")
    c.add_argument("root", help="folder with CREMA-D-named videos (any depth), audio in a sibling .wav")
    c.add_argument("--test-speakers", default=None,
                   help="comma-separated actor numbers for the test split (default: the last fifth by number)")
    c.set_defaults(handler=cmd_prepare)
    p.set_defaults(handler=cmd_prepare)
    return p


def cmd_prepare(args) -> int:
    if args.source == "emotion-audio":
        items, skipped = emotion_audio_jobs(args.root, test_speakers=args.test_speakers, calm=args.calm)
        s = run_emotion_audio(items, skipped, args.output, workers=args.workers, redo=args.redo,
                              quiet=args.quiet)  # fmt: skip
        print_summary(s, "audio")
        train_spk = sorted({it["speaker"] for it in items if it["split"] == "train"}, key=int)
        test_spk = sorted({it["speaker"] for it in items if it["split"] == "test"}, key=int)
        print(f"speakers: train {','.join(train_spk)}; test {','.join(test_spk)}")
        return 0 if s["clips"] else 1
    if args.source == "cremad":
        jobs, skipped = cremad_jobs(args.root, test_speakers=args.test_speakers)
        for sk in skipped:
            print(f"skipped {sk['source']}: {sk['reason']}")
    elif args.source == "video":
        jobs = video_jobs(_expand_files(args.files), test_fraction=args.test_fraction,
                          speaker=args.speaker, emotion=args.emotion, level=args.level,
                          split=args.split)  # fmt: skip
    else:
        jobs = mead_jobs(args.root, speakers=args.speakers, view=args.view, emotions=args.emotions,
                         levels=args.levels)  # fmt: skip
    s = run_video_jobs(jobs, args.output, fps=args.fps, size=args.size, workers=args.workers,
                       max_seconds=args.max_seconds, min_face_fraction=args.min_face_fraction,
                       redo=args.redo, quiet=args.quiet, chunk_seconds=args.chunk_seconds)  # fmt: skip
    print_summary(s, "video")
    if args.source == "cremad":
        train_spk = sorted({j["speaker"] for j in jobs if j["parts"][0]["split"] == "train"}, key=int)
        test_spk = sorted({j["speaker"] for j in jobs if j["parts"][0]["split"] == "test"}, key=int)
        print(f"actors: train {','.join(train_spk)}; test {','.join(test_spk)}")
    return 0 if s["clips"] else 1
