"""Image input: turn the identity frame, whatever its form, into uint8 RGB (H, W, 3)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Transparent pixels are composited onto white: cut-out portraits (the usual
# source of RGBA photos) are meant to be seen on a light page, and the
# anti-aliased hair edges of such cut-outs look natural on white but leave a
# dark halo on black.
RGBA_BACKGROUND = 255

# Floats slightly outside [0, 1] (rounding in a previous resize) are clipped;
# anything further out is a different convention and is rejected.
_FLOAT_TOLERANCE = 1e-3

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _shape_error(name: str, shape) -> ValueError:
    return ValueError(
        f"{name} must be an RGB image, got shape {tuple(shape)} (expected (H, W), "
        "(H, W, 1), (H, W, 3) or (H, W, 4); tensors may also be (C, H, W))"
    )


def _pil_to_array(img: Image.Image, name: str) -> np.ndarray:
    """A PIL image -> numpy array (H, W), (H, W, 3) or (H, W, 4), any dtype."""
    mode = img.mode
    if mode.startswith("I;16"):  # 16-bit greyscale PNG/TIFF
        return np.asarray(img.convert("I"), dtype=np.int64).astype(np.uint16)
    if mode == "I":
        # PIL uses 32-bit "I" for 16-bit files on some versions/formats; treat it
        # as 16-bit data, the only common source.
        arr = np.asarray(img, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"{name} is a 32-bit integer image with values outside 0..65535; "
                "convert it to 8-bit RGB first"
            )
        return arr.astype(np.uint16)
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"))
    if mode == "L":
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))  # 1, P, CMYK, YCbCr, LAB, HSV, ...


def _open_path(path, name: str) -> np.ndarray:
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(f"{name} file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{name} {p} could not be read as an image: it is a directory")
    try:
        with Image.open(p) as img:
            img.load()
            # Phone photos store their rotation in EXIF; apply it so the face is upright.
            img = ImageOps.exif_transpose(img)
            return _pil_to_array(img, name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(name):
            raise
        reason = str(err).split("\n")[0][:200] or type(err).__name__
        raise ValueError(f"{name} {p} could not be read as an image: {reason}") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"{name} {p} could not be read as an image: {err}") from None


def _tensor_to_array(t, name: str) -> np.ndarray:
    """torch tensor (C, H, W) or (H, W, C), optionally with a leading batch of 1."""
    t = t.detach().cpu()
    if t.dtype.is_floating_point:
        t = t.float()  # bfloat16 has no numpy dtype
    arr = t.numpy()
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    # Channels-first unless the last axis already looks like channels.
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    return arr


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        # 65535 / 257 = 255 exactly, so full scale maps to full scale.
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
            hint = " (for images in [-1, 1] pass (x + 1) / 2)" if lo < 0 else ""
            raise ValueError(
                f"{name} float values must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]{hint}"
            )
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name} integer values must be in 0..255 (or dtype uint16), got range [{lo}, {hi}]"
            )
        return arr.astype(np.uint8)
    raise ValueError(f"{name} has unsupported dtype {arr.dtype}")


def load_image(image, name: str = "identity_frame", min_size: int = 64) -> np.ndarray:
    """Return `image` as a C-contiguous uint8 RGB array of shape (H, W, 3).

    image: a path; a PIL.Image; a numpy array (H, W), (H, W, 1), (H, W, 3) or
        (H, W, 4) of uint8, uint16 (16-bit, scaled to 8-bit) or float in [0, 1];
        or a torch tensor (C, H, W) / (H, W, C), float in [0, 1] or uint8. A
        leading batch axis of size 1 is dropped. RGBA is composited onto white,
        greyscale is replicated to three channels, EXIF rotation is applied.
    min_size: the shortest side accepted, in pixels.
    """
    if isinstance(image, (str, os.PathLike)):
        arr = _open_path(image, name)
        name = f"{name} {os.fspath(image)}"  # errors below name the file
    elif isinstance(image, Image.Image):
        arr = _pil_to_array(image, name)
    elif type(image).__module__.startswith("torch"):
        arr = _tensor_to_array(image, name)
    elif isinstance(image, np.ndarray):
        arr = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
    else:
        raise ValueError(
            f"{name} must be a file path, PIL.Image, numpy array or torch tensor, "
            f"got {type(image).__name__}"
        )

    shape = tuple(arr.shape)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise _shape_error(name, shape)
    h, w = arr.shape[:2]
    if min(h, w) < min_size:
        raise ValueError(
            f"{name} is too small: {w}x{h} pixels (shape {shape}); "
            f"the shorter side must be at least {min_size} pixels"
        )

    arr = _to_uint8(arr, name)
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + RGBA_BACKGROUND * (1.0 - alpha)
        arr = np.rint(rgb).astype(np.uint8)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)
