#!/usr/bin/env python
"""Train the audio emotion classifier of TalkingHeadPipeline (DESIGN.md 2.1).

    accelerate launch train/train_emotion.py --data_dir /path/to/prepared-ravdess --output_dir out/emotion

The model is transformers' Wav2Vec2ConformerForSequenceClassification with the project's 8 emotion labels,
built from a preset (`talking_head.models.emotion_classifier`: tiny, small, paper) or loaded from a local
checkpoint with --pretrained_model (e.g. a pretrained wav2vec2-conformer: it gets a fresh 8-way head).
Inputs are processed like at inference (Wav2Vec2FeatureExtractor: per-clip zero mean, unit variance,
zero padding with an attention mask); utterances longer than --max_seconds are randomly cropped.

Loss: cross-entropy with class weights against imbalance (--class_weighting inverse: weight_c =
N / (K * n_c) over the K classes present; classes absent from the training set, such as contempt in
RAVDESS, get weight 0).

Validation on the held-out split (split by speaker, never by utterance): unweighted cross-entropy,
accuracy, balanced accuracy (mean recall over the classes present) and per-class recall.

Saves OUTPUT_DIR/emotion_classifier (model + feature extractor; `load_emotion_classifier` loads it; give
it to train_diffusion.py --emotion_model).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talking_head.constants import EMOTIONS, NUM_EMOTIONS, SAMPLE_RATE
from talking_head.data.dataset import EmotionAudioDataset
from talking_head.models.emotion_classifier import (EMOTION_CLASSIFIER_PRESETS, build_emotion_classifier,
                                                    build_emotion_feature_extractor, load_emotion_classifier)
from talking_head.training import (
    JsonlLog, UpdateLoop, add_common_args, batch_log, check_common_args, finish, held_out, init_trackers,
    log_scalars, make_accelerator, make_dataloader, make_ema, make_lr_scheduler, metrics_log, resolve_data_dir,
    save_component_atomic, start_or_resume, weights_checksum,
)

logger = logging.getLogger("train_emotion")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(EMOTION_CLASSIFIER_PRESETS), default="small",
                       help="tiny (0.06M parameters, tests), small (11M, from scratch on a few hours of speech), "
                            "paper (0.6B, the size of the paper's ConformerXL: fine-tune a pretrained one)")
    model.add_argument("--pretrained_model", type=str, default=None,
                       help="a local transformers audio model/classifier folder to fine-tune instead of --preset")
    model.add_argument("--freeze_feature_encoder", action="store_true",
                       help="keep the convolutional feature encoder fixed (usual when fine-tuning)")
    data = parser.add_argument_group("emotion data")
    data.add_argument("--max_seconds", type=float, default=4.0, help="random crop of longer utterances")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--class_weighting", choices=("inverse", "sqrt_inverse", "none"), default="inverse",
                      help="cross-entropy class weights from the training set's class counts")
    loss.add_argument("--label_smoothing", type=float, default=0.0)
    val = parser.add_argument_group("validation")
    val.add_argument("--validation_clips", type=int, default=512, help="held-out utterances scored at most")
    add_common_args(parser, output_dir="out/train_emotion", train_batch_size=16, max_train_steps=4000,
                    learning_rate=3e-4, checkpointing_steps=500, validation_steps=250, lr_warmup_steps=200)
    args = parser.parse_args(argv)
    check_common_args(args)
    return args


def collate_emotion(items: list[dict], extractor) -> dict:
    """Waveforms -> the classifier's inputs, exactly as `predict_emotion` prepares them at inference."""
    features = extractor([it["audio"].numpy() for it in items], sampling_rate=SAMPLE_RATE, padding=True,
                         return_attention_mask=True, return_tensors="pt")
    return {
        "input_values": features.input_values,
        "attention_mask": features.attention_mask,
        "labels": torch.stack([it["label"] for it in items]),
        "clip_id": [it["clip_id"] for it in items],
        "speaker": [it["speaker"] for it in items],
    }


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


def build_model(args):
    if args.pretrained_model:
        model = load_emotion_classifier(args.pretrained_model)
    else:
        model = build_emotion_classifier(args.preset)
    if args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


class Validator:
    def __init__(self, args, dataset, extractor, accelerator, metrics: JsonlLog):
        self.args, self.accelerator, self.metrics = args, accelerator, metrics
        n = min(len(dataset), args.validation_clips)
        indices = sorted(set(np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()))
        self.items = [dataset[i] for i in indices]
        self.extractor = extractor

    @torch.no_grad()
    def __call__(self, model, global_step: int) -> dict:
        args, accelerator = self.args, self.accelerator
        device = accelerator.device
        was_training = model.training
        model.eval()
        logits, labels = [], []
        for start in range(0, len(self.items), args.train_batch_size):
            batch = collate_emotion(self.items[start: start + args.train_batch_size], self.extractor)
            with accelerator.autocast():
                out = model(batch["input_values"].to(device), attention_mask=batch["attention_mask"].to(device))
            logits.append(out.logits.float().cpu())
            labels.append(batch["labels"])
        logits, labels = torch.cat(logits), torch.cat(labels)
        pred = logits.argmax(-1)
        results = {"val/loss": F.cross_entropy(logits, labels).item(),
                   "val/accuracy": (pred == labels).float().mean().item()}
        recalls = {}
        for c in range(NUM_EMOTIONS):
            sel = labels == c
            if sel.any():
                recalls[EMOTIONS[c]] = (pred[sel] == c).float().mean().item()
        results["val/balanced_accuracy"] = float(np.mean(list(recalls.values())))
        results.update({f"val/recall_{name}": value for name, value in recalls.items()})
        model.train(was_training)
        log_scalars(accelerator, self.metrics, results, global_step)
        logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        return results


def main(argv=None) -> None:
    args = parse_args(argv)
    # LayerDrop and SpecAugment leave some parameters without gradient in some steps.
    accelerator = make_accelerator(args, find_unused_parameters=True)
    logger.info(accelerator.state)
    output_dir = Path(args.output_dir)

    data_dir = resolve_data_dir(args, accelerator, kind="emotion")
    train_dataset = EmotionAudioDataset(data_dir, split="train", max_seconds=args.max_seconds, random_crop=True,
                                        seed=args.seed)
    counts = train_dataset.class_counts()
    weights = class_weights(counts, args.class_weighting)
    logger.info("training utterances per class: " + ", ".join(f"{e} {int(n)}" for e, n in zip(EMOTIONS, counts))
                + f"; class weights {[round(float(w), 3) for w in weights]}")

    model = build_model(args)
    extractor = build_emotion_feature_extractor()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    train_dataloader, sampler = make_dataloader(train_dataset, args.train_batch_size, args.seed,
                                                args.dataloader_num_workers,
                                                functools.partial(collate_emotion, extractor=extractor))
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader,
                                                                           lr_scheduler)
    weights = weights.to(accelerator.device)
    # The EMA starts from the prepared (on every process identical) weights.
    ema = make_ema(accelerator, args, model)

    init_trackers(accelerator, args, "train_emotion")
    metrics = metrics_log(accelerator, output_dir)
    batches = batch_log(accelerator, args)
    run_shape, global_step, first_epoch, skip_batches = start_or_resume(
        accelerator, args, output_dir, train_dataloader, ema)

    unwrapped = accelerator.unwrap_model(model)
    logger.info(f"{len(train_dataset)} training utterances from {data_dir}; {accelerator.num_processes} "
                f"process(es) x batch {args.train_batch_size} x accumulation "
                f"{accelerator.gradient_accumulation_steps}; {args.max_train_steps} updates; model "
                f"{sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M parameters")
    validator = None
    if accelerator.is_main_process and args.validation_clips > 0:
        val_dataset = held_out(lambda split: EmotionAudioDataset(data_dir, split=split, max_seconds=args.max_seconds,
                                                                 random_crop=False, seed=args.seed), data_dir)
        validator = Validator(args, val_dataset, extractor, accelerator, metrics)

    def validate():
        if validator is None:
            return
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        validator(unwrapped, loop.global_step)
        if ema is not None:
            ema.restore(unwrapped.parameters())

    model.train()
    loop = UpdateLoop(accelerator, args, train_dataloader=train_dataloader, sampler=sampler,
                      output_dir=output_dir, run_shape=run_shape, global_step=global_step,
                      first_epoch=first_epoch, skip_batches=skip_batches, metrics=metrics, batches=batches,
                      validate=validate, ema=ema, ema_model=model, loss_format=".4f")
    for batch in loop:
        with accelerator.accumulate(model):
            logits = model(batch["input_values"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits.float(), batch["labels"], weight=weights,
                                   label_smoothing=args.label_smoothing)
            loop.backward_and_step(loss, logits.shape[0], optimizer, lr_scheduler, params)
        loop.end_micro_step(batch, loss.item(), lr_scheduler)
    global_step = loop.global_step

    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(unwrapped.parameters())
    if args.log_batch_ids:
        batches.write(final=True, step=global_step, checksum=weights_checksum(unwrapped))
    if accelerator.is_main_process:
        path = save_component_atomic(unwrapped, output_dir / "emotion_classifier", extras=[extractor])
        logger.info(f"saved the emotion classifier to {path} (train_diffusion.py --emotion_model {path})")
    del model, unwrapped, optimizer, lr_scheduler, train_dataloader, ema, validator, params
    finish(accelerator)


if __name__ == "__main__":
    main(sys.argv[1:])
