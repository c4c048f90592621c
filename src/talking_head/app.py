"""`talking-head app`: a web page to try the pipeline (Gradio).

    talking-head app [--pipeline DIR] [--host 127.0.0.1] [--port 7860] [--max-seconds 60]

Upload (or take with the webcam) a photo for a still head, or a video to dub; upload or record speech; press
Generate and watch the MP4. The pipeline is loaded once at start; one generation runs at a time (Gradio's
queue shows a second visitor their place). Every error in what was uploaded comes back as a one-line message
on the page. Nothing reaches the network: no analytics, no share link, fonts served by the app itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from talking_head.cli_common import emotion_line  # noqa: E402
from talking_head.constants import DEFAULT_FPS, EMOTIONS, NO_EMOTION, SAMPLE_RATE  # noqa: E402

log = logging.getLogger("talking_head.app")

AUTO = "auto"
EMOTION_CHOICES = (AUTO, *EMOTIONS, NO_EMOTION)
MAX_STEPS = 50
MAX_PHOTO_SIDE = 10_000  # pixels; the output is scaled to max_size anyway
MAX_PHOTO_PIXELS = 50_000_000
MAX_UPLOAD = "200mb"
KEEP_OUTPUTS = 8  # finished MP4s kept in the app's folder (Gradio serves its own copies)
T_START, MIN_SIZE = 300, 256  # the CLI's defaults
# What the pipeline, the audio/image/video readers and the CLI raise for bad input: shown as the message.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, RuntimeError)


@dataclass(frozen=True)
class Upload:
    """An uploaded file: where the server keeps it, and the name the visitor knows it by."""

    path: str
    name: str


def _upload(value, what: str) -> Upload | None:
    """A Gradio file payload (a FileData dict, as `preprocess=False` passes it) or a plain path -> Upload."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        file = value["video"] if isinstance(value.get("video"), dict) else value  # a Video payload may wrap it
        path, name = file.get("path"), file.get("orig_name")
    elif isinstance(value, (str, os.PathLike)):
        path, name = os.fspath(value), None
    else:
        raise gr.Error(f"the {what} upload is not a file (got {type(value).__name__})", print_exception=False)
    if not path or not os.path.isfile(path):
        raise gr.Error(f"the {what} upload did not arrive; upload it again", print_exception=False)
    name = str(name or Path(path).name)
    if os.path.getsize(path) == 0:
        raise gr.Error(f"the {what} file {name} is empty (0 bytes)", print_exception=False)
    return Upload(str(path), name)


def _whole(value, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{what} must be a whole number, got {value!r}", print_exception=False) from None
    if not (np.isfinite(number) and number == int(number) and low <= number <= high):
        raise gr.Error(f"{what} must be a whole number from {low} to {high}, got {value!r}", print_exception=False)
    return int(number)


def _emotion(value) -> str | None:
    """The dropdown's choice -> the pipeline's `emotion=` (None: the classifier's, or the null class)."""
    key = str(value or AUTO).strip().lower()
    if key not in EMOTION_CHOICES:
        raise gr.Error(f"unknown emotion {value!r}; choose one of {', '.join(EMOTION_CHOICES)}", print_exception=False)
    return None if key == AUTO else key


def _pick_identity(photo, video, mode: str) -> tuple[Upload, str]:
    """The person: (upload, "photo" | "video"). Both given: the open tab's wins."""
    still, moving = _upload(photo, "photo"), _upload(video, "video")
    if still and moving:
        return (moving, "video") if mode == "video" else (still, "photo")
    if still or moving:
        return (still, "photo") if still else (moving, "video")
    raise gr.Error("give a photo (a still head) or a video (dubbing) of the person", print_exception=False)


def _check_photo(photo: Upload) -> None:
    """Refuse what is no image, or too large to decode, before the pipeline reads it (PIL reads the header only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(photo.path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise _too_large(photo, f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels") from None
    except (OSError, SyntaxError, ValueError):
        raise gr.Error(f"the photo {photo.name} is not an image the app can read (png, jpg, webp, ...)",
                       print_exception=False) from None
    if max(width, height) > MAX_PHOTO_SIDE or width * height > MAX_PHOTO_PIXELS:
        raise _too_large(photo, f"{width}x{height} pixels")


def _too_large(photo: Upload, size: str) -> gr.Error:
    return gr.Error(f"the photo {photo.name} is too large ({size}); the app takes up to {MAX_PHOTO_SIDE} pixels "
                    f"a side and {MAX_PHOTO_PIXELS // 1_000_000} megapixels", print_exception=False)


def _probe(upload: Upload, what: str) -> dict:
    from talking_head.audio import probe_media

    try:
        return probe_media(upload.path)
    except ValueError:
        raise gr.Error(f"the {what} {upload.name} is not a media file the app can read",
                       print_exception=False) from None


def _too_long(seconds: float, what: str, upload: Upload, limit: float) -> gr.Error:
    return gr.Error(f"the {what} {upload.name} is {seconds:.1f} s long; this page takes up to {limit:g} s",
                    print_exception=False)


def _check_video(video: Upload, limit: float) -> None:
    from talking_head.identity import VIDEO_SUFFIXES

    if not video.path.lower().endswith(VIDEO_SUFFIXES):
        raise gr.Error(f"the video {video.name} is not a video file ({', '.join(s[1:] for s in VIDEO_SUFFIXES)})",
                       print_exception=False)
    info = _probe(video, "video")
    if not info["has_video"]:
        raise gr.Error(f"the video {video.name} has no picture (no video stream)", print_exception=False)
    if info["duration"] is not None and info["duration"] > limit:
        raise _too_long(info["duration"], "video", video, limit)


def _read_speech(speech: Upload, limit: float) -> np.ndarray:
    """Decode the speech at 16 kHz, refusing anything longer than `limit` seconds (probed before decoding)."""
    from talking_head.audio import load_audio

    info = _probe(speech, "speech")
    if not info["has_audio"]:
        raise gr.Error(f"the speech {speech.name} has no audio track", print_exception=False)
    if info["duration"] is not None and info["duration"] > limit + 0.5:
        raise _too_long(info["duration"], "speech", speech, limit)
    waveform = load_audio(speech.path, name="speech")
    if len(waveform) / SAMPLE_RATE > limit:
        raise _too_long(len(waveform) / SAMPLE_RATE, "speech", speech, limit)
    return waveform


def _clean(err: BaseException, uploads) -> str:
    """One line for the page: the server's temporary paths become the names the visitor uploaded."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for upload in uploads:
        if upload is not None:
            text = text.replace(upload.path, upload.name)
    return text.replace("identity_frame", "photo").replace("identity_video", "video")


class TalkingHeadApp:
    """The loaded pipeline and the page's one handler, `generate` (callable without a server, for tests)."""

    def __init__(self, pipe, max_seconds: float = 60.0, max_size: int = 1024, device: str = "cpu"):
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.pipe, self.max_seconds, self.max_size, self.device = pipe, float(max_seconds), int(max_size), device
        self.out_dir = Path(tempfile.mkdtemp(prefix="talking_head_app_"))

    @classmethod
    def load(cls, pipeline_dir, max_seconds: float = 60.0, max_size: int = 1024, device: str = "cpu"):
        """Load the pipeline once, with the demo's sampler (DPM-Solver)."""
        import torch

        from talking_head.cli_common import DEMO_SAMPLER
        from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
        from talking_head.schedulers.scheduling_sdedit import scheduler_from_name

        from talking_head.argtypes import check_device

        check_device(device)
        pipe = TalkingHeadPipeline.from_pretrained(pipeline_dir)
        pipe.scheduler = scheduler_from_name(DEMO_SAMPLER, pipe.scheduler)
        pipe.to(device=device)
        return cls(pipe, max_seconds=max_seconds, max_size=max_size, device=device)

    @property
    def has_classifier(self) -> bool:
        return self.pipe.emotion_classifier is not None

    def generate(self, photo, video, speech, emotion=AUTO, steps=10, seed=0, mode="photo",
                 progress=gr.Progress(track_tqdm=True)):
        """The Generate button: -> (MP4 path, a Markdown line of emotion, duration and generation time)."""
        started = time.perf_counter()
        uploads = []
        try:
            return self._generate(photo, video, speech, emotion, steps, seed, mode, progress, started, uploads)
        except gr.Error as err:
            log.info("refused: %s", err.message)
            raise
        except USER_ERRORS as err:
            message = _clean(err, uploads)
            log.info("refused: %s", message)
            raise gr.Error(message, print_exception=False) from None
        except Exception as err:  # a bug, not the visitor's input: a short message here, the traceback in the log
            log.exception("generation failed")
            raise gr.Error(f"the generation failed unexpectedly ({type(err).__name__}); the server log has the "
                           "details", print_exception=False) from None

    def _generate(self, photo, video, speech, emotion, steps, seed, mode, progress, started, uploads):
        identity, kind = _pick_identity(photo, video, mode)
        uploads.append(identity)
        audio = _upload(speech, "speech")
        if audio is None:
            raise gr.Error("give the speech: upload an audio file or record one", print_exception=False)
        uploads.append(audio)
        emotion = _emotion(emotion)
        steps, seed = _whole(steps, "sampler steps", 1, MAX_STEPS), _whole(seed, "seed", 0, 2**32 - 1)
        progress(0, desc="reading the inputs")
        if kind == "photo":
            _check_photo(identity)
        else:
            _check_video(identity, self.max_seconds)
        waveform = _read_speech(audio, self.max_seconds)
        progress(0.01, desc="finding the face and the lip motion")
        out = self._output_path()
        result, (height, width) = self._render(waveform, identity.path, emotion, steps, seed, out)
        self._prune()
        return str(out), self._describe(result, emotion, kind, width, height, time.perf_counter() - started)

    def _render(self, waveform, identity: str, emotion, steps: int, seed: int, out: Path):
        """The CLI's generation (talking_head.cli._generate): frames stream into the MP4 (a temp file, renamed)."""
        import torch

        from talking_head.video import VideoWriter

        generator = torch.Generator(device="cpu").manual_seed(seed)
        with VideoWriter(out, fps=DEFAULT_FPS, audio=waveform, min_size=MIN_SIZE) as writer:
            result = self.pipe(waveform, identity, sample_rate=SAMPLE_RATE, emotion=emotion, t_start=T_START,
                               num_inference_steps=steps, fps=DEFAULT_FPS, max_size=self.max_size,
                               generator=generator, output_type=None, frames_callback=lambda f: writer.write(f[0]),
                               frames_callback_dtype="uint8")
        return result, writer.frame_size or (0, 0)

    def _output_path(self) -> Path:
        return self.out_dir / f"talking-head-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.mp4"

    def _prune(self) -> None:
        for old in sorted(self.out_dir.glob("talking-head-*.mp4"))[:-KEEP_OUTPUTS]:
            old.unlink(missing_ok=True)

    def _describe(self, result, emotion, kind: str, width: int, height: int, seconds: float) -> str:
        frames = int(result.landmarks.shape[1])
        shown = result.emotion[0]
        strengths = getattr(result, "emotion_strength", None)
        strength = strengths[0] if strengths else None
        if emotion is not None:
            line = f"{shown} (chosen)" + (f", strength {float(strength):.2f}" if strength is not None else "")
            if result.emotion_probs is not None:
                probs = np.asarray(result.emotion_probs)[0]
                line += f"; the classifier heard {EMOTIONS[int(np.argmax(probs))]} ({float(np.max(probs)):.2f})"
        elif result.emotion_probs is None:
            line = f"{shown} (auto; no classifier: neutral/null class)"
        else:  # what the classifier heard, and what was drawn: only as strongly as it is sure (issue 38)
            line = emotion_line(result)
        mode = "still head from the photo" if kind == "photo" else "dubbing the video"
        return (f"**Emotion:** {line}  \n"
                f"**Duration:** {frames / DEFAULT_FPS:.2f} s ({frames} frames at {DEFAULT_FPS:g} fps, "
                f"{width}x{height})  \n"
                f"**Generated in:** {seconds:.1f} s on {self.device} ({mode})")


# ---------------------------------------------------------------------------------------------- the page
def _assets() -> Path:
    from talking_head.cli_common import assets_dir

    return assets_dir()


def _examples() -> list[list[str]]:
    """The bundled photo and speech (the demo's), one click away."""
    assets = _assets()
    pairs = [(assets / "demo_identity.jpg", assets / "demo_speech.wav")]
    return [[str(photo), str(speech)] for photo, speech in pairs if photo.is_file() and speech.is_file()]


def _emotion_help(app: TalkingHeadApp) -> str:
    if app.has_classifier:
        return "auto: the emotion the pipeline's classifier hears in the speech; none: no emotion (null class)"
    return "auto: this pipeline has no classifier: neutral/null class; none: no emotion (null class)"


def _inputs(app: TalkingHeadApp):
    """The left column: the person (photo or video tab), the speech, the settings and the button."""
    mode = gr.State("photo")
    with gr.Tabs():
        with gr.Tab("Photo: still head") as photo_tab:
            photo = gr.Image(label="Photo of the person", type="filepath", sources=["upload", "webcam", "clipboard"],
                             elem_id="photo", height=280)
        with gr.Tab("Video: dubbing") as video_tab:
            video = gr.Video(label="Video of the person to dub", sources=["upload", "webcam"], elem_id="video",
                             height=280)
    photo_tab.select(lambda: "photo", None, mode, queue=False, api_visibility="private")
    video_tab.select(lambda: "video", None, mode, queue=False, api_visibility="private")
    speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath", elem_id="speech")
    if _examples():
        gr.Examples(_examples(), inputs=[photo, speech], label="Or try the bundled photo and speech")
    emotion = gr.Dropdown(list(EMOTION_CHOICES), value=AUTO, label="Emotion", info=_emotion_help(app),
                          elem_id="emotion")
    with gr.Row():
        steps = gr.Slider(1, MAX_STEPS, value=10, step=1, label="Sampler steps (DPM-Solver)", elem_id="steps")
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    return [photo, video, speech, emotion, steps, seed, mode], button


def build_app(app: TalkingHeadApp) -> gr.Blocks:
    """The page: inputs on the left, the MP4 and what was made on the right."""
    with gr.Blocks(title="talking-head", analytics_enabled=False) as page:
        gr.Markdown("# talking-head\nA photo speaks the speech you give it (a video is dubbed: only the lower "
                    f"face is redrawn). Speech up to {app.max_seconds:g} s; one generation at a time.")
        with gr.Row():
            with gr.Column():
                inputs, button = _inputs(app)
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, buttons=["download"], elem_id="result")
                info = gr.Markdown(elem_id="info")
        button.click(app.generate, inputs, [result, info], preprocess=False, api_name="generate",
                     concurrency_limit=1)
    return page.queue(default_concurrency_limit=1)


def launch(page: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page; no share link, no analytics, no server-side rendering (no Node), nothing from the network."""
    examples = [file for pair in _examples() for file in pair]  # served from the package, wherever it is
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    show_error=False, max_file_size=MAX_UPLOAD, allowed_paths=examples, ssr_mode=False,
                    mcp_server=False, quiet=True)
    except OSError as err:  # the port is taken, or the address is not this machine's
        reason = str(err).split(". ")[0]
        raise RuntimeError(f"cannot serve on {host}:{port}: {reason} (--port picks another)") from None
    url = f"http://{host}:{page.server_port}"
    print(f"talking-head app: serving on {url} (Ctrl-C stops it)", flush=True)
    if not block:
        return url
    try:
        while True:
            time.sleep(1)
    finally:
        page.close()


def serve(pipeline_dir, host: str = "127.0.0.1", port: int = 7860, max_seconds: float = 60.0,
          max_size: int = 1024, device: str = "cpu") -> int:
    """`talking-head app`: load the pipeline once, then serve the page until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    started = time.perf_counter()
    app = TalkingHeadApp.load(pipeline_dir, max_seconds=max_seconds, max_size=max_size, device=device)
    log.info("loaded the pipeline %s in %.1f s", pipeline_dir, time.perf_counter() - started)
    try:
        launch(build_app(app), host=host, port=port)
    finally:
        shutil.rmtree(app.out_dir, ignore_errors=True)
    return 0
