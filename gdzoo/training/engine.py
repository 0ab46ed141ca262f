"""The training and evaluation loops: AMP (bf16/fp16), channels_last, gradient clipping, EMA, per-step callbacks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum
from .freeze import set_train_mode
from .metrics import ClassificationMeter, SegmentationMeter
from .reporting import ProgressLines, progress

__all__ = ["AMP_DTYPES", "Engine", "LoopState", "NonFiniteLossError", "build_criterion", "soft_dice_loss"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The training loss is NaN or infinite: the run stops before the step that would carry it into the weights."""


def _finite_everywhere(value: float, info: DistInfo) -> bool:
    """Whether ``value`` is finite on every rank (one tiny all-reduce under DDP, so every rank stops together)."""
    if not info.distributed:
        return math.isfinite(value)
    bad = torch.tensor([0.0 if math.isfinite(value) else 1.0], dtype=torch.float64)
    all_reduce_sum([bad], info)
    return bad.item() == 0.0


@dataclass
class LoopState:
    """Where training is: resumable counters and the running sums of the current epoch."""

    epoch: int = 0
    step_in_epoch: int = 0  # batches done in ``epoch``
    global_step: int = 0
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "correct": 0.0, "count": 0.0, "samples": 0.0})

    def reset_sums(self) -> None:
        self.sums = {k: 0.0 for k in self.sums}


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean Dice`` of the foreground classes from softmax (or sigmoid, one logit) probabilities, pooled over
    the batch's pixels: the overlap term of a Dice + cross-entropy loss, insensitive to the class balance."""
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits[:, 0])[:, None]
        onehot = target.float()[:, None]
    else:
        probs = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return 1 - dice.mean()


def build_criterion(task: str, label_smoothing: float = 0.0,
                    loss: str = "cross_entropy") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (with label smoothing) over classes or pixels; BCE for one-logit segmentation; with
    ``loss='dice_ce'`` (segmentation only) plus :func:`soft_dice_loss`."""
    if loss not in ("cross_entropy", "dice_ce"):
        raise ValueError(f"loss must be 'cross_entropy' or 'dice_ce', got {loss!r}")
    if loss == "dice_ce" and task != "segmentation":
        raise ValueError(f"loss='dice_ce' is for segmentation models; this is a {task} model (use 'cross_entropy')")

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if task == "segmentation" and logits.shape[1] == 1:
            value = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
        else:
            value = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        return value + soft_dice_loss(logits, target) if loss == "dice_ce" else value

    return criterion


def _hits(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Correct predictions and counted items (samples, or pixels for segmentation)."""
    pred = (logits[:, 0] > 0).long() if logits.dim() == 4 and logits.shape[1] == 1 else logits.argmax(1)
    return float((pred == target).sum().item()), float(target.numel())


class Engine:
    """Runs epochs of one model on one device; the trainer owns data, checkpoints and logging."""

    def __init__(
        self,
        model: nn.Module,
        train_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        info: DistInfo,
        task: str,
        amp: str = "none",
        channels_last: bool = False,
        clip_grad: float | None = None,
        scaler: torch.amp.GradScaler | None = None,
        ema: nn.Module | None = None,
        show_progress: bool = True,
        log_every_s: float | None = None,
    ) -> None:
        self.model, self.train_model = model, train_model
        self.optimizer, self.scheduler, self.criterion = optimizer, scheduler, criterion
        self.info, self.task, self.device = info, task, info.device
        self.amp_dtype = AMP_DTYPES[amp]
        self.channels_last, self.clip_grad, self.scaler, self.ema = channels_last, clip_grad, scaler, ema
        self.show_progress = show_progress and info.is_primary
        self.log_every_s = log_every_s  # progress lines when stdout is not a terminal (ProgressLines)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision when ``amp`` is bf16/fp16, else a no-op."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=non_blocking)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, target.to(self.device, non_blocking=non_blocking)

    def train_one_epoch(
        self, loader: DataLoader, state: LoopState, steps_per_epoch: int,
        on_step: Callable[[LoopState], None] | None = None, epochs: int | None = None,
    ) -> dict[str, float]:
        """One (possibly resumed) epoch of a run of ``epochs`` (for the run's ETA; None: this one is the last);
        ``on_step`` runs after every optimizer step (step checkpoints)."""
        set_train_mode(self.model, True)
        self.train_model.train(self.model.training)
        bar = progress(loader, steps_per_epoch, f"epoch {state.epoch + 1}", self.show_progress,
                       initial=state.step_in_epoch)
        lines = ProgressLines(self.log_every_s if self.show_progress else None, state.epoch, epochs or state.epoch + 1,
                              steps_per_epoch, state.step_in_epoch, self.info.world_size)
        start, seen = time.perf_counter(), 0
        for images, target in bar:
            images, target = self._to_device(images, target)
            with self.autocast():
                logits = self.train_model(images)
            loss = self.criterion(logits, target)
            loss_value = loss.detach().item()  # the step's one host sync, before the step so a bad loss never lands
            if not _finite_everywhere(loss_value, self.info):
                raise NonFiniteLossError(
                    f"the training loss is {loss_value} (not finite) at epoch {state.epoch + 1}, batch "
                    f"{state.step_in_epoch + 1} (step {state.global_step + 1}, lr "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}); the run stops before updating the weights, so its "
                    "last checkpoint (last.pth, if one was written) is the last good state. Lower optim.lr, set "
                    "train.clip_grad or use train.amp=none, then --resume")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if self.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if self.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
                self.optimizer.step()
            self.scheduler.step()
            state.global_step += 1
            state.step_in_epoch += 1
            if self.ema is not None:
                self.ema.update(self.model, step=state.global_step)
            n = len(target)
            correct, count = _hits(logits.detach(), target)
            state.sums["loss"] += loss_value * n
            state.sums["samples"] += n
            state.sums["correct"] += correct
            state.sums["count"] += count
            seen += n
            if self.show_progress:
                rate = seen * self.info.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rate:.0f}")
                lines.update(state.step_in_epoch, seen, state.sums["loss"] / max(state.sums["samples"], 1),
                             self.optimizer.param_groups[0]["lr"])
            if on_step is not None:
                on_step(state)
        bar.close()
        elapsed = time.perf_counter() - start
        sums = torch.tensor([state.sums[k] for k in ("loss", "samples", "correct", "count")], dtype=torch.float64)
        all_reduce_sum([sums], self.info)
        loss_sum, samples, correct, count = sums.tolist()
        metric = "top1" if self.task == "classification" else "pixel_acc"
        return {"loss": loss_sum / max(samples, 1), metric: 100.0 * correct / max(count, 1),
                "img_per_s": seen * self.info.world_size / max(elapsed, 1e-9), "time_s": elapsed}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, classes: list[str], desc: str = "eval") -> dict[str, Any]:
        """Loss and task metrics of ``model`` on ``loader``, summed over ranks."""
        was_training = model.training
        model.eval()
        meter_type = ClassificationMeter if self.task == "classification" else SegmentationMeter
        meter = meter_type(len(classes), classes)
        sums = torch.zeros(2, dtype=torch.float64)
        for images, target in progress(loader, len(loader), desc, self.show_progress):
            images, target = self._to_device(images, target)
            with self.autocast():
                logits = model(images)
            sums += torch.tensor([self.criterion(logits, target).item() * len(target), len(target)],
                                 dtype=torch.float64)
            meter.update(logits, target)
        all_reduce_sum([sums, *meter.tensors()], self.info)
        model.train(was_training)
        return {"loss": sums[0].item() / max(sums[1].item(), 1), **meter.compute()}
