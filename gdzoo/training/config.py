"""Training recipes: a typed dataclass schema, YAML loading and ``key=value`` overrides with helpful errors.

A recipe is a :class:`Recipe` of sections (``model``, ``data``, ``augment``, ``optim``, ``sched``,
``train``, ``output``). Every key is validated against its type hint: an unknown key or a bad value
raises :class:`ConfigError` naming the valid keys or values. The built-in main job is
:data:`gdzoo.training.recipes.DEFAULT_RECIPE`, read from the package's ``fmnist_default.yaml``
(``configs/fmnist_default.yaml`` links to it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "Recipe",
    "SchedConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "merge_recipe_dicts",
    "parse_override",
    "read_recipe_file",
    "recipe_from_dict",
    "recipe_sha256",
    "recipe_to_yaml",
]


class ConfigError(ValueError):
    """A recipe key or value is invalid; the message lists what is valid."""


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names ``key`` twice (lines 1-based; YAML itself would silently keep the last value)."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first_line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming a key twice instead of keeping the last value."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' keys may be overridden, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, key_node.start_mark.line + 1, seen[key] + 1)
                    seen[key] = key_node.start_mark.line
                except TypeError:  # unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass


@dataclass
class ModelConfig:
    """Which timm model to build and from which weights."""

    name: str = "gd_fmnist"  # any timm model name, optionally with a pretrained tag ('gd_fmnist.fmnist')
    pretrained: bool | Literal["auto"] = "auto"  # auto: use weights if cached or in weights/, else scratch
    initial_checkpoint: str | None = None  # weights file (.safetensors / .pth) loaded after creation
    num_classes: int | None = None  # None: the dataset's number of classes
    in_chans: int | None = None  # None: the model's default
    drop_rate: float | None = None
    kwargs: dict = field(default_factory=dict)  # extra timm.create_model keyword arguments
    # auto: the model's task attribute, else a 4-D probe output
    task: Literal["auto", "classification", "segmentation"] = "auto"


@dataclass
class DataConfig:
    """Dataset, splits, loader and the timm data-config overrides."""

    dataset: Literal["fashion_mnist", "image_folder", "segmentation"] = "fashion_mnist"
    root: str | None = None  # data folder (Fashion-MNIST: the idx .gz files; default Debian's location)
    train_subset: int | float | None = None  # seeded subset of the training pool (samples or tiles); None: all
    val_size: int | float | None = None  # held out from train: count or fraction (images for segmentation);
    # None: 5000 (Fashion-MNIST), 0.1 (image_folder without val/), 0.15 (segmentation); 0: no validation
    test_size: int | float | None = None  # segmentation only: test images (None: index.csv or 0.2)
    test_subset: int | float | None = None  # seeded subset of the test split (samples or tiles) for quick runs
    evaluate_test: bool = True  # false: the test split is never scored (recipe search: the run ends on validation)
    split_seed: int = 0
    split_by: Literal["image", "group", "class"] = "image"  # segmentation: by image or slide/patient group;
    # classification: image (random) or class (stratified: every class validated where it can be)
    folds: int = 0  # segmentation: k-fold cross-validation by image (organ-stratified with index.csv); 0: off
    fold: int = 0  # segmentation: which fold is held out as the test split (0..folds-1)
    batch_size: int = 128  # per process
    eval_batch_size: int | None = None  # None: 2 x batch_size
    workers: int = 0
    img_size: int | None = None  # None: the model's pretrained_cfg input size
    mean: list | None = None  # None: pretrained_cfg (timm's resolve_model_data_config)
    std: list | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    tile_size: int = 128  # segmentation tiles
    tile_stride: int | None = None  # None: tile_size (non-overlapping grid)
    full_image_overlap: int | None = None  # segmentation: also score the test images whole (tiled, this overlap)
    mask_mode: Literal["binary", "labels"] = "binary"
    num_classes: int = 2  # segmentation classes (binary masks: 2)


@dataclass
class AugmentConfig:
    """Training augmentation (timm's ``create_transform`` for classification, paired ops for segmentation)."""

    enabled: bool = False
    scale: list = field(default_factory=lambda: [0.08, 1.0])
    ratio: list = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.0
    auto_augment: str | None = None
    re_prob: float = 0.0
    rot90: bool = True  # segmentation: random 90-degree rotations
    tile_jitter: bool = True  # segmentation: random tile positions instead of the fixed grid
    stain_jitter: float = 0.0  # segmentation: H&E stain jitter in HED space (per-stain scale 1±s, shift ±s)
    scale_jitter: list | None = None  # segmentation: [min, max] zoom factor of a training tile (log-uniform)


@dataclass
class OptimConfig:
    """Optimizer: Adam, AdamW or SGD."""

    opt: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    no_decay_bias_norm: bool = True  # timm convention: no weight decay on biases and norm weights


@dataclass
class SchedConfig:
    """Learning-rate schedule, stepped every optimizer step; lengths in epochs (fractions allowed)."""

    name: Literal["cosine", "step", "constant"] = "cosine"
    alpha: float = 0.0  # cosine floor, as a fraction of lr (Keras CosineDecay's alpha)
    decay_epochs: float | None = None  # cosine: decay length (None: rest of training); step: period
    gamma: float = 0.1  # step: multiplier per period
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0  # warmup starts at warmup_start * lr


@dataclass
class TrainConfig:
    """The loop: epochs, device, precision, regularisation, freezing, checkpoints and resume."""

    epochs: int = 10
    seed: int = 42
    device: str = "auto"  # auto: cuda if available, else cpu
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (exact resume)
    clip_grad: float | None = None  # max gradient norm
    label_smoothing: float = 0.0
    loss: Literal["cross_entropy", "dice_ce"] = "cross_entropy"  # dice_ce (segmentation): cross-entropy + soft Dice
    ema: bool = False
    ema_decay: float = 0.999
    freeze: Literal["none", "head_only", "all_but_stem", "stem_and_head", "regex"] = "none"
    freeze_patterns: list = field(default_factory=list)  # regex policy: parameters matching any are frozen
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
    resume: str | None = None  # checkpoint path, or 'auto' (the run folder's last.pth)
    eval_every: int = 1  # epochs between validations


@dataclass
class OutputConfig:
    """Where the run writes, what it plots and how the best checkpoint is exported."""

    dir: str = "runs"
    name: str | None = None  # run folder name (None: the recipe name)
    overwrite: bool = False  # start afresh over a run in the folder, moving its files to <name>.old-<time>/ first
    best_metric: str = "auto"  # auto: top1 (classification) / dice (segmentation)
    plots: bool = True  # curves.png, filters.png, segmentation examples
    progress: bool = True  # tqdm bars on a terminal; progress lines in a log (false: neither)
    log_every_s: float | None = 30.0  # stdout not a terminal: a progress line every N s (0: every step; null: none)
    export: bool = False  # export the best checkpoint to <export_root>/<model>.<export_tag>/
    export_tag: str | None = None  # None: the run name
    export_root: str = "weights"
    org: str | None = None
    license: str | None = None
    card_note: str | None = None  # extra model-card text, e.g. the training data's source, licence and citation


@dataclass
class Recipe:
    """One experiment."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name for f in dataclasses.fields(Recipe) if f.name != "name"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` (ints accepted as floats); raises ConfigError with the expected type."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(hint) and type(value) is type(next(a for a in typing.get_args(hint) if a == value)):
            return value
    elif hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint in (list, dict) or origin in (list, dict):
        if isinstance(value, origin or hint):
            return value
    else:
        raise TypeError(f"unsupported type hint {hint!r} for {key}")
    raise ConfigError(f"bad value for {key}: {value!r}; expected {_describe(hint)}")


def _section_from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')} must be a mapping of keys, got {data!r}")
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + str(k) for k in unknown)}; "
            f"valid keys: {', '.join(prefix + k for k in hints)}"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def _validate(recipe: Recipe) -> None:
    """Range checks the type hints cannot express."""
    num_classes = recipe.model.num_classes
    checks = [
        (num_classes is None or num_classes >= 1,
         "model.num_classes must be a positive int (the classifier's classes) or null (the dataset's number of "
         f"classes), got {num_classes}; timm's num_classes=0 (no classifier head, pooled features) cannot be trained "
         "as a classifier"),
        (recipe.model.in_chans is None or recipe.model.in_chans >= 1,
         "model.in_chans must be null (the model's default) or an integer >= 1 (1 grey, 3 RGB), got "
         f"{recipe.model.in_chans}"),
        (recipe.optim.lr > 0, "optim.lr must be > 0"),
        (recipe.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (recipe.train.epochs >= 1, "train.epochs must be >= 1"),
        (recipe.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (recipe.data.eval_batch_size is None or recipe.data.eval_batch_size >= 1, "data.eval_batch_size must be >= 1"),
        (recipe.data.workers >= 0, "data.workers must be >= 0"),
        (recipe.data.tile_size >= 8, "data.tile_size must be >= 8"),
        (recipe.data.tile_stride is None or recipe.data.tile_stride >= 1, "data.tile_stride must be >= 1"),
        (recipe.data.num_classes >= 1, "data.num_classes must be >= 1"),
        (0.0 <= recipe.sched.alpha <= 1.0, "sched.alpha must be in [0, 1]"),
        (recipe.sched.warmup_epochs >= 0, "sched.warmup_epochs must be >= 0"),
        (recipe.sched.decay_epochs is None or recipe.sched.decay_epochs > 0, "sched.decay_epochs must be > 0"),
        (0.0 <= recipe.train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (recipe.data.folds == 0 or recipe.data.folds >= 2,
         f"data.folds must be 0 (off) or >= 2, got {recipe.data.folds}"),
        (recipe.data.folds == 0 or 0 <= recipe.data.fold < recipe.data.folds,
         f"data.fold must be in 0..{recipe.data.folds - 1} (data.folds={recipe.data.folds}), got {recipe.data.fold}"),
        (0.0 <= recipe.augment.stain_jitter < 1.0,
         f"augment.stain_jitter must be in [0, 1), got {recipe.augment.stain_jitter}"),
        (recipe.augment.scale_jitter is None or _is_range(recipe.augment.scale_jitter),
         f"augment.scale_jitter must be null or [min, max] with 0 < min <= max, got {recipe.augment.scale_jitter}"),
        (recipe.train.clip_grad is None or recipe.train.clip_grad > 0, "train.clip_grad must be > 0 or null"),
        (0.0 < recipe.train.ema_decay < 1.0, "train.ema_decay must be in (0, 1)"),
        (recipe.train.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0"),
        (recipe.train.eval_every >= 1, "train.eval_every must be >= 1"),
        (recipe.output.log_every_s is None or recipe.output.log_every_s >= 0,
         f"output.log_every_s must be >= 0 (seconds between progress lines in a log) or null (none), "
         f"got {recipe.output.log_every_s}"),
        (recipe.data.evaluate_test or recipe.data.val_size != 0,
         "data.evaluate_test=false needs a validation split to end on (data.val_size is 0)"),
        (recipe.data.split_by != "class" or recipe.data.dataset != "segmentation",
         "data.split_by=class stratifies a classification split; segmentation splits by image or group"),
        (recipe.train.freeze != "regex" or bool(recipe.train.freeze_patterns),
         "train.freeze: regex needs train.freeze_patterns"),
        (len(recipe.optim.betas) == 2, "optim.betas must be a list of two floats"),
        (recipe.train.device == "auto" or recipe.train.device.split(":")[0] in ("cpu", "cuda", "mps"),
         f"train.device must be auto, cpu, cuda, cuda:N or mps, got {recipe.train.device!r}"),
    ]
    errors = [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError("; ".join(errors))


def _is_range(value: Any) -> bool:
    """``[min, max]`` of positive numbers with min <= max."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0 < value[0] <= value[1])


def recipe_from_dict(data: dict[str, Any] | None) -> Recipe:
    """A validated :class:`Recipe` from a (YAML) mapping; missing keys take their defaults."""
    data = dict(data or {})
    valid = ["name", *sorted(_SECTIONS)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown top-level key{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))}; "
                          f"valid keys: {', '.join(valid)}")
    kwargs: dict[str, Any] = {}
    if "name" in data:
        kwargs["name"] = _coerce(data["name"], str, "name")
    hints = _hints(Recipe)
    for section in _SECTIONS & set(data):
        kwargs[section] = _section_from_dict(hints[section], data[section] or {}, f"{section}.")
    recipe = Recipe(**kwargs)
    _validate(recipe)
    return recipe


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Recipe:
    """Recipe from a YAML file (None: the built-in default) with ``key=value`` overrides applied.

    A file may start from another with a top-level ``base: <file>`` (relative to the file): its own sections are
    merged over the base's key by key, so a family of recipes keeps its shared part in one file.
    """
    data = _read_recipe_file(Path(path), ()) if path is not None else {}
    return recipe_from_dict(apply_overrides(data, overrides or []))


def read_recipe_file(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe file's mapping with its ``base:`` chain merged in, not yet validated (:func:`load_recipe` does both)."""
    return _read_recipe_file(Path(path), ())


def merge_recipe_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recipe mapping ``update`` over ``base``, section by section and key by key (as a ``base:`` file is merged)."""
    return _merge(base, update)


def _read_recipe_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The YAML mapping of a recipe file with its ``base:`` chain merged in (``chain``: the files that include it)."""
    if not path.is_file():
        via = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"recipe file {path}{via} does not exist (recipes live in configs/, e.g. "
                          "configs/fmnist_default.yaml)")
    if path.resolve() in chain:
        raise ConfigError(f"recipe {path} is its own base: {' -> '.join(map(str, (*chain, path.resolve())))}")
    try:
        data = _load_yaml(path.read_text()) or {}
    except DuplicateKeyError as e:
        raise ConfigError(f"recipe {path}, line {e.line}: duplicate key {e.key!r} (first given at line "
                          f"{e.first_line}); YAML would silently keep the last value, so keep one of them") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"recipe {path}: base must be the path of another recipe file, got {base!r}")
    return _merge(_read_recipe_file(path.parent / base, (*chain, path.resolve())), data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=0.01'`` -> ``(['optim', 'lr'], 0.01)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. optim.lr=0.01)")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except DuplicateKeyError as e:
        raise ConfigError(f"override {text!r}: duplicate key {e.key!r} in the value") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.replace("-", "_").split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``section.key=value`` override set (validated later)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    hints = _hints(Recipe)
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["name"]:
            data["name"] = value
            continue
        if len(keys) != 2 or keys[0] not in _SECTIONS:
            raise ConfigError(
                f"override {text!r}: keys are section.key with section one of {', '.join(sorted(_SECTIONS))} (or "
                "'name')"
            )
        section, key = keys
        valid = _hints(hints[section])
        if key not in valid:
            raise ConfigError(f"unknown key {section}.{key}; valid keys: {', '.join(f'{section}.{k}' for k in valid)}")
        target = data.get(section)
        data[section] = {**(target if isinstance(target, dict) else {}), key: value}
    return data


def recipe_to_yaml(recipe: Recipe) -> str:
    """The full recipe (every key) as YAML, sections in schema order."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def recipe_sha256(recipe: Recipe) -> str:
    """SHA-256 of the full recipe YAML: the ``config_sha256`` of exported weights."""
    return hashlib.sha256(recipe_to_yaml(recipe).encode()).hexdigest()
