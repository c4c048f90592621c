"""The update loop all three trainers share (`UpdateLoop`) and the set-up before it (`TrainingRun`)."""

from __future__ import annotations

import contextlib

import torch

from talking_head.training.checkpoints import save_checkpoint, start_or_resume
from talking_head.training.data_order import epoch_dataloader, make_dataloader, seed_step, step_delay
from talking_head.training.logs import batch_ids, batch_log, log_scalars, metrics_log, weights_checksum
from talking_head.training.run_setup import init_trackers, make_ema, make_lr_scheduler


class UpdateLoop:
    """The training loop all three trainers share, around their own forward/backward/step.

        loop = UpdateLoop(accelerator, args, ...)
        for batch in loop:                       # epochs, resume position and per-step seeds handled here
            with accelerator.accumulate(model):
                loss = ...; loop.backward_and_step(loss, batch_size, optimizer, lr_scheduler, params)
            loop.end_micro_step(batch, loss.item(), lr_scheduler)

    After each optimizer update (`sync_gradients`): EMA step, progress bar, `train/loss` and `train/lr` logging,
    `save_state` every `--checkpointing_steps`, `validate()` every `--validation_steps` (main process), and a
    checkpoint plus validation at the last update. `global_step` and `epoch` are read by the caller afterwards.
    The last update is the `--max_train_steps`-th, or the first to end past `--max_train_minutes`; after a stop
    request (talking_head.trainers.budget) the loop saves a checkpoint and raises `TrainingStopped`.
    """

    def __init__(self, accelerator, args, *, train_dataloader, sampler, output_dir, run_shape: dict,
                 global_step: int, first_epoch: int, skip_batches: int, metrics, batches, validate,
                 ema=None, ema_model=None, loss_format: str = ".4f"):
        from tqdm.auto import tqdm

        self.accelerator, self.args = accelerator, args
        self.train_dataloader, self.sampler = train_dataloader, sampler
        self.output_dir, self.run_shape = output_dir, run_shape
        self.global_step, self.epoch = global_step, first_epoch
        self.first_epoch, self.skip_batches = first_epoch, skip_batches
        self.metrics, self.batches, self.validate = metrics, batches, validate
        self.ema, self.ema_model, self.loss_format = ema, ema_model, loss_format
        from talking_head.trainers.budget import CLOCK, progress_hook

        self.clock, self.hook = CLOCK, progress_hook()
        self.micro_step, self.accumulated_loss = 0, 0.0
        self.done = global_step >= args.max_train_steps or CLOCK.exhausted()
        self.progress = tqdm(range(args.max_train_steps), initial=global_step, desc="updates",
                             disable=not accelerator.is_local_main_process or self.hook is not None)

    def __iter__(self):
        from talking_head.trainers.budget import set_in_loop

        args, accelerator = self.args, self.accelerator
        self.clock.start()
        set_in_loop(True)
        try:
            while not self.done:
                skip = self.skip_batches if self.epoch == self.first_epoch else 0
                for batch in epoch_dataloader(accelerator, self.train_dataloader, self.sampler, self.epoch, skip):
                    seed_step(args.seed, accelerator.process_index, self.global_step, self.micro_step)
                    yield batch
                    if self.done:
                        break
                else:
                    self.epoch += 1
        finally:
            set_in_loop(False)
        self.progress.close()

    def backward_and_step(self, loss, batch_size: int, optimizer, lr_scheduler, parameters) -> None:
        """Inside `accelerator.accumulate`: add the loss (averaged over processes) to the update's logged loss,
        backward, clip the gradients of `parameters` on the syncing micro-step, optimizer and LR steps."""
        accelerator = self.accelerator
        mean_loss = accelerator.gather(loss.detach().repeat(batch_size)).mean()
        self.accumulated_loss += mean_loss.item() / accelerator.gradient_accumulation_steps
        accelerator.backward(loss)
        if accelerator.sync_gradients and self.args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def end_micro_step(self, batch: dict, loss: float, lr_scheduler) -> None:
        args, accelerator = self.args, self.accelerator
        self.batches.write(step=self.global_step, micro=self.micro_step, epoch=self.epoch, ids=batch_ids(batch),
                           loss=loss, lr=lr_scheduler.get_last_lr()[0])
        self.micro_step += 1
        if not accelerator.sync_gradients:
            return
        self.micro_step = 0
        if self.ema is not None:
            self.ema.step(self.ema_model.parameters())
        self.global_step += 1
        self.progress.update(1)
        lr = lr_scheduler.get_last_lr()[0]
        log_scalars(accelerator, self.metrics, {"train/loss": self.accumulated_loss, "train/lr": lr}, self.global_step)
        self.progress.set_postfix(loss=format(self.accumulated_loss, self.loss_format), lr=f"{lr:.2e}")
        if self.hook is not None and accelerator.is_local_main_process:
            self.hook(self.global_step, self.accumulated_loss, lr)
        self.accumulated_loss = 0.0
        out_of_time, stop = self._budget_or_stop()
        self.done = self.global_step >= args.max_train_steps or out_of_time
        if self.global_step % args.checkpointing_steps == 0 or self.done or stop:
            path = save_checkpoint(accelerator, self.output_dir, self.global_step,
                                   {**self.run_shape, "epoch": self.epoch, "train_seconds": self.clock.elapsed()},
                                   args.checkpoints_total_limit)
            if stop:
                from talking_head.trainers.budget import TrainingStopped, set_in_loop

                set_in_loop(False)
                self.progress.close()
                raise TrainingStopped(stop, path)
        if (args.validation_steps and self.global_step % args.validation_steps == 0) or self.done:
            if accelerator.is_main_process:
                self.validate()
        step_delay()

    def _budget_or_stop(self) -> tuple[bool, int | None]:
        """(past --max_train_minutes, the signal of a stop request or None), the same on every process."""
        from talking_head.trainers.budget import stop_requested

        out_of_time, stop = self.clock.exhausted(), stop_requested()
        if self.accelerator.num_processes > 1 and (self.clock.budget is not None or self.hook is not None):
            flags = torch.tensor([float(out_of_time), float(stop or 0)], device=self.accelerator.device)
            flags = self.accelerator.reduce(flags, reduction="max")
            out_of_time, stop = bool(flags[0] > 0), (int(flags[1]) or None)
        return out_of_time, stop


class TrainingRun:
    """What every trainer sets up the same way before its loop, in one call (`prepare_training`): AdamW over
    `params`, the resumable data loader, the LR schedule, `accelerator.prepare`, the EMA (started from the prepared
    weights, identical on every process), trackers, the metrics and batch logs, and the resume position."""

    def __init__(self, accelerator, args, output_dir, name: str, model, params, train_dataset, collate_fn,
                 ema_cls=None, **shape):
        self.accelerator, self.args, self.output_dir = accelerator, args, output_dir
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
        loader, self.sampler = make_dataloader(train_dataset, args.train_batch_size, args.seed,
                                               args.dataloader_num_workers, collate_fn)
        # The prepared scheduler steps once per process per update (Accelerate), hence the factor inside.
        lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
        self.model, self.optimizer, self.train_dataloader, self.lr_scheduler = accelerator.prepare(
            model, optimizer, loader, lr_scheduler)
        self.ema = make_ema(accelerator, args, self.model, ema_cls)
        init_trackers(accelerator, args, name)
        self.metrics = metrics_log(accelerator, output_dir)
        self.batches = batch_log(accelerator, args)
        self.run_shape, self.global_step, self.first_epoch, self.skip_batches = start_or_resume(
            accelerator, args, output_dir, self.train_dataloader, self.ema, **shape)

    def shape_line(self) -> str:
        """'P process(es) x batch B x accumulation A; N updates', for each trainer's opening log line."""
        return (f"{self.accelerator.num_processes} process(es) x batch {self.args.train_batch_size} x accumulation "
                f"{self.accelerator.gradient_accumulation_steps}; {self.args.max_train_steps} updates")

    def update_loop(self, validate, loss_format: str = ".4f") -> "UpdateLoop":
        """The shared `UpdateLoop` over this run's loader, from its resume position."""
        return UpdateLoop(self.accelerator, self.args, train_dataloader=self.train_dataloader, sampler=self.sampler,
                          output_dir=self.output_dir, run_shape=self.run_shape, global_step=self.global_step,
                          first_epoch=self.first_epoch, skip_batches=self.skip_batches, metrics=self.metrics,
                          batches=self.batches, validate=validate, ema=self.ema, ema_model=self.model,
                          loss_format=loss_format)

    @contextlib.contextmanager
    def averaged_weights(self, model):
        """Inside: `model` (the unwrapped one) holds the EMA weights, for validation; its own come back after."""
        if self.ema is None:
            yield model
            return
        self.ema.store(model.parameters())
        self.ema.copy_to(model.parameters())
        try:
            yield model
        finally:
            self.ema.restore(model.parameters())

    def finish_weights(self, model, global_step: int) -> None:
        """After the loop: wait for every process, put the EMA weights into `model` (the unwrapped one) and close
        the batch log with the final weights' checksum."""
        self.accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(model.parameters())
        if self.args.log_batch_ids:
            self.batches.write(final=True, step=global_step, checksum=weights_checksum(model))
