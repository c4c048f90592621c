"""Audio decoding: every accepted form, every rejected one, and resampling quality."""

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talking_head.audio import ffmpeg_exe, load_audio, probe_media, resample
from talking_head.constants import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "assets" / "speech_demo.wav"


def sine(freq, rate, seconds=1.0, amp=0.5):
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)]


def ffmpeg(*args):
    """Encode a test file with the bundled ffmpeg."""
    cmd = [ffmpeg_exe(), "-nostdin", "-y", "-v", "error", *map(str, args)]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def wav440(tmp_path_factory):
    path = tmp_path_factory.mktemp("a") / "tone.wav"
    sf.write(path, sine(440, 16000), 16000, subtype="PCM_16")
    return path


# ---------------------------------------------------------------- files


def test_wav_at_target_rate_is_exact(wav440):
    x = load_audio(wav440)
    assert x.dtype == np.float32 and x.shape == (16000,)
    np.testing.assert_allclose(x, sine(440, 16000), atol=1 / 32768)


def test_path_as_str_and_pathlike(wav440):
    np.testing.assert_array_equal(load_audio(str(wav440)), load_audio(wav440))


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg")])
def test_flac_and_ogg(tmp_path, fmt, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, sine(440, 44100), 44100, format=fmt)
    x = load_audio(path)
    assert abs(len(x) - 16000) <= 1
    assert abs(peak_hz(x, 16000) - 440) < 3


@pytest.mark.parametrize("ext,codec", [("mp3", "libmp3lame"), ("m4a", "aac")])
def test_compressed_files_through_ffmpeg(tmp_path, wav440, ext, codec):
    path = tmp_path / f"tone.{ext}"
    ffmpeg("-i", wav440, "-c:a", codec, "-b:a", "96k", path)
    x = load_audio(path)
    # Encoder delay/padding may add a frame or two; the tone must survive.
    assert abs(len(x) - 16000) < 0.1 * 16000
    assert abs(peak_hz(x, 16000) - 440) < 3


def test_audio_track_of_mp4(tmp_path):
    path = tmp_path / "talk.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=1.5",
        "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000:duration=1.5",
        "-ac", "2", "-c:v", "libx264", "-c:a", "aac", "-shortest", path,
    )  # fmt: skip
    info = probe_media(path)
    assert info["has_audio"] and info["has_video"]
    assert info["audio_rate"] == 48000 and info["video_size"] == (64, 64) and info["fps"] == 25
    assert info["duration"] == pytest.approx(1.5, abs=0.05)
    x = load_audio(path)
    assert abs(len(x) / SAMPLE_RATE - 1.5) < 0.05
    assert abs(peak_hz(x, SAMPLE_RATE) - 660) < 3


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=0.4", "-c:v", "libx264", path)
    assert probe_media(path)["has_audio"] is False
    with pytest.raises(ValueError, match="has no audio stream"):
        load_audio(path)


@pytest.mark.parametrize("rate", [1000, 8000, 22050, 44100, 192000])
def test_any_file_rate(tmp_path, rate):
    path = tmp_path / "r.wav"
    freq = 300 if rate == 1000 else 1000
    sf.write(path, sine(freq, rate), rate, subtype="FLOAT")
    x = load_audio(path)
    assert abs(len(x) - 16000) <= 1
    assert abs(peak_hz(x, 16000) - freq) < 3


def test_eight_channel_file_is_averaged(tmp_path):
    path = tmp_path / "8ch.wav"
    data = np.stack([sine(440, 16000, amp=0.1 * (c + 1)) for c in range(8)], axis=1)
    sf.write(path, data, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), data.mean(axis=1), atol=1e-6)


def test_speech_asset():
    x = load_audio(SPEECH)
    assert 4 <= len(x) / SAMPLE_RATE <= 6
    assert sf.info(SPEECH).samplerate == 16000 and sf.info(SPEECH).channels == 1
    assert SPEECH.stat().st_size < 200_000
    assert 0.05 < np.abs(x).max() <= 1


def test_target_rate(wav440):
    x = load_audio(wav440, target_rate=8000)
    assert len(x) == 8000 and abs(peak_hz(x, 8000) - 440) < 3


# ---------------------------------------------------------------- arrays


def test_array_needs_sample_rate():
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(np.zeros(100, np.float32))


@pytest.mark.parametrize("layout", ["S2", "2S"])
def test_stereo_layouts(layout):
    left, right = sine(440, 16000, amp=0.6), sine(440, 16000, amp=0.2)
    st = np.stack([left, right], axis=1 if layout == "S2" else 0)
    np.testing.assert_allclose(load_audio(st, sample_rate=16000), (left + right) / 2, atol=1e-6)


def test_eight_channels_and_ambiguous_shapes():
    x = np.random.default_rng(0).uniform(-1, 1, (8, 4000)).astype(np.float32)
    np.testing.assert_allclose(load_audio(x, sample_rate=16000), x.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(load_audio(x.T, sample_rate=16000), x.mean(axis=0), atol=1e-6)
    for shape in [(3, 3), (40, 50)]:
        with pytest.raises(ValueError, match=r"shape \(%d, %d\)" % shape):
            load_audio(np.zeros(shape, np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 100\)"):
        load_audio(np.zeros((2, 3, 100), np.float32), sample_rate=16000)


@pytest.mark.parametrize(
    "dtype,scale,offset",
    [(np.int16, 32767, 0), (np.int32, 2**31 - 1, 0), (np.uint8, 127, 128)],
)
def test_integer_pcm_is_scaled(dtype, scale, offset):
    ref = sine(440, 16000, amp=0.9)
    ints = (np.round(ref.astype(np.float64) * scale) + offset).astype(dtype)
    x = load_audio(ints, sample_rate=16000)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, ref, atol=2 / min(scale, 127) if dtype == np.uint8 else 1e-4)


def test_float64_kept_and_warns_on_huge_floats():
    np.testing.assert_allclose(load_audio(np.full(100, 0.25), sample_rate=16000), 0.25)
    with pytest.warns(UserWarning, match="outside"):
        load_audio(np.full(100, 3000.0, np.float32), sample_rate=16000)


@pytest.mark.parametrize("rate", [1000, 44100, 48000, 192000])
def test_array_rates_keep_frequency(rate):
    freq = 250 if rate == 1000 else 1000
    x = load_audio(sine(freq, rate, seconds=0.5), sample_rate=rate)
    assert abs(len(x) - 8000) <= 1
    assert abs(peak_hz(x, SAMPLE_RATE) - freq) < 4


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    ref = sine(440, 48000)
    x = load_audio(torch.from_numpy(ref), sample_rate=48000)
    np.testing.assert_allclose(x, resample(ref, 48000, 16000), atol=1e-6)
    st = torch.from_numpy(np.stack([ref, ref])).requires_grad_(True)
    np.testing.assert_allclose(load_audio(st, sample_rate=48000), x, atol=1e-6)
    ints = torch.from_numpy((ref * 32767).astype(np.int16))
    np.testing.assert_allclose(load_audio(ints, sample_rate=48000), x, atol=1e-3)
    assert load_audio(torch.from_numpy(ref).half(), sample_rate=16000).dtype == np.float32


def test_resample_keeps_sine_frequency():
    x = sine(1000, 44100, seconds=2.0)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32 and len(y) == 32000
    assert abs(peak_hz(y, 16000) - 1000) < 1
    assert np.abs(y[1000:-1000]).max() == pytest.approx(0.5, abs=0.02)  # no gain change
    assert resample(x, 44100, 44100) is not None and len(resample(x, 44100, 44100)) == len(x)


# ---------------------------------------------------------------- errors


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(ValueError, match="directory"):
        load_audio(tmp_path)


def test_undecodable_files(tmp_path):
    empty = tmp_path / "zero.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    jpeg = tmp_path / "photo.wav"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(jpeg, format="JPEG")
    for path in (empty, text, jpeg):
        with pytest.raises(ValueError, match=f"audio file .*{path.name} could not be decoded"):
            load_audio(path)


def test_truncated_wav(tmp_path, wav440):
    data = wav440.read_bytes()
    header_cut = tmp_path / "hdr.wav"
    header_cut.write_bytes(data[:30])
    with pytest.raises(ValueError, match="could not be decoded"):
        load_audio(header_cut)
    # Cut inside the samples: what is there is decoded, with a warning.
    data_cut = tmp_path / "half.wav"
    data_cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="truncated"):
        x = load_audio(data_cut)
    np.testing.assert_allclose(x, sine(440, 16000)[: len(x)], atol=1 / 32768)
    assert 7900 < len(x) < 8100


def test_wav_with_no_samples(tmp_path):
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="audio is empty"):
        load_audio(path)


def test_bad_arrays():
    with pytest.raises(ValueError, match="audio is empty"):
        load_audio(np.zeros(0, np.float32), sample_rate=16000)
    for bad in (np.nan, np.inf):
        x = np.zeros(100, np.float32)
        x[5] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            load_audio(x, sample_rate=16000)
    with pytest.raises(ValueError, match="dtype"):
        load_audio(np.zeros(100, np.complex64), sample_rate=16000)
    with pytest.raises(ValueError, match="speech.*shape"):
        load_audio(np.float32(1.0), sample_rate=16000, name="speech")


@pytest.mark.parametrize("rate", [0, -16000, 16, 16000.5, float("nan"), "16k"])
def test_bad_sample_rates(rate):
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(np.zeros(100, np.float32), sample_rate=rate)


def test_probe_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe_media(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_text("garbage")
    with pytest.raises(ValueError, match="could not be read"):
        probe_media(bad)


def test_no_warning_on_clean_file(wav440):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(wav440)


def test_ffmpeg_downmix_is_the_channel_mean_like_soundfile(tmp_path):
    """The same stereo audio decodes identically through soundfile and through ffmpeg."""
    left, right = sine(440, 16000, amp=0.6), sine(440, 16000, amp=0.2)
    wav = tmp_path / "st.wav"
    sf.write(wav, np.stack([left, right], 1), 16000, subtype="FLOAT")
    mka = tmp_path / "st.mka"  # lossless FLAC in Matroska: soundfile cannot read it
    ffmpeg("-i", wav, "-c:a", "flac", "-sample_fmt", "s32", mka)
    via_ffmpeg, via_soundfile = load_audio(mka), load_audio(wav)
    np.testing.assert_allclose(via_ffmpeg, via_soundfile, atol=1e-4)
    np.testing.assert_allclose(via_soundfile, (left + right) / 2, atol=1e-6)
