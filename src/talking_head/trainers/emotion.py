"""Train the audio emotion classifier of TalkingHeadPipeline (DESIGN.md section 2.1).

    accelerate launch train/train_emotion.py --data_dir /path/to/prepared-ravdess --output_dir out/emotion

The model is a stock transformers audio classifier with the project's 8 emotion labels, built from a preset
(`talking_head.models.emotion_classifier`: "cnn-small" = log-mel `ResNetForImageClassification`, the default;
"small" / "tiny" = log-mel `WhisperForAudioClassification`; "ast-small" = log-mel `ASTForAudioClassification`;
"conformer-small" / "conformer-tiny" / "paper" = waveform `Wav2Vec2ConformerForSequenceClassification`) or
loaded from a local checkpoint with --pretrained_model (a backbone gets a fresh 8-way head).

What a classifier that must work on voices it never heard needs from a few hundred utterances:
- speaker split inside the training speakers: --validation_speakers (default: the last two) are held out
  for early stopping (--early_stopping_patience validations without a better balanced accuracy); the
  saved classifier is the best one on them, never chosen on the test speakers;
- per-utterance normalisation (in the log-mel feature extractor: one mean and one spread per utterance);
- waveform augmentation: gain (--aug_gain_db), speed (--aug_speed: resampling, pitch and tempo together),
  background noise at a random SNR (--aug_noise_prob), band-limiting to telephone bandwidth
  (--aug_band_limit_prob: 8 kHz speech is then not foreign);
- channel and speaker variety: a random equaliser (--aug_eq_prob) and a frequency warp of the log-mel bands
  (--aug_freq_warp, vocal-tract length perturbation);
- SpecAugment-style masks on the log-mel features (--spec_augment: frequency and time masks);
- speaker-adversarial training (--speaker_adversarial): a speaker classifier on the pooled features whose
  gradient is reversed into the encoder, so emotion is not read from who is speaking;
- class-balanced sampling (--sampling balanced: every class as often per epoch), and soft targets: label
  smoothing over the classes present (--label_smoothing) and mixup (--mixup_alpha);
- knowledge distillation (--distill_from): several trained classifiers' mean prediction on each augmented batch
  as a soft target, so one model learns what their ensemble knows (an ensemble's errors are fewer than any
  member's on unseen speakers).

Validation: the validation speakers' whole utterances scored as at inference (`predict_emotion`): accuracy,
balanced accuracy (mean recall over the classes present) and per-class recall.

Saves OUTPUT_DIR/emotion_classifier (model + feature extractor; `load_emotion_classifier` and
`load_emotion_feature_extractor` load it; give it to train_diffusion.py --emotion_model) and
OUTPUT_DIR/best.json (the step and scores it was chosen at).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.constants import EMOTIONS, NUM_EMOTIONS, SAMPLE_RATE
from talking_head.data.dataset import EmotionAudioDataset
from talking_head.models.emotion_classifier import (EMOTION_CLASSIFIER_PRESETS, EmotionFeatureExtractor,
                                                    build_emotion_classifier, build_emotion_feature_extractor,
                                                    change_speed, load_emotion_classifier,
                                                    load_emotion_feature_extractor, predict_emotion)
from talking_head.training import (
    JsonlLog, TrainingRun, _write_json_atomic, add_common_args, check_common_args, finish, log_scalars,
    make_accelerator, parse_json_kwargs, resolve_data_dir, save_component_atomic,
)

logger = logging.getLogger("train_emotion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(EMOTION_CLASSIFIER_PRESETS), default="cnn-small",
                       help="cnn-small (log-mel CNN, 1.2M parameters: the one that generalises best across "
                            "speakers), small (log-mel Transformer, 0.64M), tiny (tests), ast-small (patch "
                            "Transformer); conformer-small / conformer-tiny (waveform Conformer), paper "
                            "(0.6B, the size of the paper's ConformerXL: fine-tune a pretrained one)")
    model.add_argument("--model_kwargs", type=str, default=None,
                       help='JSON object of config overrides on top of --preset, e.g. \'{"depths": [2, 2, 2, 2]}\'')
    model.add_argument("--feature_kwargs", type=str, default=None,
                       help="JSON object of log-mel feature extractor overrides, e.g. '{\"min_frequency\": 300}' "
                            "(saved with the model, so the pipeline reads speech the same way)")
    model.add_argument("--pretrained_model", type=str, default=None,
                       help="a local transformers audio model/classifier folder to fine-tune instead of --preset")
    model.add_argument("--freeze_feature_encoder", action="store_true",
                       help="keep a waveform model's convolutional feature encoder fixed (usual when fine-tuning)")
    data = parser.add_argument_group("emotion data")
    data.add_argument("--max_seconds", type=float, default=6.0, help="random crop of longer utterances")
    data.add_argument("--validation_speakers", type=str, default="auto",
                      help="comma-separated training speakers held out for early stopping; 'auto': the last two "
                           "(sorted; one when there are two, none when there is one); 'none': train on all of them "
                           "and validate on the dataset's test split (logged, never used to choose)")
    data.add_argument("--sampling", choices=("balanced", "uniform"), default="balanced",
                      help="balanced: each class drawn equally often per epoch (rarer classes repeated)")
    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--aug_gain_db", type=float, default=6.0, help="random gain in +-dB")
    aug.add_argument("--aug_speed", type=float, default=0.1, help="random speed factor in 1 +- this")
    aug.add_argument("--aug_noise_prob", type=float, default=0.5, help="white noise at 10-40 dB SNR")
    aug.add_argument("--aug_band_limit_prob", type=float, default=0.3,
                     help="low-pass to telephone band (8 kHz sampling)")
    aug.add_argument("--aug_eq_prob", type=float, default=0.0,
                     help="a random equaliser (a tilt of up to +-3 dB per octave about 500 Hz and a low shelf of up "
                          "to +-12 dB under 100-400 Hz): other microphones and rooms, e.g. CREMA-D's strong bass")
    aug.add_argument("--aug_freq_warp", type=float, default=0.0,
                     help="vocal-tract length perturbation: the log-mel bands read at frequencies scaled by a "
                          "random factor in 1 +- this (formants and pitch of another speaker, tempo kept); 0 = off")
    aug.add_argument("--spec_augment", type=int, default=2,
                     help="frequency and time masks per log-mel window (each up to 1/8 of the bands, 1/10 of the "
                          "frames); 0 = off")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--label_smoothing", type=float, default=0.1,
                      help="spread over the classes present in the training data")
    loss.add_argument("--mixup_alpha", type=float, default=0.4, help="Beta(a, a) mixup of inputs and targets; 0 = off")
    loss.add_argument("--speaker_adversarial", type=float, default=0.0,
                      help="weight of a speaker classifier on the pooled features, trained through gradient "
                           "reversal so the encoder unlearns who is speaking (training only: the saved model stays a "
                           "stock classifier), reached by DANN's ramp over the run; 0 = off")
    loss.add_argument("--class_weighting", choices=("inverse", "sqrt_inverse", "none"), default="none",
                      help="cross-entropy class weights from the class counts (for --sampling uniform)")
    loss.add_argument("--distill_from", type=str, default=None,
                      help="comma-separated trained classifier folders (same feature extractor): their averaged "
                           "predictions on each augmented batch are soft targets, so one model learns what an "
                           "ensemble of them knows (training only: the saved model is one stock classifier)")
    loss.add_argument("--distill_weight", type=float, default=0.5,
                      help="share of the loss from the teachers' soft targets (the rest from the labels)")
    loss.add_argument("--distill_temperature", type=float, default=2.0,
                      help="softmax temperature of teachers and student in the distillation term")
    val = parser.add_argument_group("validation")
    val.add_argument("--early_stopping_patience", type=int, default=0,
                     help="stop after this many validations without a better balanced accuracy; 0 = never")
    val.add_argument("--keep_weights", choices=("best", "last"), default="best",
                     help="best: the weights of the best validation balanced accuracy (early stopping's choice); "
                          "last: the weights after the last update, whatever the validation says (a fixed "
                          "schedule, as when comparing recipes by cross-validation over speakers)")
    add_common_args(parser, output_dir="out/train_emotion", train_batch_size=32, max_train_steps=3000,
                    learning_rate=1e-3, checkpointing_steps=500, validation_steps=250, lr_warmup_steps=100)
    args = parser.parse_args(argv)
    check_common_args(args)
    if not 0 <= args.aug_eq_prob <= 1 or not 0 <= args.aug_freq_warp < 0.5:
        parser.error("--aug_eq_prob must be in [0, 1] and --aug_freq_warp in [0, 0.5)")
    if args.speaker_adversarial < 0:
        parser.error("--speaker_adversarial must be >= 0")
    if not 0 <= args.distill_weight <= 1 or not args.distill_temperature > 0:
        parser.error("--distill_weight must be in [0, 1] and --distill_temperature > 0")
    if args.keep_weights == "last" and args.early_stopping_patience:
        parser.error("--keep_weights last runs the whole schedule; it cannot be combined with "
                     "--early_stopping_patience")
    args.model_kwargs = parse_json_kwargs(parser, args.model_kwargs)
    if args.model_kwargs and args.pretrained_model:
        parser.error("--model_kwargs configures a fresh --preset model; a --pretrained_model keeps its own config")
    args.feature_kwargs = parse_json_kwargs(parser, args.feature_kwargs, "--feature_kwargs")
    if args.feature_kwargs and args.pretrained_model:
        parser.error("--feature_kwargs configures a fresh --preset model's front end; a --pretrained_model keeps "
                     "its own feature extractor")
    if not 0 <= args.label_smoothing < 1 or args.mixup_alpha < 0 or args.spec_augment < 0:
        parser.error("--label_smoothing must be in [0, 1), --mixup_alpha and --spec_augment >= 0")
    return args


# ------------------------------------------------------------------------------------------- data
class BalancedView(torch.utils.data.Dataset):
    """`dataset` with the items of rarer classes repeated so every class present has as many entries as the
    most frequent one (class-balanced sampling that keeps the trainers' resumable epoch order)."""

    def __init__(self, dataset: EmotionAudioDataset):
        self.dataset = dataset
        labels = dataset.labels
        most = max(np.bincount(labels))
        self.indices = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            self.indices += np.resize(members, most).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]] | {"index": i}


def random_equaliser_db(freqs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random smooth gain curve in dB at `freqs` (Hz): a spectral tilt of up to +-3 dB per octave about 500 Hz
    plus a low shelf of up to +-12 dB under a corner of 100-400 Hz (microphones, rooms and phone lines differ
    most there: CREMA-D has ~15 dB more energy under 200 Hz than RAVDESS)."""
    octaves = np.log2(np.maximum(freqs, 50.0) / 500.0)
    corner = np.log2(rng.uniform(100.0, 400.0))
    shelf = 1.0 / (1.0 + np.exp(4.0 * (np.log2(np.maximum(freqs, 1.0)) - corner)))
    return rng.uniform(-3.0, 3.0) * octaves + rng.uniform(-12.0, 12.0) * shelf


def augment_waveform(wave: np.ndarray, rng: np.random.Generator, args) -> np.ndarray:
    """Gain, speed (resampled: pitch and tempo together), a random equaliser, band-limiting and white noise."""
    if args.aug_speed > 0:
        factor = rng.uniform(1 - args.aug_speed, 1 + args.aug_speed)
        wave = change_speed(wave, factor)
    if rng.random() < args.aug_eq_prob:
        spectrum = np.fft.rfft(wave)
        gain_db = random_equaliser_db(np.fft.rfftfreq(len(wave), 1.0 / SAMPLE_RATE), rng)
        wave = np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=len(wave))
    if rng.random() < args.aug_band_limit_prob:
        # 8 kHz telephone audio brought back to 16 kHz: everything above 4 kHz gone.
        spectrum = np.fft.rfft(wave)
        spectrum[int(len(spectrum) * 4000 / (SAMPLE_RATE / 2)):] = 0
        wave = np.fft.irfft(spectrum, n=len(wave))
    if args.aug_gain_db > 0:
        wave = wave * 10 ** (rng.uniform(-args.aug_gain_db, args.aug_gain_db) / 20)
    if rng.random() < args.aug_noise_prob:
        power = float(np.mean(wave ** 2)) + 1e-10
        wave = wave + rng.normal(0, math.sqrt(power / 10 ** (rng.uniform(10, 40) / 10)), len(wave))
    return np.clip(wave, -1, 1).astype(np.float32)


def band_centres_hz(extractor: EmotionFeatureExtractor) -> np.ndarray:
    """(feature_size,) the centre frequency of each mel band (its filter's weighted mean frequency)."""
    freqs = np.linspace(0, extractor.sampling_rate / 2, extractor.mel_filters.shape[0])
    return (extractor.mel_filters * freqs[:, None]).sum(0) / extractor.mel_filters.sum(0)


def frequency_warp(features: np.ndarray, centres: np.ndarray, factor: float) -> np.ndarray:
    """Log-mel `features` (bands, frames) as if every frequency were scaled by `factor` (vocal-tract length
    perturbation): band i takes the value the input has at centres[i] / factor, interpolated between bands."""
    if factor == 1.0:
        return features
    source = centres / factor
    right = np.clip(np.searchsorted(centres, source), 1, len(centres) - 1)
    left = right - 1
    # Beyond the first or last band the edge band's value (np.interp's rule), for all frames at once.
    weight = np.clip((source - centres[left]) / (centres[right] - centres[left]), 0.0, 1.0)[:, None]
    return (features[left] * (1 - weight) + features[right] * weight).astype(features.dtype)


def spec_augment(features: np.ndarray, rng: np.random.Generator, masks: int) -> np.ndarray:
    """Zero `masks` random frequency bands and `masks` random time spans (0 is each band's mean)."""
    features = features.copy()
    bands, frames = features.shape
    for _ in range(masks):
        width = int(rng.integers(0, bands // 8 + 1))
        start = int(rng.integers(0, bands - width + 1))
        features[start: start + width] = 0
        span = int(rng.integers(0, frames // 10 + 1))
        start = int(rng.integers(0, frames - span + 1))
        features[:, start: start + span] = 0
    return features


def collate_emotion(items: list[dict], extractor, args=None, seed: int = 0) -> dict:
    """Waveforms -> the classifier's inputs. With `args` (training) each waveform is augmented and, for a log-mel
    model, its window cropped at random and masked; without, exactly what `predict_emotion` computes."""
    rng = np.random.default_rng([seed, *[int(it.get("index", 0)) for it in items]])
    waves = [it["audio"].numpy() for it in items]
    if args is not None:
        waves = [augment_waveform(w, rng, args) for w in waves]
    batch = {"labels": torch.stack([it["label"] for it in items]), "clip_id": [it["clip_id"] for it in items],
             "speaker": [it["speaker"] for it in items]}
    if isinstance(extractor, EmotionFeatureExtractor):
        windows = []
        warp = args.aug_freq_warp if args is not None else 0.0
        centres = band_centres_hz(extractor) if warp else None
        for w in waves:
            features = extractor.log_mel(w)
            if args is None:
                windows.append(extractor.fit_window(features))
                continue
            if warp:
                features = frequency_warp(features, centres, rng.uniform(1 - warp, 1 + warp))
            longest = max(features.shape[1], extractor.window_frames)
            window = extractor.fit_window(np.tile(features, (1, math.ceil(longest / features.shape[1]))),
                                          int(rng.integers(0, longest - extractor.window_frames + 1)))
            windows.append(spec_augment(window, rng, args.spec_augment))
        return batch | extractor.model_inputs(torch.from_numpy(np.stack(windows)))
    features = extractor(waves, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True,
                         return_tensors="pt")
    return batch | {"input_values": features.input_values, "attention_mask": features.attention_mask}


def model_inputs(batch: dict) -> dict:
    if "attention_mask" in batch:  # a waveform model
        return {"input_values": batch["input_values"], "attention_mask": batch["attention_mask"]}
    # log-mel: Whisper, the patch Transformer or the CNN
    name = next(n for n in ("input_features", "input_values", "pixel_values") if n in batch)
    return {name: batch[name]}


def class_weights(counts: np.ndarray, mode: str) -> torch.Tensor:
    """(8,) weights: N / (K * n_c) ("inverse"), its square root ("sqrt_inverse") or ones; 0 for absent classes."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    if mode == "none":
        weights[present] = 1.0
    else:
        weights[present] = counts.sum() / (present.sum() * counts[present])
        if mode == "sqrt_inverse":
            weights[present] = np.sqrt(weights[present])
    return torch.tensor(weights, dtype=torch.float32)


def soft_targets(labels: torch.Tensor, present: torch.Tensor, smoothing: float) -> torch.Tensor:
    """One-hot targets with `smoothing` spread evenly over the other classes present in the training data
    (never onto a class the data does not have, such as contempt in RAVDESS)."""
    onehot = F.one_hot(labels, NUM_EMOTIONS).float()
    others = present.float()[None] * (1 - onehot)
    return onehot * (1 - smoothing) + smoothing * others / others.sum(dim=1, keepdim=True).clamp_min(1)


def mix(inputs: dict, targets: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """Mixup: a Beta(alpha, alpha) blend of the batch with a shuffled copy of itself, inputs and targets alike."""
    if alpha <= 0 or targets.shape[0] < 2:
        return inputs, targets
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(targets.shape[0], generator=generator).to(targets.device)
    mixed = {k: (lam * v + (1 - lam) * v[perm]) if v.is_floating_point() else v for k, v in inputs.items()}
    return mixed, lam * targets + (1 - lam) * targets[perm]


def split_speakers(data_dir, value: str) -> tuple[list[str], list[str]]:
    """(training speakers, validation speakers) of the dataset's train split."""
    speakers = sorted({r["speaker"] for r in EmotionAudioDataset(data_dir, split="train", random_crop=False).items})
    if value == "none":
        return speakers, []
    if value == "auto":  # the last two, leaving at least one to train on
        held = speakers[len(speakers) - min(2, len(speakers) - 1):] if len(speakers) > 1 else []
    else:
        held = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(held) - set(speakers))
    if unknown:
        raise ValueError(f"--validation_speakers {unknown} are not training speakers of {data_dir}: {speakers}")
    train = [s for s in speakers if s not in held]
    if not train:
        raise ValueError(f"--validation_speakers leaves no training speaker (speakers: {speakers})")
    return train, held


# ------------------------------------------------------------------------------------------- model
def build_model(args):
    if args.pretrained_model:
        model = load_emotion_classifier(args.pretrained_model)
        extractor = load_emotion_feature_extractor(args.pretrained_model, model)
    else:
        model = build_emotion_classifier(args.preset, **(args.model_kwargs or {}))
        extractor = build_emotion_feature_extractor(model, **(args.feature_kwargs or {}))
    if args.freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    return model, extractor


class Validator:
    """Scores the validation speakers' whole utterances as inference does, and keeps the best classifier."""

    def __init__(self, args, dataset, extractor, accelerator, metrics: JsonlLog, output_dir: Path):
        self.args, self.accelerator, self.metrics, self.extractor = args, accelerator, metrics, extractor
        self.items = [dataset[i] for i in range(len(dataset))]
        self.best_path = output_dir / "best.json"
        self.best = json.loads(self.best_path.read_text()) if self.best_path.is_file() else None
        self.since_best = 0

    @torch.no_grad()
    def __call__(self, model, global_step: int) -> dict:
        probs = predict_emotion(model, self.extractor, [it["audio"].numpy() for it in self.items])
        labels = torch.tensor([int(it["label"]) for it in self.items])
        logp = torch.log(probs.clamp_min(1e-8))
        pred = probs.argmax(-1)
        results = {"val/loss": F.nll_loss(logp, labels).item(),
                   "val/accuracy": (pred == labels).float().mean().item()}
        recalls = {EMOTIONS[c]: (pred[labels == c] == c).float().mean().item()
                   for c in range(NUM_EMOTIONS) if (labels == c).any()}
        results["val/balanced_accuracy"] = float(np.mean(list(recalls.values())))
        results.update({f"val/recall_{name}": value for name, value in recalls.items()})
        log_scalars(self.accelerator, self.metrics, results, global_step)
        logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        return results

    def is_best(self, results: dict, global_step: int) -> bool:
        """Record `results` when they are the best so far (balanced accuracy, then loss)."""
        key = (results["val/balanced_accuracy"], -results["val/loss"])
        if self.best is not None and key <= (self.best["val/balanced_accuracy"], -self.best["val/loss"]):
            self.since_best += 1
            return False
        self.best, self.since_best = {"step": global_step, **results}, 0
        _write_json_atomic(self.best_path, self.best)
        return True


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class SpeakerAdversary(torch.nn.Module):
    """A linear speaker classifier on the classifier's pooled features (the input of its last layer, caught by a
    forward hook), trained normally, while the gradient it sends into the encoder is reversed and scaled by
    `weight` (domain-adversarial training): features that tell speakers apart are pushed out. Training only."""

    def __init__(self, classifier_layer: torch.nn.Linear, speakers: list[str], weight: float):
        super().__init__()
        self.speakers, self.weight = {s: i for i, s in enumerate(speakers)}, float(weight)
        width = getattr(classifier_layer, "in_features", None) or classifier_layer.dense.in_features  # AST's head
        self.head = torch.nn.Linear(width, len(speakers))
        self.pooled = None
        self.hook = classifier_layer.register_forward_hook(lambda module, inputs, output: self._keep(inputs[0]))

    def ramp(self, progress: float, full_weight: float) -> None:
        """DANN's schedule: the reversed gradient's weight grows from 0 to `full_weight` as training `progress`es
        from 0 to 1 (2 / (1 + exp(-10 p)) - 1), so the encoder learns emotions before it is pushed off speakers."""
        self.weight = full_weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)

    def _keep(self, pooled: torch.Tensor) -> None:
        self.pooled = pooled

    def targets(self, speakers: list[str], device) -> torch.Tensor:
        index = torch.tensor([self.speakers[s] for s in speakers], device=device)
        return F.one_hot(index, len(self.speakers)).float()

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the speaker head on the features of the last forward pass (soft `targets`)."""
        logits = self.head(_ReverseGradient.apply(self.pooled.float(), self.weight))
        return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def load_teachers(folders: str, extractor, device) -> list:
    """The --distill_from classifiers, frozen in eval mode; each must read the student's features."""
    teachers = []
    for folder in [f.strip() for f in folders.split(",") if f.strip()]:
        teacher = load_emotion_classifier(folder)
        if load_emotion_feature_extractor(folder, teacher).to_dict() != extractor.to_dict():
            raise ValueError(f"--distill_from {folder}: its feature extractor differs from the student's; a teacher "
                             "must read the same inputs")
        teachers.append(teacher.to(device).eval().requires_grad_(False))
    if not teachers:
        raise ValueError("--distill_from names no classifier folder")
    return teachers


def distillation_loss(logits: torch.Tensor, inputs: dict, teachers: list, temperature: float) -> torch.Tensor:
    """T^2 x KL(teachers' mean distribution at temperature T || the student's at T) (Hinton et al., 2015)."""
    with torch.no_grad():
        target = torch.stack([F.softmax(t(**inputs).logits.float() / temperature, dim=-1) for t in teachers]).mean(0)
    log_student = F.log_softmax(logits / temperature, dim=-1)
    return temperature ** 2 * (target * (target.clamp_min(1e-12).log() - log_student)).sum(-1).mean()


def train_loss(model, batch, present, weights, args, generator, adversary=None, teachers=None) -> torch.Tensor:
    inputs = model_inputs(batch)
    targets = soft_targets(batch["labels"], present, args.label_smoothing)
    if adversary is not None:  # mixed with the same partners and weights as the emotions
        targets = torch.cat([targets, adversary.targets(batch["speaker"], targets.device)], dim=1)
    inputs, targets = mix(inputs, targets, args.mixup_alpha, generator)
    logits = model(**inputs).logits.float()
    loss = -(targets[:, :NUM_EMOTIONS] * weights * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    if teachers:  # the teachers see the same augmented, mixed inputs
        kd = distillation_loss(logits, inputs, teachers, args.distill_temperature)
        loss = (1 - args.distill_weight) * loss + args.distill_weight * kd
    if adversary is not None:
        loss = loss + adversary.loss(targets[:, NUM_EMOTIONS:])
    return loss


def main(argv=None) -> None:
    args = parse_args(argv)
    # LayerDrop and SpecAugment leave some parameters without gradient in some steps.
    accelerator = make_accelerator(args, find_unused_parameters=True)
    logger.info(accelerator.state)
    output_dir = Path(args.output_dir)

    data_dir = resolve_data_dir(args, accelerator, kind="emotion")
    train_speakers, val_speakers = split_speakers(data_dir, args.validation_speakers)
    base = EmotionAudioDataset(data_dir, split="train", max_seconds=args.max_seconds, random_crop=True,
                               seed=args.seed, speakers=train_speakers)
    counts = base.class_counts()
    present = torch.from_numpy(counts > 0)
    train_dataset = BalancedView(base) if args.sampling == "balanced" else base
    weights = class_weights(counts, args.class_weighting)
    logger.info(f"training speakers {train_speakers}, validation speakers {val_speakers or '(test split)'}; "
                "utterances per class: " + ", ".join(f"{e} {int(n)}" for e, n in zip(EMOTIONS, counts))
                + f"; {args.sampling} sampling, class weights {[round(float(w), 3) for w in weights]}")

    model, extractor = build_model(args)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    adversary = None
    if args.speaker_adversarial > 0:
        if not hasattr(model, "classifier") or len(train_speakers) < 2:
            raise ValueError("--speaker_adversarial needs a classifier with a `classifier` layer and >= 2 speakers")
        adversary = SpeakerAdversary(model.classifier, train_speakers, args.speaker_adversarial).to(
            accelerator.device)
        params += list(adversary.head.parameters())
        accelerator.register_for_checkpointing(adversary.head)
    teachers = load_teachers(args.distill_from, extractor, accelerator.device) if args.distill_from else None
    run = TrainingRun(accelerator, args, output_dir, "train_emotion", model, params, train_dataset,
                      functools.partial(collate_emotion, extractor=extractor, args=args, seed=args.seed))
    model, optimizer, lr_scheduler, metrics = run.model, run.optimizer, run.lr_scheduler, run.metrics
    weights, present = weights.to(accelerator.device), present.to(accelerator.device)

    unwrapped = accelerator.unwrap_model(model)
    logger.info(f"{len(base)} training utterances ({len(train_dataset)} per epoch) from {data_dir}; "
                f"{run.shape_line()}; model {sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M parameters")
    validator = None
    if accelerator.is_main_process:  # every --validation_steps and always after the last update
        val_dataset = EmotionAudioDataset(data_dir, split="train" if val_speakers else "test", max_seconds=30.0,
                                          random_crop=False, seed=args.seed, speakers=val_speakers or None)
        validator = Validator(args, val_dataset, extractor, accelerator, metrics, output_dir)
    best_dir = output_dir / "emotion_classifier"

    def validate():
        if validator is None:
            return
        with run.averaged_weights(unwrapped):
            results = validator(unwrapped, loop.global_step)
            if val_speakers and args.keep_weights == "best" and validator.is_best(results, loop.global_step):
                save_component_atomic(unwrapped, best_dir, extras=[extractor])
        if args.early_stopping_patience and validator.since_best >= args.early_stopping_patience:
            logger.info(f"early stop at step {loop.global_step}: no better validation balanced accuracy in "
                        f"{validator.since_best} validations (best {validator.best['val/balanced_accuracy']:.3f} "
                        f"at step {validator.best['step']})")
            loop.done = True

    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    loop = run.update_loop(validate)
    for batch in loop:
        with accelerator.accumulate(model):
            if adversary is not None:
                adversary.ramp(loop.global_step / args.max_train_steps, args.speaker_adversarial)
            loss = train_loss(model, batch, present, weights, args, generator, adversary, teachers)
            loop.backward_and_step(loss, batch["labels"].shape[0], optimizer, lr_scheduler, params)
        loop.end_micro_step(batch, loss.item(), lr_scheduler)
    global_step = loop.global_step

    run.finish_weights(unwrapped, global_step)
    if accelerator.is_main_process:
        if args.keep_weights == "best" and validator is not None and val_speakers and validator.best is not None:
            logger.info(f"kept the classifier of step {validator.best['step']} (validation balanced accuracy "
                        f"{validator.best['val/balanced_accuracy']:.3f}) in {best_dir}")
        else:  # asked for, or no speaker validation to choose by: the last weights
            save_component_atomic(unwrapped, best_dir, extras=[extractor])
        logger.info(f"saved the emotion classifier to {best_dir} (train_diffusion.py --emotion_model {best_dir})")
    del model, unwrapped, optimizer, lr_scheduler, run, validator, params
    finish(accelerator)


if __name__ == "__main__":
    main(sys.argv[1:])
