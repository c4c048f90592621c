"""A resumable data order: epoch e's order is a permutation drawn from (seed, e), the same on every process,
and per-step seeds (noise, timesteps, dropout from (seed, process, step)), so a resumed run repeats the
uninterrupted one step for step."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import torch

STEP_DELAY_ENV = "TALKING_HEAD_TRAIN_STEP_DELAY"


class ResumableRandomSampler(torch.utils.data.Sampler):
    """Epoch `e` visits the items in the order `default_rng([seed, e]).permutation(n)`.

    Stateless apart from the epoch, so it is the same on every process (Accelerate then gives each process
    its own batches of it) and the same after a resume.
    """

    def __init__(self, num_items: int, seed: int = 0):
        if num_items < 1:
            raise ValueError("the dataset is empty")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items).tolist())

    def __len__(self) -> int:
        return self.num_items


def make_dataloader(dataset, batch_size: int, seed: int, num_workers: int, collate_fn):
    """A DataLoader over `dataset` in the resumable order; returns (dataloader, sampler)."""
    sampler = ResumableRandomSampler(len(dataset), seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        drop_last=False, persistent_workers=False,
        # Its own generator, so creating an iterator does not consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def epoch_dataloader(accelerator, dataloader, sampler: ResumableRandomSampler, epoch: int, skip_batches: int = 0):
    """The prepared `dataloader` set to `epoch` (sampler and dataset), minus its first `skip_batches` batches."""
    sampler.set_epoch(epoch)
    dataset = dataloader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # random windows / references / crops of this epoch
    loader = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
    if hasattr(loader, "set_epoch"):
        # Accelerate's loaders set their sampler's epoch from their own counter when iterated; align it.
        loader.set_epoch(epoch)
    return loader


def seed_for_step(seed: int, process_index: int, global_step: int, micro_step: int) -> int:
    return int(np.random.SeedSequence([seed, process_index, global_step, micro_step]).generate_state(1)[0])


def seed_step(seed: int, process_index: int, global_step: int, micro_step: int) -> None:
    """Seed the global RNGs (torch CPU and CUDA, numpy, random) for one batch: noise, timesteps, dropout,
    LayerDrop and SpecAugment masks (transformers draws those with numpy) then depend only on (seed, process,
    update, batch within the update), so a resumed run repeats the uninterrupted one."""
    value = seed_for_step(seed, process_index, global_step, micro_step)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def step_delay() -> None:
    """Testing aid: sleep TALKING_HEAD_TRAIN_STEP_DELAY seconds (see the module docstring)."""
    delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
