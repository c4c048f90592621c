"""The web page's handler (talking_head.app), without a browser: what a generation returns, how bad uploads are
refused, and a live server (gradio_client) that keeps answering after a run of malformed calls."""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

gr = pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[app]'")

from conftest import REPO, voice_like  # noqa: E402
from talking_head.app import TalkingHeadApp, build_app  # noqa: E402
from talking_head.audio import probe_media  # noqa: E402

PHOTO = REPO / "assets" / "demo_identity.jpg"
SECONDS = 1.0  # speech length in these tests: 25 frames


def _wav(path: Path, seconds: float) -> str:
    sf.write(path, voice_like(seconds), 16000, subtype="PCM_16")
    return str(path)


def _png_header(path: Path, width: int, height: int) -> str:
    """A PNG whose header says width x height (a decompression bomb's shape) with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("app_files")
    (d / "notes.jpg").write_text("this is text, not a photo\n")
    (d / "notes.wav").write_text("this is text, not speech\n")
    (d / "empty.png").write_bytes(b"")
    (d / "empty.wav").write_bytes(b"")
    return {
        "speech": _wav(d / "speech.wav", SECONDS),
        "long": _wav(d / "long.wav", 5.0),
        "click": _wav(d / "click.wav", 0.01),  # shorter than one frame
        "text_photo": str(d / "notes.jpg"),
        "text_audio": str(d / "notes.wav"),
        "empty_photo": str(d / "empty.png"),
        "empty_audio": str(d / "empty.wav"),
        "huge": _png_header(d / "huge.png", 20000, 20000),
        "wide": _png_header(d / "wide.png", 12000, 9000),
    }


@pytest.fixture(scope="module")
def app(tiny_dpm_pipe):
    app = TalkingHeadApp(tiny_dpm_pipe, max_seconds=4.0, max_size=256)
    yield app
    shutil.rmtree(app.out_dir, ignore_errors=True)


def _duration(path) -> float:
    return probe_media(path)["duration"]


def test_photo_generation_returns_an_mp4_as_long_as_the_speech(app, files):
    path, info = app.generate(str(PHOTO), None, files["speech"], "auto", 2, 0)
    assert Path(path).suffix == ".mp4" and Path(path).parent == app.out_dir
    assert _duration(path) == pytest.approx(SECONDS, abs=0.1)
    assert "**Emotion:** none (auto; no classifier: neutral/null class)" in info
    assert "**Duration:** 1.00 s (25 frames at 25 fps" in info
    assert "still head from the photo" in info and "**Generated in:**" in info
    assert not list(app.out_dir.glob(".*.part"))  # the MP4 was written whole, then renamed


def test_video_upload_dubs_it_and_a_chosen_emotion_is_reported(app, files, tmp_path):
    from talking_head.image import load_image
    from talking_head.video import write_video

    frame = load_image(str(PHOTO))
    clip = write_video(tmp_path / "person.mp4", np.stack([frame] * 10), fps=25)
    path, info = app.generate(None, str(clip), files["speech"], "happy", 1, 3, mode="video")
    assert _duration(path) == pytest.approx(SECONDS, abs=0.1)
    assert "**Emotion:** happy (chosen)" in info and "dubbing the video" in info


@pytest.mark.parametrize("photo, speech, kwargs, message", [
    ("text_photo", "speech", {}, "the photo notes.jpg is not an image the app can read"),
    ("empty_photo", "speech", {}, r"the photo file empty.png is empty \(0 bytes\)"),
    ("huge", "speech", {}, r"the photo huge.png is too large \(over \d+ megapixels\)"),
    ("wide", "speech", {}, r"the photo wide.png is too large \(12000x9000 pixels\)"),
    (None, "speech", {}, "give a photo .* or a video"),
    ("photo", None, {}, "give the speech"),
    ("photo", "text_audio", {}, "the speech notes.wav is not a media file the app can read"),
    ("photo", "empty_audio", {}, r"the speech file empty.wav is empty \(0 bytes\)"),
    ("photo", "long", {}, r"the speech long.wav is 5.0 s long; this page takes up to 4 s"),
    ("photo", "click", {}, "shorter than one frame"),
    ("photo", "speech", {"emotion": "furious"}, "unknown emotion 'furious'"),
    ("photo", "speech", {"steps": 0}, "sampler steps must be a whole number from 1 to 50"),
    ("photo", "speech", {"seed": "abc"}, "seed must be a whole number"),
])
def test_bad_uploads_are_one_line_messages(app, files, photo, speech, kwargs, message):
    photo = str(PHOTO) if photo == "photo" else files.get(photo)
    with pytest.raises(gr.Error, match=message) as err:
        app.generate(photo, None, files.get(speech), **kwargs)
    text = err.value.message
    assert "\n" not in text and "Traceback" not in text
    assert str(Path(files["speech"]).parent) not in text  # upload names, not the server's paths


def test_a_photo_in_the_video_tab_is_refused(app, files):
    with pytest.raises(gr.Error, match="the video demo_identity.jpg is not a video file"):
        app.generate(None, str(PHOTO), files["speech"], mode="video")


def test_an_unexpected_failure_is_a_short_message(app, files, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(app, "_render", broken)
    with pytest.raises(gr.Error, match=r"failed unexpectedly \(KeyError\); the server log has the details"):
        app.generate(str(PHOTO), None, files["speech"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app):
    from talking_head.app import launch

    page = build_app(app)
    url = launch(page, port=_free_port(), block=False)
    yield url
    page.close()


def test_live_server_survives_twenty_malformed_calls_and_runs_one_at_a_time(server, app, files, monkeypatch):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    speech, photo = handle_file(files["speech"]), handle_file(str(PHOTO))
    bad = [  # (photo, speech, what the message says); None: a payload Gradio itself rejects (generic message)
        (handle_file(files["text_photo"]), speech, "notes.jpg is not an image"),
        (handle_file(files["empty_photo"]), speech, "empty.png is empty"),
        (handle_file(files["huge"]), speech, "huge.png is too large"),
        (handle_file(files["wide"]), speech, "wide.png is too large (12000x9000 pixels)"),
        (handle_file(files["speech"]), speech, "speech.wav is not an image"),  # speech as the photo
        (photo, handle_file(files["text_audio"]), "notes.wav is not a media file"),
        (photo, handle_file(files["long"]), "long.wav is 5.0 s long"),
        (photo, None, "give the speech"),
        (5, speech, None),  # wrong types
        (photo, "not a file", None),
    ]
    for picture, audio, message in bad * 2:  # 20 in a row
        with pytest.raises(Exception) as err:
            client.predict(picture, None, audio, "auto", 2, 0, "photo", api_name="/generate")
        assert type(err.value).__name__ == "AppError", err.value
        assert message is None or message in str(err.value)
    with urllib.request.urlopen(server, timeout=10) as page:
        assert page.status == 200

    # Two visitors at once: the second waits in the queue; generations never overlap.
    running, overlap, lock, render = [0], [0], threading.Lock(), app._render

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        try:
            time.sleep(0.5)
            return render(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app, "_render", counted)
    jobs = [client.submit(photo, None, speech, "auto", 2, seed, "photo", api_name="/generate")
            for seed in (1, 2)]
    results = [job.result(timeout=120) for job in jobs]
    assert overlap[0] == 1
    for path, info in results:
        assert _duration(path) == pytest.approx(SECONDS, abs=0.1) and "**Duration:** 1.00 s" in info


def test_the_page_has_one_queued_generate_endpoint_limited_to_one(app):
    page = build_app(app)
    generate = [fn for fn in page.fns.values() if fn.api_name == "generate"]
    assert len(generate) == 1 and generate[0].concurrency_limit == 1 and generate[0].queue


def test_cli_app_refuses_a_missing_pipeline_in_one_line(tmp_path, capsys):
    from talking_head.cli import main

    assert main(["app", "--pipeline", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("talking-head app: error: ") and err.count("\n") == 1 and "nope" in err
