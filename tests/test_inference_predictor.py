"""The Python API of ``gdzoo predict``: :class:`gdzoo.inference.Predictor` on three Fashion-MNIST test images with
gd_fmnist's published weights; classes checked against the model run by hand, then an interrupted run resumed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import gdzoo.data.images
from gdzoo.data.fashion_mnist import FMNIST_LABELS, find_fashion_mnist, load_fashion_mnist
from gdzoo.data.transforms import build_transform, resolve_data_config_for
from gdzoo.inference import Predictor


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        root = find_fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    images, _ = load_fashion_mnist("test", root)
    folder = tmp_path_factory.mktemp("fmnist") / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"img{i}.png")
    return folder


def by_hand(files: list[Path]) -> list[tuple[str, str]]:
    """(class name, probability to 4 places) of each file: the published model on the plain PIL path."""
    model = timm.create_model("gd_fmnist", pretrained=True).eval()
    transform = build_transform(resolve_data_config_for(model), is_training=False)
    with torch.no_grad():
        probs = model(torch.stack([transform(Image.open(p).convert("L")) for p in files])).softmax(1)
    return [(FMNIST_LABELS[int(p.argmax())], f"{float(p.max()):.4f}") for p in probs]


def rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return {Path(r["file"]).name: r for r in csv.DictReader(f)}


def test_predictor_classifies_a_folder_and_a_second_run_skips_it(folder: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_weights("gd_fmnist", tmp_path / "out", pretrained=True, device="cpu", batch_size=2)
    report = predictor.predict([folder])
    assert (len(report.written), report.skipped, report.failed) == (3, [], [])
    files = sorted(folder.glob("*.png"))
    got = rows(tmp_path / "out")
    assert [(got[f.name]["prediction"], got[f.name]["probability"]) for f in files] == by_hand(files)
    assert all(r["error"] == "" for r in got.values())

    again = predictor.predict([folder])  # resume: every output is complete and made with the same settings
    assert (again.written, sorted(again.skipped), again.failed) == ([], files, [])
    assert rows(tmp_path / "out") == got


def test_an_interrupted_predictor_resumes_from_its_journal(folder: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    read_pil, reads = gdzoo.data.images.read_pil, []

    def interrupted(*a, **k):  # type: ignore[no-untyped-def]
        reads.append(1)
        if len(reads) == 3:  # Ctrl-C while reading the last image: two rows are in the journal
            raise KeyboardInterrupt
        return read_pil(*a, **k)

    predictor = Predictor.from_weights("gd_fmnist", tmp_path / "out", pretrained=True, device="cpu", batch_size=1)
    monkeypatch.setattr(gdzoo.data.images, "read_pil", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predictor.predict([folder])
    monkeypatch.undo()
    assert not (tmp_path / "out" / "predictions.csv").exists()
    assert len((tmp_path / "out" / ".predictions.csv.partial").read_text().splitlines()) == 1 + 2  # settings + rows

    report = predictor.predict([folder])
    assert (len(report.written), len(report.skipped), report.failed) == (1, 2, [])
    assert not (tmp_path / "out" / ".predictions.csv.partial").exists()
    fresh = Predictor.from_weights("gd_fmnist", tmp_path / "fresh", pretrained=True, device="cpu").predict([folder])
    assert len(fresh.written) == 3
    assert (tmp_path / "out" / "predictions.csv").read_text() == (tmp_path / "fresh" / "predictions.csv").read_text()


def test_default_published_weights_are_recorded_so_random_init_is_not_mixed_in(folder: Path, tmp_path: Path) -> None:
    """Without --pretrained the published weights load (the default) and are recorded as such: a later
    --random-init run into the same folder is refused (it used to skip every file as done), and redoes them all
    with --overwrite."""
    from gdzoo.inference.journal import OutputConflict

    files = sorted(folder.glob("*.png"))
    published = Predictor.from_weights("gd_fmnist", tmp_path / "out", device="cpu").predict([folder])
    assert len(published.written) == 3
    got = rows(tmp_path / "out")
    assert [(got[f.name]["prediction"], got[f.name]["probability"]) for f in files] == by_hand(files)
    torch.manual_seed(0)
    with pytest.raises(OutputConflict, match="random init"):
        Predictor.from_weights("gd_fmnist", tmp_path / "out", random_init=True, device="cpu").predict([folder])
    assert rows(tmp_path / "out") == got
    untrained = Predictor.from_weights("gd_fmnist", tmp_path / "out", random_init=True, device="cpu", overwrite=True)
    again = untrained.predict([folder])
    assert (len(again.written), again.skipped) == (3, [])
    assert [rows(tmp_path / "out")[f.name]["probability"] for f in files] != [got[f.name]["probability"] for f in files]


def test_published_tag_follows_the_weights_resolver() -> None:
    """A tag is published when its copy ships (the resolver's 'shipped'), also one that loads another tag's file."""
    from gdzoo.inference.loading import published_tag
    from gdzoo.models.shipped import load_manifest

    assert published_tag("gd_fmnist") == "gd_fmnist.fmnist" and "gd_fmnist.fmnist" in load_manifest()
    assert published_tag("gd_fmnist.fmnist_table1") == "gd_fmnist.fmnist_table1"
    assert published_tag("gd_fmnist_sc") == "gd_fmnist_sc.fmnist_channels" in load_manifest()  # its own file
    shared = "gd_fmnist_sc.fmnist"  # loads gd_fmnist.fmnist_table1's shipped file
    assert published_tag(shared) == shared and shared not in load_manifest()
    assert published_tag("gd_vgg16") is None  # derived or from the Hub: nothing ships
    assert published_tag("not_a_model") is None
