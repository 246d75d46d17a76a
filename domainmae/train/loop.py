"""``Trainer``: the training engine behind ``pretrain()`` (:mod:`.run`).

One optimiser step = one global batch of ``train.batch_size`` crops, split over processes and
micro-batches. Data keys and masks are pure functions of (seed, step), and every forward pass
divides its summed loss by the global batch's count of scored tokens per sensor (over its number of
parts, as gradients are averaged over micro-batches and processes), so a step's loss is exactly the
global batch's: the loss curve does not depend on the number of processes, micro-batches or workers,
and ``resume`` continues the same run exactly.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..atomic import atomic_path
from ..data.loader import chunk_rows, skipped_reads
from ..distributed import DistInfo, mean_over_processes, sum_over_processes
from ..models import MaskedAutoencoder, Masking, create_model, load_pretrained
from ..models.imae import training_mix
from ..pipeline import TrainingData, build_training_data, training_loader
from ..recipes import Recipe
from ..runtime import RunDir, load_trained
from ..viz import reconstruction_images, save_reconstruction_grid
from .checkpoint import (
    checkpoint_file,
    prune_checkpoints,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)  # fmt: skip
from .fsdp import shard_model
from .interrupts import Stopped, StopRequests
from .logging import MetricsLog, progress_bar
from .optim import build_optimizer, build_scheduler, follow_schedule, scaled_lr
from .sharded import load_training_state, save_sharded

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one step's masks (independent of the data seeds), on the training ``device`` so
    the masks are drawn there: no host sampling or copy on the critical path of a GPU step."""
    state = np.random.SeedSequence([seed, step, 0x4D41534B]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state) >> 1)


def _to(batch: Any, device: torch.device) -> Any:
    """Move a (nested) batch to ``device``, non-blocking from pinned memory."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _model_for(recipe: Recipe, data: TrainingData) -> MaskedAutoencoder:
    model = create_model(recipe.model.to_config(img_size=recipe.data.crop_size, channels=data.channels,
                                                sensors=data.sensors))  # fmt: skip
    if recipe.model.pretrained:
        log.info("initialised from %s:\n%s", recipe.model.pretrained, load_pretrained(model, recipe.model.pretrained))
    if model.config.distill_from:  # i-MAE's frozen teacher: a run, .ckpt or exported model
        model.set_teacher(load_trained(model.config.distill_from).model)
    return model


def _check_masking_fits_channel_sets(recipe: Recipe, data: TrainingData) -> None:
    """Whole-channel masking needs a second channel to see: refuse one-channel fields before training."""
    strategies = {recipe.model.mask_strategy, *(m.strategy for m in recipe.model.mask_mix or [])}
    single = sorted({s for s in data.channel_sets or [] if len(s) == 1})
    if "channel" in strategies and single:
        raise ValueError(
            f"masking strategy 'channel' hides whole channels, but fields with only {single} would have nothing "
            "left to see; drop those fields or choose another model.mask_strategy / model.mask_mix"
        )


def micro_batch_rows(batch_size: int, micro_batch: int | None, world: int, crops_per_read: int) -> int:
    """Crops per forward pass: the largest split of one process's share of the batch within ``micro_batch``.

    ``micro_batch`` is a memory cap, not a promise: lowering ``train.batch_size`` below it, or to a size
    it does not divide, gives smaller micro-batches (gradient accumulation makes the step the same).
    Each micro-batch holds whole field reads (``crops_per_read`` crops each).
    """
    unit = world * crops_per_read
    if batch_size % unit:
        below, above = batch_size // unit * unit, (batch_size // unit + 1) * unit
        near = " or ".join(f"train.batch_size={n}" for n in (below, above) if n > 0)
        raise ValueError(
            f"train.batch_size {batch_size} must be a multiple of {world} process(es) x data.crops_per_read "
            f"{crops_per_read} = {unit} (every process takes whole field reads); set {near}, "
            "or change data.crops_per_read"
        )
    share = batch_size // world
    cap = min(micro_batch or share, share)
    # crops_per_read divides share, so this always ends at a valid size (at worst one read per micro-batch).
    return next(m for m in range(cap - cap % crops_per_read, 0, -crops_per_read) if share % m == 0)


class Trainer:
    """Holds one run's model, optimiser, data stream and run directory."""

    def __init__(self, recipe: Recipe, run_dir: RunDir, info: DistInfo, resume: bool, quiet: bool) -> None:
        t = recipe.train
        self.recipe, self.run_dir, self.info, self.quiet = recipe, run_dir, info, quiet
        self.data = build_training_data(recipe.data, seed=t.seed)
        if self.data.band_stats and not recipe.data.band_stats:
            # Measured on this run's data: pretrain saves them with the run, so reconstruct/embed normalise alike.
            data = recipe.data.model_copy(update={"band_stats": self.data.band_stats})
            self.recipe = recipe = recipe.model_copy(update={"data": data})
        self.model = _model_for(recipe, self.data).to(info.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        # Sharded before the optimiser is built, which must hold the shards. Alone, fsdp trains the whole model.
        self.sharded = t.strategy == "fsdp" and info.world > 1
        if self.sharded:
            shard_model(self.model, info, bf16=t.bf16)
        k = self.data.crops_per_item
        self.micro_rows = micro_rows = micro_batch_rows(t.batch_size, t.micro_batch, info.world, k)
        if t.micro_batch is not None and micro_rows != t.micro_batch:
            log.info("micro-batches of %d crops (train.micro_batch %d is a cap; %d splits the batch of %d evenly)",
                     micro_rows, t.micro_batch, micro_rows, t.batch_size)  # fmt: skip
        _check_masking_fits_channel_sets(recipe, self.data)
        # Extra forward keywords of each step: none for an MAE (its path is untouched), i-MAE's mixing weight.
        self.mix = training_mix(self.model.config, t.seed, k)
        self.micro = t.batch_size // (micro_rows * info.world)
        self.steps_per_epoch = self.data.steps_per_epoch(t.batch_size // k)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.lr = scaled_lr(t.base_lr, t.batch_size)
        self.optimizer = build_optimizer(self.model, self.lr, t.weight_decay, t.betas)
        warmup = min(round(t.warmup_epochs * self.steps_per_epoch), self.total_steps)
        self.scheduler = build_scheduler(self.optimizer, warmup, self.total_steps, t.min_lr / self.lr)
        self.step, self.bad_steps = 0, 0
        self.skipped = 0  # unreadable items replaced so far in the run (data.on_error=skip)
        if resume:
            self._restore(checkpoint_file(run_dir.root))
        self.ddp = (
            # Buffers are fixed position/wavelength codes: no need to broadcast them every step.
            DistributedDataParallel(self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                    broadcast_buffers=False)
            if info.world > 1 and not self.sharded else self.model
        )  # fmt: skip
        self.forward = torch.compile(self.ddp) if t.compile else self.ddp
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.bf16 and info.device.type == "cuda")

    # ------------------------------------------------------------- state
    def _state(self, weights: bool = True) -> dict[str, Any]:
        """The run's state for a checkpoint; without ``weights`` (a sharded one's) no model or optimiser."""
        return {
            "model_config": self.model.config.to_dict(),
            **({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()} if weights else {}),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "bad_steps": self.bad_steps,
            "skipped": self.skipped,
            "rng": rng_state(),
            "recipe": self.recipe.model_dump(mode="json"),
        }

    def _restore(self, source: Path) -> None:
        """Continue from checkpoint ``source``: a file or a sharded folder, written by any number of processes."""
        state = read_checkpoint(source)
        load_training_state(self.model, self.optimizer, source, state)
        self.scheduler.load_state_dict(state["scheduler"])
        # The restored optimiser holds the lr its run's schedule reached; a resume with another --max-steps
        # continues this run's schedule from the restored step (else its first update used the old lr).
        follow_schedule(self.scheduler)
        self.step, self.bad_steps = state["step"], state["bad_steps"]
        self.skipped = state.get("skipped", 0)  # absent from checkpoints of older versions
        set_rng_state(state["rng"])

    def save(self) -> None:
        """``last.ckpt`` and a periodic copy, both atomic, written by the main process; under fsdp a sharded
        folder that every process writes its shards to (:func:`save_sharded`)."""
        if self.recipe.train.strategy == "fsdp":
            save_sharded(self.run_dir, self.step, self.model, self.optimizer, self._state(weights=False), self.info)
        elif self.info.is_main:
            last = save_checkpoint(self.run_dir.last, self._state())
            with atomic_path(self.run_dir.checkpoint(self.step)) as tmp:
                shutil.copyfile(last, tmp)
        if self.info.is_main:
            prune_checkpoints(self.run_dir, self.recipe.train.keep_checkpoints, self.step)

    # -------------------------------------------------------------- steps
    def _masking(self, batch: dict[str, Any], step: int) -> Masking:
        """The masks of the optimiser step counted from 0 as ``step`` for the whole global batch (same on every
        process)."""
        m, g = self.model, _step_generator(self.recipe.train.seed, step, self.info.device)
        strategy, ratio = None, None
        if self.recipe.model.mask_mix:
            mix = self.recipe.model.mask_mix
            # Entries not started yet weigh 0: one draw per step either way, so resume and DDP stay exact.
            weights = torch.tensor([x.weight * (step >= x.start * self.total_steps) for x in mix], device=g.device)
            # int() waits for the GPU, but the previous step's loss was read already: nothing is queued.
            pick = int(torch.multinomial(weights, 1, generator=g))
            strategy, ratio = mix[pick].strategy, mix[pick].ratio
        inputs, grid = m.split_inputs(batch["images"], batch["channels"])
        return m.sample_masking(inputs, grid, mask_ratio=ratio, strategy=strategy, generator=g,
                                batch=self.recipe.train.batch_size)  # fmt: skip

    def _loss_counts(self, batches: Sequence[dict[str, Any]], maskings: Sequence[Masking]) -> dict[str, torch.Tensor]:
        """``{sensor: int64}``: the scored tokens (masked, valid) of the whole global batch under this step's
        masks, this process's micro-batches counted and the counts summed over processes. Every forward divides
        its summed loss by them (over the number of forwards): its own mean would weigh its tokens by how many
        it holds, which differs from part to part (random masking of several sensors, whole-sensor masking,
        nodata), so averaging the parts' means over micro-batches and processes would not be the batch's loss."""
        local = [self.model.loss_counts(batch["images"], batch["channels"], valid=batch["valid"], masking=masking,
                                        **self.mix(self.step))
                 for batch, masking in zip(batches, maskings)]  # fmt: skip
        names = list(local[0])
        return dict(zip(names, sum_over_processes(torch.stack([sum(c[n] for c in local) for n in names]), self.info)))

    def train_step(self, batches: Sequence[dict[str, Any]]) -> dict[str, float] | None:
        """One optimiser step over this process's micro-batches; None when the loss was not finite."""
        t = self.recipe.train
        masking = self._masking(batches[0], self.step)
        maskings = [masking.rows(chunk_rows(j, self.info.world, self.info.rank, self.micro_rows))
                    for j in range(len(batches))]  # fmt: skip
        counts, parts = self._loss_counts(batches, maskings), len(batches) * self.info.world
        totals: dict[str, torch.Tensor] = {}
        for j, (batch, part) in enumerate(zip(batches, maskings)):
            # DDP reduces once, after the last micro-batch; FSDP reduce-scatters after each one, so no process
            # ever holds the whole model's gradients (the memory FSDP is for).
            reduce = j == len(batches) - 1 or self.info.world == 1 or self.sharded
            sync = contextlib.nullcontext() if reduce else self.ddp.no_sync()
            with sync:
                with self.autocast:
                    out = self.forward(batch["images"], batch["channels"], valid=batch["valid"], masking=part,
                                       counts=counts, parts=parts, **self.mix(self.step))  # fmt: skip
                # Gradients are averaged over the forwards: here over micro-batches, by DDP/FSDP over processes.
                (out.loss / len(batches)).backward()
            for name, value in {"loss": out.loss, **out.losses}.items():
                totals[name] = totals.get(name, 0) + value.detach().float() / len(batches)
        names = list(totals)
        values = mean_over_processes(torch.stack([totals[n] for n in names]), self.info)
        if not torch.isfinite(values).all():  # the same decision on every process: the values are shared
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        multi = self.model.multi_sensor
        return {("loss" if n == "loss" else f"loss_{n}"): float(v) for n, v in zip(names, values) if n == "loss" or multi}

    def preview(self, batch: dict[str, Any]) -> None:
        """Reconstruction PNG of the first crops of ``batch``, the first micro-batch of the step just taken, under
        that step's masks (and i-MAE mixing weight), labelled with the steps done. A sharded model's forward needs
        every process (they gather its weights together); only the main one draws."""
        taken = self.step - 1  # the step counter has moved past it
        masking = self._masking(batch, taken).rows(slice(0, self.micro_rows))
        self.model.eval()
        with torch.no_grad(), self.autocast:
            out = self.model(batch["images"], batch["channels"], valid=batch["valid"], masking=masking,
                             **self.mix(taken))  # fmt: skip
        if self.info.is_main:
            images = reconstruction_images(self.model, batch["images"], batch["channels"], out)
            title = f"{self.recipe.name} step {self.step}  loss {out.loss.item():.4f}"
            save_reconstruction_grid(images, batch["channels"], self.run_dir.reconstruction(self.step), title=title)
        self.model.train()

    # --------------------------------------------------------------- run
    def _agree(self, stop_requested: bool, skipped: int) -> tuple[bool, int]:
        """Whether any process was asked to stop, and the reads skipped in the whole global batch: shared
        at the step boundary, so all processes stop after the same step and count the same skips."""
        local = torch.tensor([float(stop_requested), float(skipped)], dtype=torch.float64, device=self.info.device)
        total = sum_over_processes(local, self.info)
        return bool(total[0] > 0), round(float(total[1]))

    def run(self) -> None:
        t = self.recipe.train
        main = self.info.is_main
        tensorboard = self.run_dir.tensorboard if t.tensorboard else None
        metrics = MetricsLog(self.run_dir.metrics, self.step, tensorboard) if main else None
        bar = progress_bar(self.total_steps, self.step, main and not self.quiet)
        preview_every = t.preview_every or t.checkpoint_every
        self.model.train()
        begun = (self.step, self.skipped)  # for the summary of skipped reads
        failures: Counter[str] = Counter()  # the skipped reads this process saw
        # Checkpoints are written between steps only. A first SIGINT/SIGTERM lets the step in progress
        # finish; a second one (or any other KeyboardInterrupt) leaves the last checkpoint as it is.
        try:
            with StopRequests() as stop:  # before iter(): forked DataLoader workers inherit the handlers
                batches = iter(training_loader(
                    self.data, self.recipe, rank=self.info.rank, world=self.info.world,
                    pin_memory=self.info.device.type == "cuda", start_step=self.step, total_steps=self.total_steps,
                    micro=self.micro,
                ))  # fmt: skip
                while self.step < self.total_steps:
                    start = time.perf_counter()
                    step_batches = [_to(next(batches), self.info.device) for _ in range(self.micro)]
                    lr = self.optimizer.param_groups[0]["lr"]  # this step's: the scheduler moves on below
                    record = self.train_step(step_batches)
                    self.scheduler.step()
                    self.step += 1
                    skipped_here = [failure for batch in step_batches for failure in skipped_reads(batch)]
                    failures.update(skipped_here)
                    stopping, skipped = self._agree(stop.received is not None, len(skipped_here))
                    self.skipped += skipped
                    bar.update(1)
                    if record is None:
                        self.bad_steps += 1
                        log.warning("step %d: non-finite loss, update skipped (%d in a row)", self.step, self.bad_steps)
                        if self.bad_steps >= t.max_bad_steps:
                            raise NonFiniteLossError(
                                f"{self.bad_steps} non-finite losses in a row at step {self.step}; "
                                f"the last good checkpoint is kept in {self.run_dir.checkpoints}"
                            )
                    else:
                        self.bad_steps = 0
                        self._report({**record, "lr": lr}, time.perf_counter() - start, metrics, bar)
                    last = self.step == self.total_steps
                    # Also after a non-finite step: its update was skipped, so this is the last good state.
                    if self.step % t.checkpoint_every == 0 or last or stopping:
                        self.save()
                    if (main or self.sharded) and record is not None and (self.step % preview_every == 0 or last):
                        self.preview(step_batches[0])
                    if stopping and not last:
                        # Another process's signal stops this one too: it ends as if it had received SIGTERM.
                        signum = stop.received or signal.SIGTERM
                        raise Stopped(f"stopped by {signum.name if stop.received else 'another process'} after step "
                                      f"{self.step}; checkpoint written, continue with --resume", signum)  # fmt: skip
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
            if main and failures:
                self._summarise_skips(*begun, failures)

    def _report(self, record: dict[str, float], seconds: float, metrics: MetricsLog | None, bar: tqdm) -> None:
        """Progress bar and (main process, every ``log_every`` steps and the last) a ``metrics.jsonl`` line."""
        t = self.recipe.train
        speed = t.batch_size / seconds
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", samples_s=f"{speed:.1f}")
        if metrics is not None and (self.step % t.log_every == 0 or self.step == self.total_steps):
            metrics.log({"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch, **record,
                         "samples_per_s": speed,
                         **({"skipped": self.skipped} if self.recipe.data.on_error == "skip" else {})})  # fmt: skip

    def _summarise_skips(self, start_step: int, start_skipped: int, failures: Counter[str]) -> None:
        """One warning at the end listing what was skipped (the log of each skip scrolls away in a long run)."""
        listed = "\n  ".join(f"{n}x {failure}" for failure, n in failures.most_common(20))
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        log.warning("%d unreadable item read(s) were skipped and replaced in steps %d-%d (%d in the run so far); "
                    "this process saw:\n  %s%s", self.skipped - start_skipped, start_step + 1, self.step, self.skipped,
                    listed, more)  # fmt: skip
