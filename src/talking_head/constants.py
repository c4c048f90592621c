"""Project-wide conventions, defined once (DESIGN.md sections 2.1, 2.2 and 3).

Landmark normalisation, used everywhere a model sees landmarks: iBUG-68 points
as (x, y) with x to the right and y down, divided by the side of the square
face crop, so (0, 0) is the crop's top-left corner and (1, 1) its bottom-right.
`pixels = normalised * size`. Pipeline outputs are in pixels of the output
frame; models, datasets and losses use the normalised form.
"""

# The one canonical emotion order (MEAD's 8 classes). Index = class id.
EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
NUM_EMOTIONS = len(EMOTIONS)
# Class id of the "no emotion" row used for classifier-free guidance.
NULL_EMOTION = NUM_EMOTIONS
# The name that asks for that row: the models' unconditional output. A model trained on unlabelled video
# (the bundled default) has learned only this row.
NO_EMOTION = "none"

SAMPLE_RATE = 16_000  # Hz, mono float32 audio everywhere after decoding
DEFAULT_FPS = 25.0

NUM_LANDMARKS = 68
MOUTH_SLICE = slice(48, 68)  # the 20 mouth points of the iBUG-68 scheme


def emotion_to_id(name: str) -> int:
    """Map an emotion name (case-insensitive) to its class id, with a clear error."""
    key = str(name).strip().lower()
    if key not in EMOTIONS:
        raise ValueError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTIONS)}")
    return EMOTIONS.index(key)


def emotion_label(name: str) -> int:
    """Like `emotion_to_id`, but also accepts "none" (`NO_EMOTION`): the null class, NULL_EMOTION."""
    if str(name).strip().lower() == NO_EMOTION:
        return NULL_EMOTION
    try:
        return emotion_to_id(name)
    except ValueError:
        raise ValueError(f"unknown emotion {name!r}; expected one of {', '.join(EMOTIONS)} or {NO_EMOTION!r} "
                         "(no emotion: the unconditional output)") from None


def normalize_landmarks(points, size):
    """Pixel landmarks in a square crop of side `size` -> normalised [0, 1] form."""
    return points / float(size)


def denormalize_landmarks(points, size):
    """Normalised landmarks -> pixels of a square frame of side `size`."""
    return points * float(size)
