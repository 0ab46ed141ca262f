"""Running a model on image files: class predictions to a CSV, or tiled segmentation masks and overlays.

Every input is handled on its own: it is either written or named with the reason it failed, and the run goes on.
Outputs are written atomically, so running the same prediction again resumes: inputs whose outputs are complete
(and made with the same settings) are skipped. Torch is imported only when a prediction runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .jobs import SETTINGS_KEY, Job, PredictReport, collect_jobs, mask_paths
from .journal import (
    CSV_NAME,
    csv_line,
    earlier_table,
    hold_output_folder,
    is_classification_settings,
    journal_path,
    locked,
    mask_fingerprint,
    masks_done,
    previous_rows,
    read_summary,
    write_summary,
)

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["Predictor", "check_options", "default_memory_limit"]


def default_memory_limit() -> int | None:
    """80% of this machine's physical memory, in bytes (None when the OS does not say)."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_options(batch_size: int, topk: int, tile: int | None, memory_limit: float | None) -> int | None:
    """Refuse non-positive options (ValueError naming them); return the memory limit in bytes (GiB given, or the
    default: :func:`default_memory_limit`)."""
    if batch_size < 1 or topk < 1 or (tile is not None and tile < 1):
        raise ValueError(f"--batch-size, --topk and --tile must be positive, got {batch_size}, {topk}, {tile}")
    if memory_limit is not None and memory_limit <= 0:
        raise ValueError(f"--memory-limit must be a positive number of GiB, got {memory_limit}")
    return int(memory_limit * 2**30) if memory_limit is not None else default_memory_limit()


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom_reason(error: BaseException, fix: str) -> str:
    return f"ran out of memory while predicting ({str(error).splitlines()[0] if str(error) else 'MemoryError'}); {fix}"


class Predictor:
    """A model, its output folder and its settings: :meth:`predict` turns image files into outputs there.

    Classification models write ``predictions.csv`` (top-k classes and probabilities, or the reason a file could
    not be read); segmentation models write ``<name>_mask.png`` and ``<name>_overlay.png`` per input, predicted
    tile by tile (:mod:`gdzoo.inference.tiling`), whatever the image size. Folders are searched recursively and
    mirrored. The predictor owns the folder's journal: rows are fsynced as they are made, so an interrupted run
    resumes where it stopped, and outputs made with other settings are redone (masks) or refused
    (:class:`~gdzoo.inference.journal.OutputConflict`: a CSV cannot mix two settings unless ``overwrite``).
    Images whose decoding would need more than ``memory_limit`` GiB are refused, one by one.

    Example (Fashion-MNIST's published weights on three 28 x 28 images; a second run finds them done):
        >>> import shutil, tempfile, numpy as np
        >>> from PIL import Image
        >>> from gdzoo.inference import Predictor
        >>> folder = Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(folder / f"{i}.png")
        >>> predictor = Predictor.from_weights("gd_fmnist", folder / "out", pretrained=True, device="cpu")
        >>> report = predictor.predict([folder / "0.png", folder / "1.png", folder / "2.png"])
        >>> len(report.written), len(report.skipped), report.failed
        (3, 0, [])
        >>> (folder / "out" / "predictions.csv").read_text().splitlines()[0]
        'file,prediction,probability,top5,error'
        >>> report = predictor.predict([folder])
        >>> len(report.written), len(report.skipped)
        (0, 3)
        >>> shutil.rmtree(folder)
    """

    def __init__(self, model: nn.Module, output: str | os.PathLike = "predictions", *, model_name: str = "",
                 weights: str = "random init", task: str = "auto", classes: Sequence[str] | None = None,
                 tile: int | None = None, overlap: int = 32, batch_size: int = 16, topk: int = 5,
                 device: str | torch.device = "cpu", overwrite: bool = False,
                 memory_limit: float | None = None) -> None:
        """``weights`` and ``model_name`` describe the model in the settings that outputs are matched by (a changed
        setting means the outputs are redone); ``task`` is 'auto', 'classification' or 'segmentation'; ``classes``
        names the classes (default: the model's ``label_names``, else indices); ``tile`` defaults to the model's
        input size; ``memory_limit`` is in GiB (default: 80% of this machine's memory)."""
        from ..data.transforms import resolve_data_config_for
        from ..training.distributed import resolve_device
        from ..training.modeling import is_segmentation

        self.max_bytes = check_options(batch_size, topk, tile, memory_limit)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.output = Path(output)
        self.batch_size, self.overlap, self.overwrite = batch_size, overlap, overwrite
        self.settings: dict[str, Any] = {"model": model_name, "weights": weights}
        self.segmentation = is_segmentation(model, task)
        self.data_config = resolve_data_config_for(model)
        self.tile = tile or self.data_config["input_size"][-1]
        if self.segmentation and not 0 <= overlap < self.tile:
            raise ValueError(f"--overlap must be in [0, tile={self.tile}), got {overlap}")
        if classes is None:
            from .loading import class_names_for

            classes = class_names_for(model, None, getattr(model, "num_classes", 0) or 0)
        self.classes = list(classes)
        self.topk = topk
        self._folder_lock: Any = None

    @classmethod
    def from_weights(cls, model: str | None = None, output: str | os.PathLike = "predictions", *,
                     checkpoint: str | os.PathLike | None = None, pretrained: bool = False, random_init: bool = False,
                     num_classes: int | None = None, device: str = "auto", **options: Any) -> Predictor:
        """A predictor for a trained model: ``checkpoint`` (a gdzoo run folder, its weights file or a Hub folder),
        the published weights (``pretrained``; also the default when the model has them), or ``random_init``.

        Loads the model (:func:`~gdzoo.inference.loading.load_trained_model`), creates and holds ``output`` for
        the predictor's lifetime; ``options`` are those of :class:`Predictor`. Raises ValueError / OSError
        naming the problem (a missing checkpoint, a model without published weights, a bad option).
        """
        from ..training.distributed import resolve_device
        from .loading import choose_weights, class_names_for, load_trained_model

        published = choose_weights("predict", model, checkpoint, pretrained, random_init)
        net, recipe = load_trained_model(model, checkpoint, published, num_classes)
        resolved = resolve_device(device)
        out_dir = Path(output)
        out_dir.mkdir(parents=True, exist_ok=True)
        held = hold_output_folder(out_dir)
        # the settings name the weights loaded (published by default too), so a --random-init re-run into the same
        # folder redoes the outputs instead of keeping the published weights' ones
        weights = str(Path(checkpoint).resolve()) if checkpoint else "pretrained" if published else "random init"
        predictor = cls(net, out_dir, model_name=model or (recipe.model.name if recipe else ""), weights=weights,
                        task=recipe.model.task if recipe else "auto", device=resolved, **options)
        predictor._folder_lock = held
        if not predictor.segmentation:
            predictor.classes = class_names_for(net, checkpoint, getattr(net, "num_classes", 0) or 0)
        return predictor

    @property
    def result_path(self) -> Path:
        """Where the outputs are: the output folder (segmentation) or its ``predictions.csv``."""
        return self.output if self.segmentation else self.output / CSV_NAME

    def predict(self, inputs: Iterable[str | os.PathLike], report: PredictReport | None = None) -> PredictReport:
        """Predict the image files of ``inputs`` (files, or folders searched recursively); what happened to each."""
        report = report if report is not None else PredictReport()
        return self.run(collect_jobs(inputs, self.output, report), report)

    def run(self, jobs: list[Job], report: PredictReport) -> PredictReport:
        """Predict ``jobs`` (from :func:`~gdzoo.inference.jobs.collect_jobs`), recording their fates in ``report``."""
        if self._folder_lock is None:
            self.output.mkdir(parents=True, exist_ok=True)
            self._folder_lock = hold_output_folder(self.output)
        if self.segmentation:
            self._segment(jobs, report)
        else:
            self._classify(jobs, report)
        return report

    # ------------------------------------------------------------------------------------------ segmentation

    def _segment(self, jobs: list[Job], report: PredictReport) -> None:
        from tqdm.auto import tqdm

        from ..data.images import ImageReadError

        settings = {**self.settings, "tile": self.tile, "overlap": self.overlap}
        for job in tqdm(jobs, desc="predict", unit="image", disable=None):
            mask, overlay = mask_paths(self.output, job)
            try:
                fingerprint = mask_fingerprint(job, settings)
            except OSError as e:
                report.fail(job.path, f"cannot be read ({e.strerror or e})")
                continue
            if not self.overwrite and masks_done(mask, overlay, fingerprint):
                report.skipped.append(job.path)
                continue
            try:
                self._segment_one(job, mask, overlay, fingerprint)
            except ImageReadError as e:
                report.fail(job.path, e.reason)
            except _out_of_memory_errors() as e:
                _free_device_memory()
                report.fail(job.path, _oom_reason(e, "try a smaller --batch-size or --tile"))
            except OSError as e:
                report.fail(job.path, f"cannot write its outputs to {mask.parent} ({e.strerror or e})")
            else:
                report.written.append(job.path)
        with locked(self.output):
            write_summary(self.output, settings, report,
                          keep=not is_classification_settings(read_summary(self.output).get("settings")))

    def _segment_one(self, job: Job, mask_path: Path, overlay_path: Path, fingerprint: str) -> None:
        """Predict one image tile by tile and stream its mask and overlay to disk (atomically, mask last)."""
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        from .._io import atomic_write
        from ..data.images import PngRowWriter, read_image
        from .tiling import ImageTiles, axis_origins, predict_tiled_rows

        chans, tile, overlap = self.data_config["input_size"][0], self.tile, self.overlap
        image = read_image(job.path, chans, self.max_bytes)
        tiles = ImageTiles(image.pixels, image.scale, self.data_config["mean"], self.data_config["std"], chans, tile)
        stride = tile - overlap
        tile_rows, tile_cols = (len(axis_origins(side, tile, stride)) for side in tiles.padded_size)
        count = tile_rows * tile_cols
        height, width = image.height, image.width

        def write_both(mask_tmp: str, overlay_tmp: str) -> None:
            with open(mask_tmp, "wb") as mf, open(overlay_tmp, "wb") as of, \
                    PngRowWriter(mf, width, height, 1, {SETTINGS_KEY: fingerprint}) as mask_png, \
                    PngRowWriter(of, width, height, 3, {SETTINGS_KEY: fingerprint}) as overlay_png, \
                    tqdm(total=count, desc=job.path.name, unit="tile", disable=None, leave=False) as bar:
                for first, logits in predict_tiled_rows(self.model, tiles, tile, overlap, self.batch_size, self.device,
                                                        bar.update):
                    labels = (logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)
                    levels = max(logits.shape[0] - 1, 1)
                    mask_png.write_rows((labels * (255 // levels)).to(torch.uint8).numpy())
                    rgb = image.as_uint8(slice(first, first + labels.shape[0]), channels=3).astype(np.float32)
                    alpha = 0.45 * (labels.numpy() > 0)[..., None]
                    red = np.zeros_like(rgb)
                    red[..., 0] = 255
                    overlay_png.write_rows((rgb * (1 - alpha) + red * alpha).astype(np.uint8))

        atomic_write(mask_path, lambda mask_tmp: atomic_write(overlay_path,
                                                              lambda overlay_tmp: write_both(mask_tmp, overlay_tmp)))

    # ---------------------------------------------------------------------------------------- classification

    def _classify(self, jobs: list[Job], report: PredictReport) -> Path:
        import torch
        from tqdm.auto import tqdm

        from .._io import atomic_write_text
        from ..data.images import ImageReadError, read_pil
        from ..data.transforms import build_transform

        transform, chans = build_transform(self.data_config, is_training=False), self.data_config["input_size"][0]
        classes = self.classes
        k = min(self.topk, len(classes))
        out_dir = self.output
        settings = {**self.settings, "topk": k}
        settings_line = json.dumps(settings, sort_keys=True)
        with locked(out_dir):
            earlier_table(out_dir, settings, self.overwrite)  # refuse before any work, not after
        done = {} if self.overwrite else previous_rows(out_dir, settings_line)
        journal = journal_path(out_dir)
        done_lines = "".join(csv_line(row) for row in done.values())
        atomic_write_text(journal, f"#{SETTINGS_KEY} {settings_line}\n" + done_lines)
        rows: dict[str, list[str]] = {}
        todo = []
        for job in jobs:
            if str(job.path) in done:
                rows[str(job.path)] = done[str(job.path)]
                report.skipped.append(job.path)
            else:
                todo.append(job)
        with torch.no_grad(), open(journal, "a", newline="") as log:
            for start in tqdm(range(0, len(todo), self.batch_size), desc="predict", disable=None):
                chunk, batch, batch_rows = todo[start : start + self.batch_size], [], []
                for job in chunk:
                    try:
                        batch.append((job, transform(read_pil(job.path, chans, self.max_bytes))))
                    except ImageReadError as e:
                        report.fail(job.path, e.reason)
                        batch_rows.append([str(job.path), "", "", "", e.reason])
                if batch:
                    try:
                        logits = self.model(torch.stack([x for _, x in batch]).to(self.device))
                        probs = logits.float().softmax(1).cpu()
                    except _out_of_memory_errors() as e:
                        _free_device_memory()
                        reason = _oom_reason(e, "try a smaller --batch-size")
                        for job, _ in batch:
                            report.fail(job.path, reason)
                            batch_rows.append([str(job.path), "", "", "", reason])
                    else:
                        top = probs.topk(k, dim=1)
                        for (job, _), p, i in zip(batch, top.values, top.indices):
                            ranked = "; ".join(f"{classes[j]}:{q:.4f}" for q, j in zip(p.tolist(), i.tolist()))
                            batch_rows.append([str(job.path), classes[i[0]], f"{p[0]:.4f}", ranked, ""])
                            report.written.append(job.path)
                for row in batch_rows:
                    rows[row[0]] = row
                log.write("".join(csv_line(row) for row in batch_rows))
                log.flush()
                os.fsync(log.fileno())
        out = out_dir / CSV_NAME
        # merge by input path into the table as it is now (another run may have written meanwhile)
        with locked(out_dir):
            earlier = earlier_table(out_dir, settings, self.overwrite, quiet=True)
            table = {**earlier, **{str(job.path): rows[str(job.path)] for job in jobs if str(job.path) in rows}}
            for path, row in done.items():  # rows of an interrupted run's other inputs (its journal is deleted below)
                table.setdefault(path, row)
            header = csv_line(["file", "prediction", "probability", f"top{k}", "error"])
            write_summary(out_dir, settings, report, keep=read_summary(out_dir).get("settings") == settings,
                          also_written=[p for p, row in table.items() if not row[4]])
            atomic_write_text(out, header + "".join(map(csv_line, table.values())))
            journal.unlink(missing_ok=True)
        return out
