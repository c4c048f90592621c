"""Cached audio-encoder states of a prepared dataset, so a landmark model with a frozen Whisper Context domain
trains in minutes on a CPU (DESIGN.md 8.3): the encoder runs once per clip, not once per training window.

    cache = EncoderStateCache.build(encoder, "prepared/grid", layers=[2, 4])   # made once, then read from disk
    states = cache.window(clip_id, start_sample, num_samples)                 # (ceil(n / 320), dim) float32

Each clip's audio is encoded whole (`WhisperSpeechEncoder.encode`: windows of at most 10 s, as at generation
time), with `PAD_SECONDS` of silence on each side, so a training window that reaches past the clip's ends
gets the states of real silence, not zeros. The cache is one safetensors file inside the dataset folder,
named by the encoder's weights and the layers; it is written to a temporary file, then renamed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from talking_head.constants import SAMPLE_RATE
from talking_head.utils import save_safetensors_atomic

PAD_SECONDS = 1.0
SAMPLES_PER_STATE = 320  # Whisper: one state per 20 ms at 16 kHz

__all__ = ["EncoderStateCache", "encoder_fingerprint"]


def encoder_fingerprint(encoder) -> str:
    """A short hash of the encoder's config and weights (a cache made by another encoder is not reused)."""
    digest = hashlib.sha256(json.dumps(encoder.config.to_diff_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return digest.hexdigest()[:12]


class EncoderStateCache:
    def __init__(self, states: dict[str, torch.Tensor], layers: list[int], pad_samples: int):
        self.states, self.layers, self.pad_samples = states, list(layers), int(pad_samples)

    @property
    def dim(self) -> int:
        return next(iter(self.states.values())).shape[1]

    @classmethod
    def path_for(cls, root, encoder, layers) -> Path:
        tag = "-".join(str(int(k)) for k in layers)
        return Path(root) / "encoder_states" / f"{encoder_fingerprint(encoder)}-layers-{tag}.safetensors"

    @classmethod
    def build(cls, encoder, root, layers, progress: bool = True) -> "EncoderStateCache":
        """The cache of every clip of the prepared dataset at `root` (all splits), made if missing."""
        from safetensors.torch import load_file

        from talking_head.data import layout
        from talking_head.data.dataset import _read_audio

        path = cls.path_for(root, encoder, layers)
        pad = int(round(PAD_SECONDS * SAMPLE_RATE))
        if path.is_file():
            return cls({k: v for k, v in load_file(str(path)).items()}, layers, pad)
        rows = [r for r in layout.read_manifest(Path(root)) if r.get("audio") and r.get("kind") == "video"]
        if not rows:
            raise ValueError(f"{root}: no prepared video clips with audio to encode")
        states = {}
        from tqdm.auto import tqdm

        for row in tqdm(rows, desc=f"encoder states {Path(root).name}", disable=not progress):
            audio = Path(root) / row["audio"]
            import soundfile as sf

            n = sf.info(str(audio)).frames
            wave = _read_audio(audio, -pad, n + 2 * pad)
            out = encoder.encode(torch.from_numpy(wave)[None], layers=layers)[0]
            states[row["clip_id"]] = out.to(torch.float16).contiguous()
        save_safetensors_atomic(states, path, {"layers": json.dumps(list(layers)), "pad_samples": str(pad)})
        return cls(states, layers, pad)

    def window(self, clip_id: str, start: int, num_samples: int) -> torch.Tensor:
        """States of the clip's audio [start, start + num_samples) (samples from the clip's start; either end may
        lie outside the clip): (ceil(num_samples / 320), dim) float32, state t centred at sample start + 320 t.
        Beyond the cached padding the edge state repeats."""
        if clip_id not in self.states:
            raise KeyError(f"no cached encoder states for clip {clip_id!r}; rebuild the cache")
        clip = self.states[clip_id]
        count = max(1, math.ceil(num_samples / SAMPLES_PER_STATE))
        first = (start + self.pad_samples) / SAMPLES_PER_STATE
        index = np.clip(np.round(first + np.arange(count)).astype(np.int64), 0, len(clip) - 1)
        return clip[torch.from_numpy(index)].float()

    def merged(self, other: "EncoderStateCache") -> "EncoderStateCache":
        clash = set(self.states) & set(other.states)
        if clash:
            raise ValueError(f"clip ids appear in two datasets: {sorted(clash)[:3]}")
        if other.layers != self.layers or other.pad_samples != self.pad_samples:
            raise ValueError("encoder-state caches of different layers or padding cannot be merged")
        return EncoderStateCache({**self.states, **other.states}, self.layers, self.pad_samples)
