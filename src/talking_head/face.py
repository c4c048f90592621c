"""Face landmarks (dlib, iBUG-68) and THE square face crop of the project.

Everything that crops a face - inference on an identity photo, data
preparation of training videos, evaluation - goes through `face_crop_box` and
`crop_face`, so a model always sees faces framed the same way.

Coordinates: continuous pixel coordinates, x to the right, y down. An image of
width W spans [0, W]; pixel column i covers [i, i + 1) and has its centre at
i + 0.5. This is the convention of constants.normalize_landmarks, where a
crop's top-left corner is (0, 0) and its bottom-right corner (size, size).

dlib is an optional dependency (`pip install 'talking-head[face]'`, which
brings dlib-bin and face-recognition-models); its 68-point model is licensed
for non-commercial use only, so it is used for data preparation and
evaluation, and inference can skip it by passing identity landmarks.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import median_filter, uniform_filter1d

from talking_head.constants import NUM_LANDMARKS
from talking_head.image import load_image

# Calibrated on the project's dev data so that our crops frame faces like the
# dataset's: talking/obama/address_clip1.mp4 is a ready-made 256x256 face crop.
# On 41 of its frames the crop side is 1.90 +- 0.04 times the landmarks'
# bounding-box size (the larger of width and height; range 1.78-1.97), and the
# bounding-box centre sits 0.15 +- 0.06 box sizes (20 px) below the crop
# centre, i.e. the crop shows more forehead and hair above the eyebrows than
# neck below the chin. Cropping the wide 1280x720 clip
# (address_wide_720p.mp4, same speaker and setting) with these numbers gives
# the same framing.
FACE_CROP_SCALE = 1.9
FACE_CROP_SHIFT = 0.15

INSTALL_HINT = (
    "face landmark detection needs dlib: pip install 'talking-head[face]' "
    "(installs dlib-bin and face-recognition-models), or pass identity_landmarks= "
    "to skip detection"
)


# ---------------------------------------------------------------- detection


def _predictor_path() -> Path | None:
    """The 68-point model shipped by face-recognition-models, found without importing it.

    Importing the package fails under current setuptools (it imports
    pkg_resources), so its folder is located through importlib instead.
    """
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.is_file():
            return path
    return None


def dlib_available() -> bool:
    """True when dlib and the 68-point landmark model are both installed."""
    return importlib.util.find_spec("dlib") is not None and _predictor_path() is not None


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _load_models_once(predictor_path: str):
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path)


def _load_models(predictor_path: str):
    """dlib's detector and predictor, loaded once per process (the .dat file is 100 MB, ~1-2 s)."""
    with _LOAD_LOCK:  # a preload thread and a first detection share one load
        return _load_models_once(predictor_path)


def preload_face_models() -> threading.Thread | None:
    """Start loading dlib's models in a background thread (a pipeline does it when it is loaded), so the
    first face detection does not wait 1-2 s for them; None when dlib is not installed."""
    path = _predictor_path() if importlib.util.find_spec("dlib") is not None else None
    if path is None:
        return None
    thread = threading.Thread(target=_load_models, args=(str(path.resolve()),), name="dlib-preload", daemon=True)
    thread.start()
    return thread


class FaceLandmarkDetector:
    """dlib's HOG frontal face detector + its 68-point shape predictor.

    upsample: the most times the image is upsampled before detection; detection
        starts without upsampling and upsamples only if no face was found (0
        finds faces down to about 80 pixels wide, 1 down to about 40).
    max_side: images with a longer side are downscaled for the face *detection*
        only (detection time grows with the pixel count; the predictor then runs
        on the full-resolution image, so landmark precision is not lost).
    predictor_path: a shape_predictor_68_face_landmarks.dat to use instead of
        the one from face-recognition-models.
    Models are loaded on the first call to `detect` and shared by all instances.
    """

    def __init__(self, upsample: int = 1, max_side: int = 800, predictor_path=None):
        if int(upsample) != upsample or upsample < 0:
            raise ValueError(f"upsample must be a non-negative integer, got {upsample!r}")
        if int(max_side) != max_side or max_side < 64:
            raise ValueError(f"max_side must be an integer >= 64, got {max_side!r}")
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.predictor_path = Path(predictor_path) if predictor_path is not None else None
        self._detector = None
        self._predictor = None

    def _load(self):
        try:
            import dlib  # noqa: F401
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        path = self.predictor_path or _predictor_path()
        if path is None:
            raise ImportError(INSTALL_HINT + " (the 68-point model file was not found)")
        if not path.is_file():
            raise FileNotFoundError(f"landmark model file not found: {path}")
        self._detector, self._predictor = _load_models(str(path.resolve()))

    def detect(self, image_rgb_uint8) -> np.ndarray | None:
        """(68, 2) float32 landmarks (x, y) of the largest face, or None if no face is found."""
        if self._detector is None:
            self._load()
        import dlib

        img = np.ascontiguousarray(image_rgb_uint8)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"detect expects a uint8 RGB image (H, W, 3), got {img.dtype} {tuple(img.shape)}; "
                "use talking_head.image.load_image first"
            )
        h, w = img.shape[:2]
        factor = min(1.0, self.max_side / max(h, w))
        small = img
        if factor < 1.0:
            size = (max(1, round(w * factor)), max(1, round(h * factor)))
            small = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        # Try the cheap pass first and upsample only when it finds nothing: a
        # 512-pixel photo takes ~0.05 s without upsampling and ~0.17 s with,
        # and upsampling also brings small false positives (on the astronaut
        # photo, a mission patch nearly as large as the face).
        for level in range(self.upsample + 1):
            rects = self._detector(small, level)
            if len(rects):
                break
        else:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        if factor < 1.0:
            r = dlib.rectangle(
                round(r.left() / factor), round(r.top() / factor),
                round(r.right() / factor), round(r.bottom() / factor),
            )  # fmt: skip
        shape = self._predictor(img, r)
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        # dlib returns integer pixel indices; +0.5 moves them to pixel centres
        # in this module's continuous coordinates.
        return pts + 0.5


@functools.lru_cache(maxsize=1)
def _shared_detector() -> FaceLandmarkDetector:
    return FaceLandmarkDetector()


def detect_face_landmarks(image, name: str = "identity_frame") -> np.ndarray:
    """(68, 2) float32 pixel landmarks of the largest face in `image` (anything load_image takes).

    Raises ValueError("no face found in <name>") when there is none, and
    ImportError with the install hint when dlib is missing.
    """
    rgb = load_image(image, name=name)
    if not dlib_available():
        raise ImportError(INSTALL_HINT)
    pts = _shared_detector().detect(rgb)
    if pts is None:
        raise ValueError(f"no face found in {name}")
    return pts


# ---------------------------------------------------------------- crop


def _check_landmarks(landmarks, name: str = "landmarks") -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 2, got {tuple(pts.shape)}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return pts


def _check_box(box) -> tuple[float, float, float]:
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (3,):
        raise ValueError(f"box must be (cx, cy, side), got shape {tuple(b.shape)}")
    if not np.isfinite(b).all() or b[2] <= 0:
        raise ValueError(f"box must be finite with a positive side, got {tuple(b.tolist())}")
    return float(b[0]), float(b[1]), float(b[2])


def face_crop_box(
    landmarks, scale: float = FACE_CROP_SCALE, shift: float = FACE_CROP_SHIFT
) -> tuple[float, float, float]:
    """(cx, cy, side) of the square face crop for one frame's landmarks.

    The side is `scale` times the larger of the landmarks' bounding-box width
    and height (using the larger makes the crop insensitive to an open mouth
    or a turned head changing only one of them). The centre is the bounding
    box centre moved up by `shift` times that size, to include the forehead.
    """
    pts = _check_landmarks(landmarks)
    if pts.shape[0] != NUM_LANDMARKS:
        raise ValueError(f"landmarks must have shape ({NUM_LANDMARKS}, 2), got {pts.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = float(max(hi - lo))
    if size <= 0:
        raise ValueError("landmarks are all at one point; cannot size a face crop")
    cx, cy = (lo + hi) / 2.0
    return float(cx), float(cy - shift * size), float(scale * size)


def smooth_boxes(boxes: np.ndarray, window: int = 9) -> np.ndarray:
    """Temporally smooth per-frame crop boxes (T, 3) so a clip's crop does not jitter.

    A running median (window frames) first removes single-frame outliers such
    as a misdetection, then a running mean of the same width removes the
    remaining frame-to-frame jitter of the landmarks. Edges repeat the first
    and last box, so a constant box stays exactly constant. Rows that are NaN
    (frames where no face was found) are filled by linear interpolation from
    their neighbours before smoothing. window = 9 is 0.36 s at 25 fps: long
    enough to hide landmark jitter, short enough to follow head motion.
    """
    b = np.array(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 3 or b.shape[0] == 0:
        raise ValueError(f"boxes must have shape (T, 3) with T >= 1, got {tuple(b.shape)}")
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    missing = ~np.isfinite(b).all(axis=1)
    if missing.all():
        raise ValueError("boxes has no finite row (no face in any frame)")
    if missing.any():
        t = np.arange(len(b))
        for k in range(3):
            b[missing, k] = np.interp(t[missing], t[~missing], b[~missing, k])
    if window == 1 or len(b) == 1:
        return b
    b = median_filter(b, size=(int(window), 1), mode="nearest")
    return uniform_filter1d(b, size=int(window), axis=0, mode="nearest")


def fill_missing_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks with every frame without a face (NaN) replaced by the nearest frame with one."""
    lm = np.array(landmarks, copy=True)
    valid = np.isfinite(lm).all(axis=(1, 2))
    good = np.flatnonzero(valid)
    if len(good):
        for j in np.flatnonzero(~valid):
            lm[j] = lm[good[np.argmin(np.abs(good - j))]]
    return lm


def crop_face(image, box, size: int = 256) -> np.ndarray:
    """Cut the square `box` = (cx, cy, side) out of `image` and resize it to (size, size, 3) uint8.

    Parts of the box outside the image are filled by repeating the image's
    edge pixels (a black or white border would be a strong false edge for the
    models to learn; a replicated edge is a neutral continuation of the
    background). Resampling is PIL's bilinear filter, which is antialiased when
    shrinking (it averages over the source area) and bilinear when enlarging.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    img = load_image(image, name="image", min_size=1)
    cx, cy, side = _check_box(box)
    h, w = img.shape[:2]
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        shown = tuple(round(v, 1) for v in (cx, cy, side))
        raise ValueError(f"box {shown} lies outside the {w}x{h} image")
    # Gather only the box's pixels (+1 margin for the filter); clipped indices
    # replicate the edge, and memory stays ~side^2 however far the box sticks out.
    c0, r0 = int(np.floor(x0)) - 1, int(np.floor(y0)) - 1
    c1, r1 = int(np.ceil(x1)) + 1, int(np.ceil(y1)) + 1
    if c0 >= 0 and r0 >= 0 and c1 <= w and r1 <= h:
        region = Image.fromarray(np.ascontiguousarray(img[r0:r1, c0:c1]))  # inside: a plain slice, ~200x faster
    else:
        cols = np.clip(np.arange(c0, c1), 0, w - 1)
        rows = np.clip(np.arange(r0, r1), 0, h - 1)
        region = Image.fromarray(img[rows[:, None], cols[None, :]])
    out = region.resize(
        (size, size), Image.BILINEAR, box=(x0 - c0, y0 - r0, x1 - c0, y1 - r0)
    )
    return np.asarray(out)


def landmarks_to_crop(landmarks, box, size: int) -> np.ndarray:
    """Pixel landmarks of the full image -> pixel landmarks of the (size x size) crop of `box`."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim < 1 or pts.shape[-1] != 2:
        raise ValueError(f"landmarks must have shape (..., 2), got {tuple(pts.shape)}")
    cx, cy, side = _check_box(box)
    if not size > 0:
        raise ValueError(f"size must be positive, got {size!r}")
    origin = np.array([cx - side / 2, cy - side / 2])
    return ((pts - origin) * (size / side)).astype(np.float32)
