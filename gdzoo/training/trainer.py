"""``train(recipe)``: model, data, optimizer, resume, the epoch loop, checkpoints, reports and Hub export, in order."""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._io import FolderLock, atomic_write, atomic_write_text
from ..data.sampling import EpochSampler, SeededDataset
from ..data.segmentation import SegmentationTiles
from ..errors import UserError
from .checkpoint import capture_rng, check_resumable, load_checkpoint, restore_rng, save_checkpoint
from .config import Recipe, recipe_sha256, recipe_to_yaml
from .datasets import DataBundle, build_datasets, dataset_num_classes
from .distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, cleanup, init_distributed
from .engine import Engine, LoopState, build_criterion
from .freeze import apply_freeze
from .modeling import count_trainable, create_model, is_segmentation, stem_gd_layer
from .optim import create_optimizer, create_scheduler
from .reporting import MetricsLog, format_summary, plot_curves, plot_segmentation_examples, scalar_metrics
from .rundir import RunFolderError, claim_run_dir
from .tiling import whole_image_metrics

__all__ = ["TrainResult", "train", "set_determinism", "seed_everything"]


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    model: nn.Module  # best weights (or last when there is no validation)
    metrics: dict[str, Any]  # final evaluation (test split, else validation)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    export_dir: Path | None = None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels (``torch.use_deterministic_algorithms``), needed for bit-exact resume."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def _say(info: DistInfo, message: str) -> None:
    if info.is_primary:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def _loader(dataset: Dataset, batch_size: int, sampler: EpochSampler, workers: int, device: torch.device) -> DataLoader:
    """A DataLoader with its own generator, so creating it never consumes the global RNG (exact resume)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator(), persistent_workers=False, drop_last=False)


def eval_loader(dataset: Dataset, recipe: Recipe, info: DistInfo) -> DataLoader:
    sampler = EpochSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size, pad=False)
    batch = recipe.data.eval_batch_size or 2 * recipe.data.batch_size
    return _loader(dataset, batch, sampler, recipe.data.workers, info.device)


def whole_image_scores(model: nn.Module, dataset: Dataset, recipe: Recipe, device: torch.device) -> dict[str, float]:
    """``full_pixel_acc`` / ``full_dice`` / ``full_iou`` of a segmentation split's whole images (tiled, with
    ``data.full_image_overlap``) and ``full_per_image`` (each image id's pixel confusion matrix); empty when the
    recipe does not ask for them or the data is not image tiles."""
    overlap = recipe.data.full_image_overlap
    if overlap is None or not isinstance(dataset, SegmentationTiles):
        return {}
    batch = recipe.data.eval_batch_size or 2 * recipe.data.batch_size
    metrics = whole_image_metrics(model, dataset.images, dataset.masks, dataset.mean, dataset.std, dataset.tile,
                                  overlap, batch, device, recipe.data.num_classes)
    per_image = dict(zip((p.id for p in dataset.pairs), metrics["per_image_confusion"]))
    return {f"full_{k}": v for k, v in scalar_metrics(metrics).items()} | {"full_per_image": per_image}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _better(metric: str, value: float, best: float) -> bool:
    """Losses improve downwards, every other metric upwards."""
    return value < best if metric.endswith("loss") else value > best


def _best_metric(recipe: Recipe, task: str) -> str:
    if recipe.output.best_metric != "auto":
        return recipe.output.best_metric
    return "top1" if task == "classification" else "dice"


class _Checkpointer:
    """Writes ``last.pth`` (full training state) on rank 0, with every rank's RNG state."""

    def __init__(self, run_dir: Path, info: DistInfo, parts: dict[str, Any], recipe: Recipe) -> None:
        self.path, self.info, self.parts, self.recipe = run_dir / "last.pth", info, parts, recipe
        self.best: dict[str, Any] = {"value": None, "epoch": None}

    def save(self, state: LoopState) -> None:
        sums = torch.tensor([state.sums[k] for k in ("loss", "correct", "count", "samples")], dtype=torch.float64)
        all_reduce_sum([sums], self.info)  # every rank's running sums, so a resume logs the same epoch means
        rng = all_gather_object(capture_rng(), self.info)
        if not self.info.is_primary:
            return
        p = self.parts
        payload = {
            "model": p["model"].state_dict(),
            "optimizer": p["optimizer"].state_dict(),
            "scheduler": p["scheduler"].state_dict(),
            "scaler": p["scaler"].state_dict() if p["scaler"] is not None else None,
            "ema": p["ema"].module.state_dict() if p["ema"] is not None else None,
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "sums": dict(zip(("loss", "correct", "count", "samples"), sums.tolist())),
            "rng": rng,
            "world_size": self.info.world_size,
            "best": dict(self.best),
            "recipe": self.recipe.to_dict(),
        }
        save_checkpoint(self.path, payload)

    def restore(self, path: Path, state: LoopState) -> None:
        ckpt = load_checkpoint(path)
        p = self.parts
        check_resumable(ckpt, path, self.recipe.model.name, self.recipe.optim.opt, p["model"].state_dict())
        p["model"].load_state_dict(ckpt["model"])
        p["optimizer"].load_state_dict(ckpt["optimizer"])
        p["scheduler"].load_state_dict(ckpt["scheduler"])
        if p["scaler"] is not None and ckpt.get("scaler"):
            p["scaler"].load_state_dict(ckpt["scaler"])
        if p["ema"] is not None and ckpt.get("ema"):
            p["ema"].module.load_state_dict(ckpt["ema"])
        state.epoch, state.step_in_epoch, state.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        state.reset_sums()
        if self.info.is_primary:
            state.sums.update(ckpt["sums"])
        rng = ckpt["rng"]
        if ckpt.get("world_size") != self.info.world_size:
            _say(self.info,
                 f"note: checkpoint written by {ckpt.get('world_size')} processes, resuming with "
                 f"{self.info.world_size}")
        restore_rng(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])
        self.best = dict(ckpt.get("best") or self.best)


def _resolve_resume(recipe: Recipe, run_dir: Path) -> Path | None:
    resume = recipe.train.resume
    if not resume:
        return None
    if resume == "auto":
        path = run_dir / "last.pth"
        return path if path.is_file() else None
    return Path(resume)


def _plot_filters(model: nn.Module, run_dir: Path) -> str:
    """Plot the stem's filters (and a GD stem's Gaussian-derivative basis) with :mod:`gdzoo.viz`; say what happened."""
    layer = stem_gd_layer(model)
    if layer is None:
        from .freeze import module_names

        try:
            layer = model.get_submodule(module_names(model, "first_conv")[0])
        except (AttributeError, ValueError):
            layer = None
        if not isinstance(layer, nn.Conv2d):
            return "no GDConv2d / Conv2d stem to plot"
    try:
        from .. import viz  # imported lazily: optional plotting module
    except ImportError:
        return "gdzoo.viz is not available: filter plot skipped"
    try:
        written = [str(viz.plot_filters(layer, run_dir / "filters.png"))]
        if hasattr(layer, "basis") and hasattr(viz, "plot_basis"):
            written.append(str(viz.plot_basis(layer, run_dir / "basis.png")))
    except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
        return f"filter plot failed: {e}"
    return ", ".join(written)


def _segmentation_figure(model: nn.Module, dataset: Dataset, bundle: DataBundle, engine: Engine, path: Path,
                         n: int = 4) -> Path:
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    images = torch.stack([s[0] for s in samples])
    masks = torch.stack([s[1] for s in samples])
    model.eval()
    with torch.no_grad(), engine.autocast():
        logits = model(images.to(engine.device)).float().cpu()
    preds = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    return plot_segmentation_examples(images, masks, preds, bundle.data_config["mean"], bundle.data_config["std"], path)


def _row(epoch: int, lr: float, train_stats: dict[str, float], val: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "lr": lr}
    row.update({f"train_{k}": v for k, v in train_stats.items()})
    if val is not None:
        row.update(scalar_metrics(val, "val_"))
    return row


def train(recipe: Recipe, command: str | None = None) -> TrainResult:
    """Run the recipe (single process, or one rank of a torchrun job) and return the result.

    The run folder is claimed first (:func:`~gdzoo.training.rundir.claim_run_dir`): a run already there is never
    started over unless ``train.resume`` continues it or ``output.overwrite`` moves it aside, and no second process
    writes into it while this one runs (:class:`~gdzoo.training.rundir.RunFolderError` otherwise).
    """
    _check_resume_file(recipe)
    info = init_distributed(recipe.train.device)
    try:
        lock = _claim_run_dir(recipe, info)
        try:
            return _train(recipe, info, command or shlex.join(["gdzoo", *sys.argv[1:]]))
        finally:
            if lock is not None:
                lock.release()
    finally:
        cleanup(info)


def _check_resume_file(recipe: Recipe) -> None:
    """A ``train.resume`` path that is no file is refused before anything (the run folder included) is written."""
    resume = recipe.train.resume
    if resume and resume != "auto" and not Path(resume).is_file():
        what = "is a folder, not a checkpoint file" if Path(resume).is_dir() else "does not exist"
        raise UserError(f"--resume {resume} {what}: give the last.pth of a gdzoo run folder, or --resume alone "
                        "to continue the recipe's own run folder")


def run_dir_of(recipe: Recipe) -> Path:
    """The run folder: ``<output.dir>/<output.name or recipe name>``."""
    return Path(recipe.output.dir) / (recipe.output.name or recipe.name)


def _claim_run_dir(recipe: Recipe, info: DistInfo) -> FolderLock | None:
    """Rank 0 guards and locks the run folder (only it writes there); every rank learns whether it refused, so no
    rank waits in a collective for a rank 0 that has stopped."""
    lock, error = None, None
    if info.is_primary:
        try:
            lock, moved = claim_run_dir(run_dir_of(recipe), recipe.train.resume, recipe.output.overwrite)
            if moved is not None:
                _say(info, f"overwrite: the earlier run's files moved to {moved}")
        except Exception as e:  # noqa: BLE001 - re-raised below, once the other ranks know
            error = e
    refusal = all_gather_object(None if error is None else str(error), info)[0]
    if error is not None:
        raise error
    if refusal is not None:
        raise RunFolderError(refusal)
    return lock


def _train(recipe: Recipe, info: DistInfo, command: str) -> TrainResult:
    t0 = time.perf_counter()
    cfg = recipe.train
    set_determinism(cfg.deterministic)
    seed_everything(cfg.seed)  # same initial weights on every rank
    run_dir = run_dir_of(recipe)
    if info.is_primary:  # the folder exists and is locked: _claim_run_dir
        saved = replace(recipe, output=replace(recipe.output, overwrite=False))  # how it went on, not what it replaced
        atomic_write_text(run_dir / "config.yaml", recipe_to_yaml(saved))

    num_classes = recipe.model.num_classes if recipe.model.num_classes is not None else dataset_num_classes(recipe.data)
    model, model_info = create_model(recipe.model, num_classes)
    task = "segmentation" if is_segmentation(model, recipe.model.task) else "classification"
    bundle = build_datasets(recipe.data, recipe.augment, model, task)
    if info.is_primary:
        atomic_write_text(run_dir / "classes.json", json.dumps(bundle.classes) + "\n")
        if bundle.split_ids:
            atomic_write_text(run_dir / "splits.json", json.dumps(bundle.split_ids, indent=1) + "\n")
    trainable = apply_freeze(model, cfg.freeze, cfg.freeze_patterns)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    seed_everything(cfg.seed + info.rank)  # per-rank model RNG (dropout); data RNG is per sample

    train_set = SeededDataset(bundle.train, cfg.seed)
    sampler = EpochSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    batch_size = recipe.data.batch_size
    steps_per_epoch = math.ceil(sampler.samples_per_epoch() / batch_size)
    optimizer = create_optimizer(model, recipe.optim)
    scheduler = create_scheduler(optimizer, recipe.sched, steps_per_epoch, cfg.epochs)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)  # warmup: early EMA follows the model
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "ema": ema}
    ckpt = _Checkpointer(run_dir, info, parts, recipe)
    log = MetricsLog(run_dir)
    state = LoopState()
    metric = _best_metric(recipe, task)
    best_file = run_dir / "best.safetensors"

    resume = _resolve_resume(recipe, run_dir)
    best_state: dict[str, torch.Tensor] | None = None
    if resume is not None:
        ckpt.restore(resume, state)
        if best_file.is_file():
            best_state = load_file(best_file)
        if info.is_primary:
            log.truncate(state.epoch)
        _say(info,
             f"resumed from {resume}: epoch {state.epoch + 1}, batch {state.step_in_epoch}, step {state.global_step}")
    elif info.is_primary:
        log.truncate(0)
        best_file.unlink(missing_ok=True)  # a fresh run never reuses an older run's best weights

    train_model: nn.Module = model
    if info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    engine = Engine(model, train_model, optimizer, scheduler, build_criterion(task, cfg.label_smoothing, cfg.loss),
                    info, task, cfg.amp, cfg.channels_last, cfg.clip_grad, scaler, ema, recipe.output.progress,
                    recipe.output.log_every_s)
    eval_model = ema.module if ema is not None else model
    val_loader = eval_loader(bundle.val, recipe, info) if bundle.val is not None else None

    _say(info, f"{recipe.name}: {recipe.model.name} ({task}, {model_info['weights']}), {model_info['params']:,} "
               f"params, {count_trainable(model):,} trainable ({len(trainable)} tensors); train {len(bundle.train)}, "
               f"val {len(bundle.val) if bundle.val is not None else 0}, test "
               f"{len(bundle.test) if bundle.test is not None else 0}; {info.world_size} x {info.device}, batch "
               f"{batch_size}, {steps_per_epoch} steps/epoch -> {run_dir}")

    def on_step(s: LoopState) -> None:
        every = cfg.checkpoint_every_steps
        if every and s.global_step % every == 0 and s.step_in_epoch < steps_per_epoch:
            ckpt.save(s)

    while state.epoch < cfg.epochs:
        epoch = state.epoch
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, state.step_in_epoch * batch_size)
        stats = engine.train_one_epoch(_loader(train_set, batch_size, sampler, recipe.data.workers, info.device), state,
                                       steps_per_epoch, on_step, cfg.epochs)
        val = None
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            val = engine.evaluate(eval_model, val_loader, bundle.classes, "val")
        row = _row(epoch, optimizer.param_groups[0]["lr"], stats, val)  # lr reached at the end of the epoch
        current = val.get(metric) if val is not None else None
        if val is not None and current is None:
            raise ValueError(f"output.best_metric {metric!r} is not a validation metric; choose from "
                             f"{sorted(scalar_metrics(val))}")
        if current is not None and (ckpt.best["value"] is None or _better(metric, current, ckpt.best["value"])):
            ckpt.best = {"value": float(current), "epoch": epoch}
            best_state = _weights(eval_model)
            if info.is_primary:
                meta = {"epoch": str(epoch), metric: f"{current:.4f}"}
                atomic_write(best_file, partial(save_file, best_state, metadata=meta))
        if info.is_primary:
            log.append(row)
            if recipe.output.plots:
                plot_curves(log.rows(), run_dir / "curves.png", "top1" if task == "classification" else "pixel_acc")
        summary = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "train_time_s")
                            and isinstance(v, float))
        _say(info, f"epoch {epoch + 1}/{cfg.epochs}  {summary}")
        state.epoch, state.step_in_epoch = epoch + 1, 0
        state.reset_sums()
        ckpt.save(state)

    if best_state is None:  # no validation: the final weights are the run's result
        best_state = _weights(eval_model)
        ckpt.best["epoch"] = cfg.epochs - 1
        if info.is_primary:
            atomic_write(best_file, lambda tmp: save_file(best_state, tmp, metadata={"epoch": str(cfg.epochs - 1)}))
    eval_model.load_state_dict(best_state)
    final_split = "test" if bundle.test is not None else "val"
    final_set = bundle.test if bundle.test is not None else bundle.val
    final = (engine.evaluate(eval_model, eval_loader(final_set, recipe, info), bundle.classes, final_split)
             if final_set is not None else {})
    if info.is_primary and final_set is not None:
        final.update(whole_image_scores(eval_model, final_set, recipe, info.device))
    result = TrainResult(run_dir, eval_model, final, log.rows() if info.is_primary else [], ckpt.best["epoch"])
    if info.is_primary:
        _finish(recipe, bundle, engine, result, final_split, metric, model_info, command, time.perf_counter() - t0)
    barrier(info)
    return result


def _selection_note(bundle: DataBundle, result: TrainResult, metric: str) -> str:
    """Which weights a run kept: the best validation epoch, or the last epoch when there is no validation split."""
    epoch = result.best_epoch + 1 if result.best_epoch is not None else "?"
    if bundle.val is not None:
        return f"best epoch {epoch} by validation {metric}"
    return f"weights of the last epoch, {epoch}; no validation split"


_RUN_CONTROL_KEYS = ("train.resume", "output.overwrite")


def without_resume(command: str) -> str:
    """The command that reproduces a run: ``command`` without its resume and overwrite flags (``--resume [PATH]``,
    ``--overwrite``, ``--train.resume X``, ``--set train.resume=X``, ``--output.overwrite``, ...), which change how
    often a run stopped and where an earlier run in its folder went, not what it computes.

    Example:
        >>> without_resume("gdzoo train -c r.yaml --resume --set a=1 --set train.resume=auto --train.resume x.pth")
        'gdzoo train -c r.yaml --set a=1'
        >>> without_resume("gdzoo train --overwrite --output.overwrite --set output.overwrite=true --name n")
        'gdzoo train --name n'
    """
    words, kept, i = shlex.split(command), [], 0
    flags = ("--resume", *(f"--{key}" for key in _RUN_CONTROL_KEYS))
    while i < len(words):
        word = words[i]
        value_follows = i + 1 < len(words) and not words[i + 1].startswith("-")
        if word == "--overwrite" or word.startswith(tuple(f"{flag}=" for flag in flags)):
            i += 1
        elif word in flags:
            i += 2 if value_follows else 1
        elif word.startswith("--set=") and word[6:].split("=", 1)[0] in _RUN_CONTROL_KEYS:
            i += 1
        elif word == "--set" and i + 1 < len(words) and words[i + 1].split("=", 1)[0] in _RUN_CONTROL_KEYS:
            i += 2
        else:
            kept.append(word)
            i += 1
    return shlex.join(kept)


def _finish(recipe: Recipe, bundle: DataBundle, engine: Engine, result: TrainResult, split: str, metric: str,
            model_info: dict[str, Any], command: str, elapsed: float) -> None:
    """Rank 0: final metrics file, plots, export and the summary table."""
    run_dir, model = result.run_dir, result.model
    atomic_write_text(run_dir / "final_metrics.json", json.dumps({"split": split, **result.metrics}, indent=2) + "\n")
    notes = []
    if recipe.output.plots:
        notes.append(("filters", _plot_filters(model, run_dir)))
        shown = bundle.test if bundle.test is not None else bundle.val
        if bundle.task == "segmentation" and shown is not None:
            notes.append(("examples",
                          str(_segmentation_figure(model, shown, bundle, engine,
                                                   run_dir / "segmentation_examples.png"))))
    if recipe.output.export:
        from ..hub.export import export_hub_folder

        card_metrics = {f"{split}/{k}": round(v, 2) for k, v in scalar_metrics(result.metrics).items()
                        if k not in ("samples", "pixels")}
        card_recipe = replace(recipe, train=replace(recipe.train, resume=None),  # how to reproduce it, not to resume it
                              output=replace(recipe.output, overwrite=False))
        folder = export_hub_folder(
            model, recipe.output.export_tag or (recipe.output.name or recipe.name).replace(".", "_"),
            recipe.output.export_root, org=recipe.output.org, metrics=card_metrics, command=without_resume(command),
            config_sha256=recipe_sha256(card_recipe), datasets=bundle.names, license=recipe.output.license,
            description=f"`{recipe.model.name}` trained with `gdzoo train` "
                        f"({_selection_note(bundle, result, metric)}). "
                        + (f"{recipe.output.card_note.strip()}\n\n" if recipe.output.card_note else "")
                        + f"Recipe:\n\n```yaml\n{recipe_to_yaml(card_recipe)}```",
        )
        result.export_dir = folder.path
        notes.append(("exported", str(folder.path)))
    rows: list[tuple[str, Any]] = [("model", recipe.model.name), ("weights", model_info["weights"]),
                                   ("params", f"{model_info['params']:,}"),
                                   ("device", str(engine.device)), ("epochs", recipe.train.epochs),
                                   ("best epoch", (result.best_epoch + 1) if result.best_epoch is not None else "-")]
    rows += [(f"{split} {k}", v) for k, v in scalar_metrics(result.metrics).items()]
    rows += [("wall time (s)", round(elapsed, 1)), ("run folder", str(run_dir)), *notes]
    table = format_summary(rows, f"{recipe.name}: final {split} metrics")
    atomic_write_text(run_dir / "summary.txt", table + "\n")
    print(table, flush=True)
