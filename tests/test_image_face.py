"""Identity-frame loading, dlib landmarks and the project's face crop."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from talking_head.face import (
    FACE_CROP_SCALE,
    FaceLandmarkDetector,
    crop_face,
    detect_face_landmarks,
    dlib_available,
    face_crop_box,
    landmarks_to_crop,
    smooth_boxes,
)
from talking_head.image import load_image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OBAMA_CROP = DATA / "talking" / "obama" / "address_clip1.mp4"


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def gradient(h=80, w=96):
    """A colourful test image where every pixel differs from its neighbours."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


# ---------------------------------------------------------------- load_image


def test_rgb_array_and_png_path(tmp_path):
    img = gradient()
    assert load_image(img) is not None and np.array_equal(load_image(img), img)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), img)
    np.testing.assert_array_equal(load_image(Image.fromarray(img)), img)


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:32, :, 3] = 255  # top opaque red, bottom fully transparent
    rgba[32:40, :, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[-1, 0], [255, 255, 255])
    assert 220 < out[35, 0, 0] < 235 and 120 < out[35, 0, 1] < 135  # half blend
    np.testing.assert_array_equal(load_image(rgba), out)


def test_greyscale_forms(tmp_path):
    grey = gradient()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    expected = np.repeat(grey[..., None], 3, axis=2)
    for image in (tmp_path / "g.png", grey, grey[..., None], Image.fromarray(grey, "L")):
        np.testing.assert_array_equal(load_image(image), expected)


def test_16bit_tiff_and_png(tmp_path):
    y = np.linspace(0, 65535, 64 * 80).reshape(64, 80).astype(np.uint16)
    expected = np.round(y / 257.0).astype(np.uint8)
    for ext in ("tif", "png"):
        path = tmp_path / f"deep.{ext}"
        Image.fromarray(y).save(path)
        out = load_image(path)
        assert out.shape == (64, 80, 3)
        assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    rgb16 = np.stack([y, y // 2, y // 4], -1)
    out = load_image(rgb16)
    assert out[-1, -1].tolist() == [255, 127, 64]  # 32767 / 257 = 127.5-


def test_float_and_palette_images():
    img = gradient()
    np.testing.assert_array_equal(load_image(img / 255.0), img)
    np.testing.assert_array_equal(load_image((img / 255.0).astype(np.float32)), img)
    pal = Image.fromarray(img).convert("P")
    assert load_image(pal).shape == img.shape
    f_mode = Image.fromarray((img[..., 0] / 255.0).astype(np.float32), "F")
    np.testing.assert_array_equal(load_image(f_mode)[..., 0], img[..., 0])


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    img = gradient()
    chw = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    np.testing.assert_array_equal(load_image(chw), img)
    np.testing.assert_array_equal(load_image(chw[None]), img)  # batch of one
    np.testing.assert_array_equal(load_image(torch.from_numpy(img)), img)  # HWC uint8
    bf16 = chw.to(torch.bfloat16)
    np.testing.assert_array_equal(load_image(bf16), load_image(bf16.float()))


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="identity_frame"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="identity_frame .* could not be read as an image"):
        load_image(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="could not be read as an image"):
        load_image(tmp_path / "notes.png")
    wrong = r"identity_frame must be an RGB image, got shape \(64, 64, 2\)"
    with pytest.raises(ValueError, match=wrong):
        load_image(np.zeros((64, 64, 2), np.uint8))
    with pytest.raises(ValueError, match=r"must be an RGB image, got shape \(2, 64, 64, 3\)"):
        load_image(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"too small: 1x1 .*shape \(1, 1\).* at least 64"):
        load_image(np.zeros((1, 1), np.uint8))
    with pytest.raises(ValueError, match=r"photo is too small: 100x32"):
        load_image(np.zeros((32, 100, 3), np.uint8), name="photo")
    bad = np.zeros((64, 64, 3), np.float32)
    bad[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_image(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\].*\(x \+ 1\) / 2"):
        load_image(np.full((64, 64, 3), -1.0))
    with pytest.raises(ValueError, match="0..255"):
        load_image(np.full((64, 64, 3), 300))
    with pytest.raises(ValueError, match="identity_frame must be a file path"):
        load_image([[0, 1], [2, 3]])


# ---------------------------------------------------------------- crop geometry


def test_face_crop_box_geometry():
    pts = np.zeros((68, 2))
    pts[:, 0] = np.linspace(100, 200, 68)  # bbox 100 wide
    pts[:, 1] = np.linspace(50, 130, 68)  # 80 tall
    cx, cy, side = face_crop_box(pts, scale=2.0, shift=0.1)
    assert (cx, cy, side) == pytest.approx((150, 90 - 10, 200))
    assert face_crop_box(pts)[2] == pytest.approx(100 * FACE_CROP_SCALE)
    with pytest.raises(ValueError, match="68"):
        face_crop_box(pts[:10])
    with pytest.raises(ValueError, match="NaN"):
        face_crop_box(np.full((68, 2), np.nan))


def test_crop_size_and_point_mapping():
    img = gradient(200, 300)
    img[120:124, 190:194] = [255, 0, 255]  # a 4x4 magenta marker
    box = (180.0, 100.0, 64.0)  # integer-aligned, side == size: a pure shift
    crop = crop_face(img, box, size=64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, img[68:132, 148:212])
    u, v = landmarks_to_crop(np.array([[192.0, 122.0]]), box, 64)[0]  # marker centre
    assert crop[int(v), int(u)].tolist() == [255, 0, 255]
    # Shrinking 2x: the marker lands where landmarks_to_crop says.
    box2 = (180.5, 100.25, 128.0)
    crop2 = crop_face(img, box2, size=64)
    (u, v), = landmarks_to_crop(np.array([[192.0, 122.0]]), box2, 64)
    r, c = np.unravel_index(np.argmax(crop2[..., 2].astype(int) - crop2[..., 1]), crop2.shape[:2])
    assert abs(c + 0.5 - u) <= 1 and abs(r + 0.5 - v) <= 1
    # Corners map to corners (the normalisation of constants.py).
    corners = landmarks_to_crop(np.array([[116.5, 36.25], [244.5, 164.25]]), box2, 64)
    np.testing.assert_allclose(corners, [[0, 0], [64, 64]], atol=1e-4)


def test_out_of_image_box_is_edge_padded():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, 0] = [255, 0, 0]  # left column red
    img[0, :] = [0, 0, 255]  # top row blue
    img[0, 0] = [0, 255, 0]
    crop = crop_face(img, (20.0, 50.0, 80.0), size=80)  # sticks out 20 px on the left
    assert crop.shape == (80, 80, 3)
    assert (crop[:, :19] == [255, 0, 0]).all()  # replicated left edge
    assert (crop[:, 25:] == 0).all()
    corner = crop_face(img, (0.0, 0.0, 40.0), size=40)
    assert (corner[:19, :19] == [0, 255, 0]).all()
    with pytest.raises(ValueError, match="outside"):
        crop_face(img, (500.0, 50.0, 40.0))
    with pytest.raises(ValueError, match="positive side"):
        crop_face(img, (50.0, 50.0, 0.0))
    with pytest.raises(ValueError, match="box"):
        crop_face(img, (50.0, 50.0))


def test_smooth_boxes():
    const = np.tile([[100.0, 80.0, 150.0]], (30, 1))
    np.testing.assert_array_equal(smooth_boxes(const), const)
    rng = np.random.default_rng(0)
    t = np.arange(200)
    truth = np.stack([100 + 0.2 * t, 80 + 0 * t, 150 + 0.1 * t], 1)
    noisy = truth + rng.normal(0, 2.0, truth.shape)
    noisy[50] += 60  # one misdetection
    smooth = smooth_boxes(noisy, window=9)
    assert smooth.shape == noisy.shape
    assert np.diff(smooth, axis=0).std() < 0.3 * np.diff(noisy, axis=0).std()
    assert np.abs(smooth - truth)[5:-5].max() < 4  # the outlier is gone, motion is kept
    gaps = truth.copy()
    gaps[10:13] = np.nan
    np.testing.assert_allclose(smooth_boxes(gaps, window=1)[10:13], truth[10:13])
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        smooth_boxes(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="no finite row"):
        smooth_boxes(np.full((5, 3), np.nan))


# ---------------------------------------------------------------- dlib


def test_landmarks_on_astronaut(astronaut):
    pytest.importorskip("dlib")
    assert dlib_available()
    pts = detect_face_landmarks(astronaut)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    # The face of the astronaut photo spans roughly x 170-280, y 75-190.
    assert (pts[:, 0] > 160).all() and (pts[:, 0] < 290).all()
    assert (pts[:, 1] > 70).all() and (pts[:, 1] < 200).all()
    mouth, eyes = pts[48:68].mean(0), pts[36:48].mean(0)
    assert mouth[1] > eyes[1] + 30  # upright face: mouth well below the eyes
    # Detection on a downscaled copy gives the same landmarks (max_side path).
    big = np.asarray(Image.fromarray(astronaut).resize((1024, 1024), Image.BILINEAR))
    pts_big = FaceLandmarkDetector(max_side=512).detect(big)
    assert np.abs(pts_big / 2 - pts).mean() < 3


def test_no_face(astronaut):
    pytest.importorskip("dlib")
    with pytest.raises(ValueError, match="no face found in identity_frame"):
        detect_face_landmarks(np.full((128, 128, 3), 127, np.uint8))
    with pytest.raises(ValueError, match="no face found in photo"):
        detect_face_landmarks(np.zeros((96, 96), np.uint8), name="photo")
    assert FaceLandmarkDetector().detect(np.full((128, 128, 3), 255, np.uint8)) is None
    with pytest.raises(ValueError, match="uint8 RGB"):
        FaceLandmarkDetector().detect(np.zeros((64, 64), np.float32))


@pytest.mark.skipif(not OBAMA_CROP.exists(), reason="dev data not present")
def test_crop_matches_dataset_framing():
    """Cropping a frame that already is a dataset crop must (nearly) reproduce it."""
    pytest.importorskip("dlib")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(OBAMA_CROP))
    w, h = next(reader)["size"]
    boxes, detector = [], FaceLandmarkDetector()
    for i, raw in enumerate(reader):
        if i % 40 == 0:
            pts = detector.detect(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
            boxes.append(face_crop_box(pts))
        if len(boxes) == 4:
            break
    reader.close()
    cx, cy, side = np.mean(boxes, axis=0)
    assert abs(side / w - 1) < 0.1
    assert abs(cx - w / 2) < 0.08 * w and abs(cy - h / 2) < 0.08 * h


def test_missing_dlib_gives_install_hint(monkeypatch, astronaut):
    import talking_head.face as face

    monkeypatch.setattr(face, "dlib_available", lambda: False)
    hint = r"pip install 'talking-head\[face\]'.*identity_landmarks="
    with pytest.raises(ImportError, match=hint):
        face.detect_face_landmarks(astronaut)
