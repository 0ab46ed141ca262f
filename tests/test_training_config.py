"""Recipe schema: YAML loading, overrides (``--set`` and dotted flags), and errors that list what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gdzoo.cli.main import main
from gdzoo.cli.overrides import split_dotted_flags
from gdzoo.training import DEFAULT_RECIPE, ConfigError, default_recipe, load_recipe, recipe_from_dict, recipe_to_yaml

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_recipe_loads() -> None:
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert {"fmnist_default.yaml", "tiny_fmnist.yaml"} <= {p.name for p in configs}
    for path in configs:
        load_recipe(path)


def test_default_yaml_is_the_builtin_main_job() -> None:
    """One copy of the main job: configs/fmnist_default.yaml links to the package file that DEFAULT_RECIPE reads."""
    link, package_file = REPO / "configs" / "fmnist_default.yaml", REPO / "gdzoo" / "training" / "fmnist_default.yaml"
    assert link.is_symlink() and link.resolve() == package_file.resolve()
    assert load_recipe(package_file) == recipe_from_dict(DEFAULT_RECIPE) == default_recipe(finetune=False)
    assert default_recipe(False).model.name == "gd_fmnist" and default_recipe(False).data.dataset == "fashion_mnist"
    finetune = default_recipe(finetune=True)
    assert finetune.optim.lr < default_recipe(False).optim.lr and finetune.model.pretrained == "auto"


def test_yaml_round_trip() -> None:
    recipe = default_recipe()
    assert recipe_from_dict(yaml.safe_load(recipe_to_yaml(recipe))) == recipe


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "optim.lrr" in str(err.value) and "optim.lr" in str(err.value) and "optim.weight_decay" in str(err.value)
    with pytest.raises(ConfigError, match="valid keys: name, augment, data"):
        recipe_from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match="unknown key train.epoch;.*train.epochs"):
        load_recipe(None, ["train.epoch=3"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.amp=fp32", "one of 'none', 'bf16', 'fp16'"),
        ("optim.opt=lion", "one of 'adam', 'adamw', 'sgd'"),
        ("train.epochs=two", "expected int"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("sched.alpha=2", r"sched.alpha must be in \[0, 1\]"),
        ("train.freeze=regex", "needs train.freeze_patterns"),
        ("train.channels_last=1", "expected bool"),
        ("lr=0.1", "keys are section.key"),
    ],
)
def test_bad_values_are_explained(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_recipe(None, [override])


def test_overrides_parse_yaml_values() -> None:
    recipe = load_recipe(REPO / "configs" / "tiny_fmnist.yaml",
                         ["optim.lr=0.01", "train.clip_grad=1", "augment.scale=[0.5, 1.0]",
                                                                 "model.pretrained=auto", "train.resume=null"])
    assert recipe.optim.lr == 0.01 and recipe.train.clip_grad == 1.0 and recipe.augment.scale == [0.5, 1.0]
    assert recipe.model.pretrained == "auto" and recipe.name == "tiny_fmnist"


def test_dotted_flags_split() -> None:
    overrides, rest = split_dotted_flags(["--optim.lr", "0.01", "--train.amp=bf16", "--train.ema", "--bogus"])
    assert overrides == ["optim.lr=0.01", "train.amp=bf16", "train.ema=true"] and rest == ["--bogus"]


def test_cli_overrides_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == default_recipe().to_dict()  # no arguments: the main job
    assert main(["train", "-c", str(REPO / "configs" / "tiny_fmnist.yaml"), "--optim.lr", "0.02", "--set",
                 "train.epochs=5", "--amp", "bf16", "--resume", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.02 and printed["train"]["epochs"] == 5
    assert printed["train"]["amp"] == "bf16" and printed["train"]["resume"] == "auto"
    assert main(["train", "--optim.lrr", "1", "--print-config"]) == 2
    assert "valid keys: optim.opt, optim.lr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--no-such-flag"])
    assert "--section.key=value" in capsys.readouterr().err


def test_missing_recipe_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("configs/nope.yaml")
    assert DEFAULT_RECIPE["model"]["name"] == "gd_fmnist"


def test_base_recipe_is_merged_key_by_key(tmp_path: Path) -> None:
    """``base:`` (relative to the file, chained) merges sections key by key; lists and scalars replace."""
    (tmp_path / "family").mkdir()
    (tmp_path / "root.yaml").write_text("optim:\n  lr: 0.1\n  betas: [0.8, 0.9]\ntrain:\n  epochs: 7\n  "
                                        "label_smoothing: 0.1\n")
    (tmp_path / "family"
     / "base.yaml").write_text("base: ../root.yaml\noptim:\n  opt: adamw\n  weight_decay: 0.05\ntrain:\n  epochs: 9\n")
    (tmp_path / "family"
     / "child.yaml").write_text("base: base.yaml\nmodel:\n  name: ff_fmnist\noptim:\n  betas: [0.5, 0.6]\n")
    recipe = load_recipe(tmp_path / "family" / "child.yaml", ["train.epochs=3"])
    written = {"model": {"name": "ff_fmnist"},
               "optim": {"lr": 0.1, "betas": [0.5, 0.6], "opt": "adamw", "weight_decay": 0.05},
               "train": {"epochs": 3, "label_smoothing": 0.1}}
    assert recipe == recipe_from_dict(written)
    assert "base" not in yaml.safe_load(recipe_to_yaml(recipe))  # a run's config.yaml is self-contained


@pytest.mark.parametrize("files, expected", [
    ({"a.yaml": "base: missing.yaml\n"}, "missing.yaml (the base of"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "is its own base"),
    ({"a.yaml": "base: [x]\n"}, "base must be the path of another recipe file, got ['x']"),
])
def test_bad_base_is_named(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        load_recipe(tmp_path / "a.yaml")


@pytest.mark.parametrize("text, key, line, first", [
    ("model:\n  name: gd_fmnist\noptim:\n  lr: 0.1\nmodel:\n  pretrained: false\n", "model", 5, 1),  # a section twice
    ("optim:\n  lr: 0.1\n  opt: sgd\n  lr: 0.01\n", "lr", 4, 2),  # a key twice in a section
    ("optim: {lr: 0.1, lr: 0.01}\n", "lr", 1, 1),  # flow style, one line
])
def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path: Path, text: str, key: str, line: int, first: int,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """YAML keeps the last of two equal keys without a word; a recipe refuses them, naming the key,
    the file and the line."""
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert f"recipe {path}, line {line}: duplicate key {key!r} (first given at line {first})" in str(err.value)
    assert main(["train", "-c", str(path), "--print-config"]) == 2
    assert f"duplicate key {key!r}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="duplicate key 'a' in the value"):
        load_recipe(None, ["model.kwargs={a: 1, a: 2}"])


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("optim: &o\n  lr: 0.1\n  opt: sgd\nsched:\n  name: step\n  gamma: 0.5\n"
                    "train: {epochs: 2}\ndata:\n  batch_size: 8\n")
    assert load_recipe(path).optim.lr == 0.1
    from gdzoo.training.config import _load_yaml
    assert _load_yaml("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n") == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}


@pytest.mark.parametrize("value", [0, -1])
def test_num_classes_zero_is_refused(value: int, capsys: pytest.CaptureFixture[str]) -> None:
    """``model.num_classes=0`` used to fall back silently to the dataset's classes;
    timm's 0 (no head) cannot be trained."""
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [f"model.num_classes={value}"])
    message = str(err.value)
    assert "model.num_classes must be a positive int" in message and f"got {value}" in message
    assert "or null (the dataset's number of classes)" in message and "num_classes=0 (no classifier head" in message
    assert main(["train", "--set", f"model.num_classes={value}", "--print-config"]) == 2
    assert "model.num_classes must be a positive int" in capsys.readouterr().err
    assert main(["train", "--num-classes", str(value), "--print-config"]) == 2
    assert "model.num_classes must be a positive int" in capsys.readouterr().err
    assert load_recipe(None, ["model.num_classes=3"]).model.num_classes == 3
    assert load_recipe(None, ["model.num_classes=null"]).model.num_classes is None
