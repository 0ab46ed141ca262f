#!/usr/bin/env python
"""Scale generalisation on rescaled Fashion-MNIST: plain models vs scale channels (``gdzoo.ScaleChannels``).

Test protocol (arXiv 2409.11140's rescaled Fashion-MNIST, as far as docs/scale.md could check it): the test
images resized about their centre by one factor ``s`` per test set, ``s = 2^(k/4)`` from 1/2 to 2, on a
72×72 zero canvas (``gdzoo.data.rescaled``, bicubic, antialiased); training at scale 1 only.

Stages (``--stage``):

- ``eval`` (default): the published weights, NO retraining. For every test scale, ``gd_fmnist`` and
  ``ff_fmnist`` plain (on the whole canvas, and on its centred 28×28 training frame), and ``gd_fmnist``
  steered to every protocol scale (each channel on its rescaled training frame, ``window=28``; the channels
  under 1 also with ``below_one='resize'``), and both models on the frame resized back to 28×28 (an oracle);
  every scale set × pooling is then scored from those channel logits (pooling subsets of channels is exactly what
  ``ScaleChannels(scales=subset, pool=...)`` computes: tests/test_scale_channels.py). One JSON cell per
  (weights, test scale) in ``results/scale/eval_<n>.json``, written as it finishes: an interrupted run resumes.
- ``train`` (prepared, for a later session): ``gd_fmnist`` trained inside ``ScaleChannels`` on 28×28 training
  images (scale 1 only) with scale-channel dropout; a checkpoint per epoch in ``runs/scale/<name>/`` (resumes),
  then ``model.safetensors`` with the plain model's keys. ``--max-steps`` stops early (a smoke test / timing).
- ``select`` (prepared): scores the candidate scale sets × poolings of a trained model on the held-out
  validation images (5000 training images, split seed 0), rescaled to every protocol scale, and writes the
  choice (best mean accuracy over the scales among those within 0.5 points of the best at scale 1).
- ``cost``: seconds per 200 images of each channel alone (``results/scale/cost.json``).
- ``doc``: docs/scale.md from the stored cells.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/scale_generalisation.py --n-test 2000        # eval, then the doc
    python benchmarks/scale_generalisation.py --stage doc --n-test 2000
    python benchmarks/scale_generalisation.py --stage train --epochs 30 --name sc_drop                # later session
    python benchmarks/scale_generalisation.py --stage select --name sc_drop
    python benchmarks/scale_generalisation.py --weights runs/scale/sc_drop/model.safetensors --n-test 10000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from functools import partial
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import gdzoo
from _cells import fill_cells, tensors_sha256
from gdzoo._io import atomic_write, atomic_write_text
from gdzoo.data.fashion_mnist import load_fashion_mnist
from gdzoo.data.rescaled import PROTOCOL_SCALES, rescale_on_canvas
from gdzoo.data.splits import split_indices
from gdzoo.layers.scale_channels import centre_crop, pool_channels
from gdzoo.models.gd_fmnist_sc import SC_FILL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "scale"
RUNS = ROOT / "runs" / "scale"
DOC = ROOT / "docs" / "scale.md"
PLOT = ROOT / "docs" / "scale.png"

CANVAS, INTERPOLATION, ANTIALIAS, FRAME = 72, "bicubic", True, 28
BATCH = 250
ROOT2 = 2**0.5
# scale sets scored from the channel logits: name -> channel scales (a subset of PROTOCOL_SCALES)
SCALE_SETS = {
    "{1}": (1.0,),
    "{1, √2, 2}": (1.0, ROOT2, 2.0),
    "{1 … 2} (¼ octave)": tuple(s for s in PROTOCOL_SCALES if s >= 1.0),
    "{1/√2, 1, √2, 2}": (1 / ROOT2, 1.0, ROOT2, 2.0),
    "{1/2 … 2} (¼ octave)": PROTOCOL_SCALES,
}
POOLS = ("max", "mean", "logsumexp", "maxprob")  # maxprob: the class of the highest softmax over channels


def scale_name(s: float) -> str:
    return f"{s:.3f}"


def channel_index(scale: float) -> int:
    return min(range(len(PROTOCOL_SCALES)), key=lambda i: abs(PROTOCOL_SCALES[i] - scale))


def pooled_prediction(logits: torch.Tensor, pool: str) -> torch.Tensor:
    """``(N, C, classes)`` channel logits → predicted classes (N,)."""
    if pool == "maxprob":
        return logits.softmax(-1).amax(1).argmax(-1)
    return pool_channels(logits, pool).argmax(-1)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * float((pred == labels).double().mean()), 2)


def normalise(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean, std = model.pretrained_cfg["mean"][0], model.pretrained_cfg["std"][0]
    return (x - mean) / std


@torch.no_grad()
def batched(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(BATCH)])


# the published weights the eval stage scores; a stored cell is reused only while they hold the same tensors
EVAL_TAGS = {"gd_fmnist": "gd_fmnist.fmnist_table1", "ff_fmnist": "ff_fmnist.fmnist"}


def load_model(name: str, weights: str | None) -> nn.Module:
    """The published weights :data:`EVAL_TAGS` names for ``name``, or a trained file (safetensors)."""
    if weights is None:
        return timm.create_model(EVAL_TAGS[name], pretrained=True).eval()
    from safetensors.torch import load_file

    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(load_file(weights))
    return model.eval()


def eval_cell(name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale: float) -> dict:
    """Every number of one (weights, test scale) cell."""
    x = normalise(model, rescale_on_canvas(images, scale, CANVAS, INTERPOLATION, ANTIALIAS))
    cell: dict = {"test_scale": scale}
    start = time.perf_counter()
    cell["plain_canvas"] = accuracy(batched(model, x).argmax(1), labels)
    cell["plain_frame"] = accuracy(batched(model, centre_crop(x, FRAME)).argmax(1), labels)
    cell["resized_back"] = resized_back(model, images, labels, scale)
    if name == "ff_fmnist":
        cell["seconds"] = round(time.perf_counter() - start, 1)
        return cell
    channels = gdzoo.ScaleChannels(model, scales=PROTOCOL_SCALES, window=FRAME).eval()
    logits = batched(channels.channel_logits, x)  # (N, 9, classes)
    cell["channel"] = {scale_name(s): accuracy(logits[:, i].argmax(1), labels) for i, s in enumerate(PROTOCOL_SCALES)}
    # below_one='resize': the channels under 1 run the plain model on their frame enlarged to 28×28 instead
    small = [i for i, s in enumerate(PROTOCOL_SCALES) if s < 1.0]
    resized = gdzoo.ScaleChannels(model, scales=[PROTOCOL_SCALES[i] for i in small], window=FRAME, below_one="resize")
    logits_resize = logits.clone()
    logits_resize[:, small] = batched(resized.eval().channel_logits, x)
    cell["channel_resize"] = {scale_name(PROTOCOL_SCALES[i]): accuracy(logits_resize[:, i].argmax(1), labels)
                              for i in small}
    for key, source in (("pooled", logits), ("pooled_resize", logits_resize)):
        cell[key] = {}
        for set_name, subset in SCALE_SETS.items():
            idx = [channel_index(s) for s in subset]
            cell[key][set_name] = {pool: accuracy(pooled_prediction(source[:, idx], pool), labels) for pool in POOLS}
    cell["seconds"] = round(time.perf_counter() - start, 1)
    return cell


def resized_back(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale: float) -> float:
    """Top-1 of the plain model on the rescaled frame (side ≈ 28·s) resized back to 28×28: an oracle (it needs
    the scale) that bounds what resizing the input, instead of steering the kernels, could recover."""
    x = centre_crop(rescale_on_canvas(images, scale, CANVAS, INTERPOLATION, ANTIALIAS), scale * FRAME)
    x = F.interpolate(x, size=(FRAME, FRAME), mode=INTERPOLATION, antialias=ANTIALIAS, align_corners=False)
    return accuracy(batched(model, normalise(model, x)).argmax(1), labels)


def results_path(n_test: int, weights: str | None) -> Path:
    tag = "published" if weights is None else Path(weights).parent.name
    return RESULTS / f"eval_{tag}_{n_test}.json"


def run_eval(n_test: int, weights: str | None, models: tuple[str, ...]) -> dict:
    path = results_path(n_test, weights)
    done = json.loads(path.read_text()) if path.is_file() else {}
    done.setdefault("protocol", dict(canvas=CANVAS, interpolation=INTERPOLATION, antialias=ANTIALIAS, frame=FRAME,
                                     images=f"the first {n_test} of the 10000 test images",
                                     weights=shown(weights) or "published"))
    images, labels = load_fashion_mnist("test")
    images, labels = images[:n_test], labels[:n_test]
    for name in models:
        if name != "gd_fmnist" and weights is not None:
            continue
        model = load_model(name, weights)
        needed = ("resized_back",) if name == "ff_fmnist" else ("resized_back", "pooled_resize")
        identity = {"weights_sha256": tensors_sha256(model)}
        cells = [(f"{name}|{scale_name(s)}", identity, partial(eval_cell, name, model, images, labels, s))
                 for s in PROTOCOL_SCALES]
        fill_cells(path, done, cells, needed)
    return done


# ---------------------------------------------------------------------------------------------- training (prepared)
def train_data(subset: int | None = None, val_size: int = 5000) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_val, y_val)``: 5000 training images held out (split seed 0, as the zoo recipe)."""
    images, labels = load_fashion_mnist("train")
    train_idx, val_idx = split_indices(len(images), val_size=val_size, subset=subset, seed=0)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def parse_scales(text: str) -> tuple[float, ...]:
    """``'1,2^0.5,2'`` → ``(1.0, 1.414…, 2.0)``: numbers or powers ``a^b``, comma-separated."""
    scales = []
    for token in text.split(","):
        base, _, power = token.strip().partition("^")
        try:
            scales.append(float(base) ** float(power) if power else float(base))
        except ValueError:
            raise SystemExit(f"--train-scales: {token!r} is not a number or a power a^b (e.g. 1,2^0.5,2)") from None
    return tuple(scales)


def base_model(init: str) -> nn.Module:
    """``gd_fmnist`` from scratch, from the published weights, or from a safetensors file (e.g. a zoo run that held
    out the validation images, so the choice made on them is fair)."""
    if init in ("scratch", "published"):
        return timm.create_model("gd_fmnist", pretrained=init == "published")
    return load_model("gd_fmnist", init).train()


def channel_network(model: nn.Module, scales: tuple[float, ...], config: dict, **kwargs) -> gdzoo.ScaleChannels:
    """The channels as trained: each on its 28×28 frame rescaled, padded with the black background when the frame
    is larger than the input, channels below/above 1 steered or resized as ``config`` says."""
    return gdzoo.ScaleChannels(model, scales=scales, window=FRAME, fill=SC_FILL,
                               below_one=config.get("below_one", "steer"), above_one=config.get("above_one", "steer"),
                               **kwargs)


def run_train(args: argparse.Namespace) -> Path:
    """Train gd_fmnist inside ScaleChannels on 28×28 images (scale 1); resumable; returns the weights file."""
    from safetensors.torch import save_file

    run = RUNS / args.name
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    base = base_model(args.init)
    scales = parse_scales(args.train_scales)
    if args.train_angles:  # orientation channels instead (the rotation row): every channel on the whole image
        model = gdzoo.OrientationChannels(base, angles=parse_scales(args.train_angles), pool=args.pool,
                                          channel_dropout=args.channel_dropout)
    else:
        model = channel_network(base, scales, vars(args), pool=args.pool, channel_dropout=args.channel_dropout)
    x_train, y_train, _, _ = train_data(args.train_subset)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.steps or args.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, round(0.05 * total))  # linear warm-up over 5 % of the steps, then cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    ckpt, step = run / "last.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        print(f"resumed {ckpt} at step {step} of {total}", flush=True)
    config = dict(vars(args), scales=scales, steps_per_epoch=steps_per_epoch, total_steps=total)
    atomic_write_text(run / "config.json", json.dumps(config, indent=1) + "\n")
    mean, std = base.pretrained_cfg["mean"][0], base.pretrained_cfg["std"][0]
    start, seen, loss_sum, first = time.perf_counter(), 0, 0.0, step
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(x_train), generator=generator)
        flips = torch.rand(len(x_train), generator=generator) < 0.5  # per image of the epoch: resumable mid-epoch
        idx = order[i * args.batch_size:(i + 1) * args.batch_size]
        model.train()
        x = (x_train[idx].float() / 255 - mean) / std
        x = torch.where(flips[idx, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen, loss_sum, step = seen + len(idx), loss_sum + float(loss.detach()) * len(idx), step + 1
        per_step = (time.perf_counter() - start) / (step - first)
        if step % args.checkpoint_every == 0 or step == total:
            state = dict(model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), step=step)
            atomic_write(ckpt, lambda tmp, state=state: torch.save(state, tmp))
            print(f"step {step}/{total} (epoch {step / steps_per_epoch:.2f}): loss {loss_sum / seen:.4f}, "
                  f"{per_step:.2f} s/step", flush=True)
            seen, loss_sum = 0, 0.0
        if args.max_steps and step - first >= args.max_steps:
            print(f"smoke test: {step - first} steps, {per_step:.2f} s/step (batch {args.batch_size}); an epoch of "
                  f"{steps_per_epoch} steps ≈ {per_step * steps_per_epoch / 60:.1f} min, {total} steps "
                  f"≈ {per_step * total / 3600:.1f} h", flush=True)
            return run
    weights = run / "model.safetensors"
    tensors = {k: v.contiguous() for k, v in base.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    return weights


def channel_cell(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale: float, config: dict) -> dict:
    """One test (or validation) scale for a model run in channels as ``config`` says: every channel alone and every
    scale set × pooling of ScaleChannels (pooling a subset of the channel logits is exactly that module)."""
    x = normalise(model, rescale_on_canvas(images, scale, CANVAS, INTERPOLATION, ANTIALIAS))
    start = time.perf_counter()
    channels = channel_network(model, PROTOCOL_SCALES, config).eval()
    logits = batched(channels.channel_logits, x)  # (N, 9, classes)
    cell: dict = {"test_scale": scale}
    cell["channel"] = {scale_name(s): accuracy(logits[:, i].argmax(1), labels) for i, s in enumerate(PROTOCOL_SCALES)}
    cell["plain_frame"] = cell["channel"][scale_name(1.0)]  # the scale-1 channel is the plain model on its frame
    cell["pooled"] = {}
    for set_name, subset in SCALE_SETS.items():
        idx = [channel_index(s) for s in subset]
        cell["pooled"][set_name] = {pool: accuracy(pooled_prediction(logits[:, idx], pool), labels)
                                    for pool in POOLS[:3]}  # the module's poolings only
    cell["seconds"] = round(time.perf_counter() - start, 1)
    return cell


def run_config(name: str) -> dict:
    """The channel configuration a run was trained with (its config.json)."""
    path = RUNS / name / "config.json"
    if not path.is_file():
        raise SystemExit(f"--name {name}: no {path.relative_to(ROOT)} (train it first: --stage train --name {name})")
    return json.loads(path.read_text())


def run_channel_eval(weights: str, config: dict, tag: str, images: torch.Tensor, labels: torch.Tensor,
                     out: Path) -> dict:
    """Every channel cell of ``weights`` at every protocol scale, stored in ``out`` as each finishes (resumes)."""
    done = json.loads(out.read_text()) if out.is_file() else {}
    done.setdefault("protocol", dict(canvas=CANVAS, interpolation=INTERPOLATION, antialias=ANTIALIAS, frame=FRAME,
                                     images=len(labels), weights=shown(weights),
                                     below_one=config.get("below_one", "steer"),
                                     above_one=config.get("above_one", "steer")))
    model = load_model("gd_fmnist", weights)
    identity = {"weights_sha256": tensors_sha256(model), "below_one": config.get("below_one", "steer"),
                "above_one": config.get("above_one", "steer")}
    return fill_cells(out, done, [(f"{tag}|{scale_name(s)}", identity,
                                   partial(channel_cell, model, images, labels, s, config)) for s in PROTOCOL_SCALES],
                      summary=channel_summary)


def channel_summary(cell: dict) -> str:
    return f"plain {cell['plain_frame']}, {json.dumps(cell['pooled'], ensure_ascii=False)}"


def run_weights(name: str) -> str:
    """A trained run's weights file."""
    return str(RUNS / name / "model.safetensors")


def shown(weights: str | None) -> str | None:
    """A weights path as the committed results record it: relative to the repository when inside it, so the results
    name no machine's folders.

    Example:
        >>> shown(str(ROOT / "runs" / "scale" / "a" / "model.safetensors")), shown("/elsewhere/b.safetensors")
        ('runs/scale/a/model.safetensors', '/elsewhere/b.safetensors')
    """
    if weights is None:
        return None
    path = Path(weights).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else weights


def run_select(args: argparse.Namespace) -> dict:
    """Choose the scale set and pooling of a trained model on validation images (never the test set)."""
    config = run_config(args.name)
    weights = run_weights(args.name)
    _, _, x_val, y_val = train_data()
    x_val, y_val = x_val[: args.n_val], y_val[: args.n_val]
    done = run_channel_eval(weights, config, args.name, x_val, y_val, RESULTS / f"val_{args.name}_{len(y_val)}.json")
    scores = {set_name: {pool: {scale_name(s): done[f"{args.name}|{scale_name(s)}"]["pooled"][set_name][pool]
                                for s in PROTOCOL_SCALES} for pool in POOLS[:3]} for set_name in SCALE_SETS}
    at_one = {(s, p): v[scale_name(1.0)] for s, pools in scores.items() for p, v in pools.items()}
    best_at_one = max(at_one.values())
    eligible = [(s, p) for (s, p), v in at_one.items() if v >= best_at_one - 0.5]
    choice = max(eligible, key=lambda sp: sum(scores[sp[0]][sp[1]].values()))
    result = dict(scores=scores, choice=dict(scale_set=choice[0], scales=SCALE_SETS[choice[0]], pool=choice[1]),
                  rule="best mean over the protocol scales among the candidates within 0.5 points of the best at 1",
                  n_val=len(y_val), train=training_summary(config))
    atomic_write_text(RESULTS / f"select_{args.name}.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(result["choice"], ensure_ascii=False))
    return result


TRAINING_KEYS = ("init", "scales", "below_one", "above_one", "pool", "channel_dropout", "total_steps", "batch_size",
                 "lr")


def training_summary(config: dict) -> dict:
    """What the doc says of a run's training (its config.json lives in runs/, which is not committed)."""
    return {k: config.get(k) for k in TRAINING_KEYS}


def weights_and_tag(args: argparse.Namespace) -> tuple[str, str]:
    """``--weights`` under ``--tag``, else the trained run ``--name``'s weights under its name."""
    if args.weights is not None:
        return args.weights, args.tag
    return run_weights(args.name), args.name


def run_trained_eval(args: argparse.Namespace) -> dict:
    """A trained run (``--name``) or any gd_fmnist file (``--weights``, channels as ``--below-one/--above-one``) on
    the first ``--n-test`` test images at every protocol scale."""
    weights, tag = weights_and_tag(args)
    config = dict(below_one=args.below_one, above_one=args.above_one) if args.weights else run_config(args.name)
    images, labels = load_fashion_mnist("test")
    return run_channel_eval(weights, config, tag, images[: args.n_test], labels[: args.n_test],
                            RESULTS / f"test_channels_{args.n_test}.json")


def run_publish(args: argparse.Namespace) -> Path:
    """``weights/gd_fmnist_sc.fmnist_channels/`` from a trained run (``--name``), in the channel configuration the
    run chose on validation; its card states the top-1 on the 10000 standard test images (28×28) and, per protocol
    scale, the test row of ``--stage test`` (the first ``--n-test`` images)."""
    from gdzoo.hub.export import export_hub_folder
    from gdzoo.models.gd_fmnist_sc import SC_CHANNELS

    config, select = run_config(args.name), json.loads((RESULTS / f"select_{args.name}.json").read_text())
    choice = select["choice"]
    wanted = dict(scales=tuple(choice["scales"]), pool=choice["pool"], below_one=config["below_one"],
                  above_one=config["above_one"])
    registered = SC_CHANNELS["fmnist_channels"]
    if any(wanted[k] != (tuple(registered[k]) if k == "scales" else registered[k]) for k in wanted):
        raise SystemExit(f"{args.name} chose {wanted}; gdzoo/models/gd_fmnist_sc.py SC_CHANNELS['fmnist_channels'] "
                         f"says {registered}: make them agree first")
    model = timm.create_model("gd_fmnist_sc", **wanted).eval()
    model.model.load_state_dict(load_model("gd_fmnist", run_weights(args.name)).state_dict())
    images, labels = load_fashion_mnist("test")
    metrics = {"test/top1": accuracy(batched(model, normalise(model, images.float() / 255)).argmax(1), labels)}
    tested = json.loads((RESULTS / f"test_channels_{args.n_test}.json").read_text())
    for s in PROTOCOL_SCALES:
        metrics[f"rescaled{args.n_test}/top1_x{s:.3f}"] = tested[f"{args.name}|{scale_name(s)}"]["pooled"][
            choice["scale_set"]][choice["pool"]]
    description = (
        "`gd_fmnist` in nine scale channels (1/2 to 2, a quarter octave apart; each the plain model on its 28×28 "
        f"frame rescaled), pooled by {choice['pool']}, **trained with its channels** on 28×28 Fashion-MNIST images "
        "(scale 1 only): fine-tuned from a `gd_fmnist` that held out 5000 training images, on which the channels and "
        "the pooling were chosen. test/top1: the 10000 standard test images; rescaled*/top1_x<s>: the first "
        f"{args.n_test} test images rescaled by s on a 72×72 canvas (docs/scale.md).")
    command = (f"python benchmarks/scale_generalisation.py --stage train --name {args.name} ... (docs/scale.md); "
               f"--stage select/test/publish --name {args.name}")
    folder = export_hub_folder(model, "fmnist_channels", ROOT / "weights", metrics=metrics, command=command,
                               datasets=["fashion_mnist"], description=description)
    print(json.dumps(metrics), folder.path)
    return folder.path


ROTATION_TEST_ANGLES = (0.0, 45.0, 90.0, 180.0, 270.0)
ORIENTATIONS = (0.0, 90.0, 180.0, 270.0)


def rotated(images: torch.Tensor, angle: float) -> torch.Tensor:
    """The 28×28 test images rotated counter-clockwise by ``angle``: exact (torch.rot90) for multiples of 90°,
    else bilinear with a black fill (torchvision)."""
    x = images if images.is_floating_point() else images.float() / 255
    if angle % 90 == 0:
        return torch.rot90(x, int(angle // 90) % 4, dims=(-2, -1))
    from torchvision.transforms.functional import InterpolationMode, rotate

    return rotate(x, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)


def run_rotation(args: argparse.Namespace) -> dict:
    """The rotation row: a model (``--weights`` file or a trained run ``--name``) plain and in orientation channels
    (0, 90, 180, 270°; each pooling), on the first ``--n-test`` test images rotated by each test angle."""
    weights, tag = weights_and_tag(args)
    out = RESULTS / f"rotation_{args.n_test}.json"
    done = json.loads(out.read_text()) if out.is_file() else {}
    model = load_model("gd_fmnist", weights)
    channels = gdzoo.OrientationChannels(model, angles=ORIENTATIONS).eval()
    images, labels = load_fashion_mnist("test")
    images, labels = images[: args.n_test], labels[: args.n_test]

    def cell(angle: float) -> dict:
        x = normalise(model, rotated(images, angle))
        logits = batched(channels.channel_logits, x)
        return dict(weights=shown(weights), plain=accuracy(batched(model, x).argmax(1), labels),
                    pooled={pool: accuracy(pooled_prediction(logits, pool), labels) for pool in POOLS[:3]})

    identity = {"weights_sha256": tensors_sha256(model)}
    return fill_cells(out, done, [(f"{tag}|{angle:g}", identity, partial(cell, angle))
                                  for angle in ROTATION_TEST_ANGLES])


def run_cost(n: int = 200, repeats: int = 3) -> dict:
    """Seconds per ``n`` canvas images of each channel alone (ScaleChannels(scales=(s,), window=28)), best of
    ``repeats``: a channel's cost grows with its frame (≈ s² pixels) and its kernels (≈ s² taps)."""
    model = load_model("gd_fmnist", None)
    images, _ = load_fashion_mnist("test")
    x = normalise(model, rescale_on_canvas(images[:n], 1.0, CANVAS, INTERPOLATION, ANTIALIAS))
    cost = {"images": n, "threads": torch.get_num_threads(), "seconds": {}}
    for s in PROTOCOL_SCALES:
        channel = gdzoo.ScaleChannels(model, scales=(s,), window=FRAME).eval()
        times = []
        with torch.no_grad():
            channel(x[:2])  # builds the steered structure and the kernel cache
            for _ in range(repeats):
                start = time.perf_counter()
                batched(channel, x)
                times.append(time.perf_counter() - start)
        cost["seconds"][scale_name(s)] = round(min(times), 3)
    atomic_write_text(RESULTS / "cost.json", json.dumps(cost, indent=1) + "\n")
    print(json.dumps(cost))
    return cost


MODEL_COSTS = ("gd_fmnist", "gd_fmnist_sc.fmnist_channels", "gd_fmnist_sc.fmnist")


def run_model_costs(n: int = 500, rounds: int = 5) -> dict:
    """Seconds per ``n`` 28×28 test images of the plain model and of both published gd_fmnist_sc tags, the median
    of ``rounds`` interleaved rounds (one round times each model once), so load drifts hit every model alike."""
    images, _ = load_fashion_mnist("test")
    models = {name: timm.create_model(name, pretrained=True).eval() for name in MODEL_COSTS}
    x = normalise(models["gd_fmnist"], images[:n].float() / 255)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(x[:2])  # kernel caches, steered structures
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                batched(model, x)
                times[name].append(time.perf_counter() - start)
    cost = {"images": n, "threads": torch.get_num_threads(), "rounds": rounds,
            "seconds": {name: round(statistics.median(ts), 3) for name, ts in times.items()}}
    atomic_write_text(RESULTS / "cost_models.json", json.dumps(cost, indent=1) + "\n")
    print(json.dumps(cost))
    return cost


# ---------------------------------------------------------------------------------------------- the doc
def _row(label: str, values: list[float | None]) -> str:
    return f"| {label} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in values) + " |"


def series(done: dict, name: str, path: tuple) -> list[float | None]:
    """One number per test scale: ``done[name|scale][path...]`` (None where not run yet)."""
    out = []
    for s in PROTOCOL_SCALES:
        value = done.get(f"{name}|{scale_name(s)}")
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        out.append(value)
    return out


def table(done: dict) -> list[str]:
    scales = [scale_name(s) for s in PROTOCOL_SCALES]
    head = "| top-1 (%) at test scale | " + " | ".join(f"{s:.3g}" for s in PROTOCOL_SCALES) + " |"
    lines = [head, "|---|" + "---:|" * len(scales)]

    def get(name: str, path: tuple) -> list[float | None]:
        return series(done, name, path)

    lines.append(_row("`ff_fmnist` plain, whole 72×72 canvas", get("ff_fmnist", ("plain_canvas",))))
    lines.append(_row("`ff_fmnist` plain, centred 28×28 frame", get("ff_fmnist", ("plain_frame",))))
    lines.append(_row("`gd_fmnist` plain, whole 72×72 canvas", get("gd_fmnist", ("plain_canvas",))))
    lines.append(_row("`gd_fmnist` plain, centred 28×28 frame", get("gd_fmnist", ("plain_frame",))))
    oracle = [done.get(f"gd_fmnist|{s}", {}).get("channel", {}).get(s) for s in scales]
    lines.append(_row("`gd_fmnist` steered to the true scale (needs the scale)", oracle))
    lines.append(_row("`gd_fmnist` plain on the frame resized back to 28×28 (needs the scale)",
                      get("gd_fmnist", ("resized_back",))))
    lines.append(_row("`ff_fmnist` plain on the frame resized back to 28×28 (needs the scale)",
                      get("ff_fmnist", ("resized_back",))))
    for set_name in SCALE_SETS:
        if set_name == "{1}":
            continue
        for pool in POOLS:
            label = f"channels {set_name}, {pool}" + (" (the issue's prototype rule)" if pool == "maxprob" else "")
            lines.append(_row(label, get("gd_fmnist", ("pooled", set_name, pool))))
    for set_name in [n for n, subset in SCALE_SETS.items() if min(subset) < 1.0]:
        for pool in POOLS[:3]:
            lines.append(_row(f"channels {set_name}, {pool}, `below_one='resize'`",
                              get("gd_fmnist", ("pooled_resize", set_name, pool))))
    return lines


PLOTTED = (("ff_fmnist", ("plain_frame",), "ff_fmnist plain (28×28 frame)", "--"),
           ("gd_fmnist", ("plain_frame",), "gd_fmnist plain (28×28 frame)", "--"),
           ("gd_fmnist", ("oracle",), "gd_fmnist steered to the true scale (oracle)", ":"),
           ("gd_fmnist", ("resized_back",), "gd_fmnist on the frame resized back (oracle)", ":"),
           ("gd_fmnist", ("pooled", "{1, √2, 2}", "max"), "channels {1, √2, 2}, max", "-"),
           ("gd_fmnist", ("pooled", "{1 … 2} (¼ octave)", "logsumexp"), "channels {1 … 2}, logsumexp", "-"),
           ("gd_fmnist", ("pooled", "{1/√2, 1, √2, 2}", "max"), "channels {1/√2, 1, √2, 2}, max", "-"),
           ("gd_fmnist", ("pooled", "{1/√2, 1, √2, 2}", "mean"), "channels {1/√2, 1, √2, 2}, mean", "-"),
           ("gd_fmnist", ("pooled", "{1/2 … 2} (¼ octave)", "max"), "channels {1/2 … 2}, max", "-"),
           ("gd_fmnist", ("pooled_resize", "{1/√2, 1, √2, 2}", "max"),
            "channels {1/√2, 1, √2, 2}, max, resize < 1", "-."))


def plot(done: dict) -> None:
    """docs/scale.png: top-1 against the test scale for the main rows of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, path, label, style in PLOTTED:
        if path == ("oracle",):
            values = [done.get(f"{name}|{scale_name(s)}", {}).get("channel", {}).get(scale_name(s))
                      for s in PROTOCOL_SCALES]
        else:
            values = series(done, name, path)
        points = [(s, v) for s, v in zip(PROTOCOL_SCALES, values) if v is not None]
        if points:
            ax.plot(*zip(*points), style, marker="o", label=label)
    ax.set(xlabel="test scale factor s", ylabel="top-1 (%)", xscale="log", ylim=(0, 100),
           title="Rescaled Fashion-MNIST (72×72 canvas), published weights, no retraining")
    ax.set_xticks(PROTOCOL_SCALES, [f"{s:.3g}" for s in PROTOCOL_SCALES])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def cost_lines() -> list[str]:
    path = RESULTS / "cost.json"
    if not path.is_file():
        return []
    cost = json.loads(path.read_text())
    seconds = cost["seconds"]
    one = seconds[scale_name(1.0)]
    return [f"Cost of each channel alone (`--stage cost`, {path.relative_to(ROOT)}): seconds per {cost['images']} "
            f"canvas images, best of 3, {cost['threads']} thread(s) of the shared CPU; relative to the scale-1 channel "
            "(the plain model on its 28×28 frame).", "",
            "| channel scale | " + " | ".join(f"{s:.3g}" for s in PROTOCOL_SCALES) + " |",
            "|---|" + "---:|" * len(PROTOCOL_SCALES),
            "| seconds | " + " | ".join(f"{seconds[scale_name(s)]:.2f}" for s in PROTOCOL_SCALES) + " |",
            "| × scale 1 | " + " | ".join(f"{seconds[scale_name(s)] / one:.1f}" for s in PROTOCOL_SCALES) + " |", "",
            *model_cost_lines()]


def model_cost_lines() -> list[str]:
    path = RESULTS / "cost_models.json"
    if not path.is_file():
        return []
    cost = json.loads(path.read_text())
    seconds, plain = cost["seconds"], cost["seconds"]["gd_fmnist"]
    return [f"The published models on 28×28 images (`--stage cost-models`, {path.relative_to(ROOT)}): seconds per "
            f"{cost['images']} test images, median of {cost['rounds']} interleaved rounds, {cost['threads']} thread(s) "
            "of the shared CPU.", "", "| model | seconds | × `gd_fmnist` |", "|---|---:|---:|",
            *(f"| `{name}` | {s:.2f} | {s / plain:.1f} |" for name, s in seconds.items()), ""]


def replace_block(text: str, name: str, lines: list[str]) -> str:
    """``text`` with the generated block ``name`` (between its begin/end comments) replaced, or appended."""
    start, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def trained_lines(n_test: int) -> list[str]:
    """The table of channel networks trained at scale 1 (test stage), each with its choice made on validation."""
    path = RESULTS / f"test_channels_{n_test}.json"
    if not path.is_file():
        return []
    done = json.loads(path.read_text())
    tags = list(dict.fromkeys(k.split("|")[0] for k in done if "|" in k))
    choices = {tag: json.loads((RESULTS / f"select_{tag}.json").read_text())
               for tag in tags if (RESULTS / f"select_{tag}.json").is_file()}
    head = "| top-1 (%) at test scale | " + " | ".join(f"{s:.3g}" for s in PROTOCOL_SCALES) + " |"
    lines = [f"<!-- Generated by `python benchmarks/scale_generalisation.py --stage doc` from "
             f"{path.relative_to(ROOT)} and results/scale/select_*.json; edit the script, not this block. -->", "",
             f"The first {n_test} test images at every scale (as above). Channels on each one's 28×28 frame "
             "rescaled; the scale set and pooling of each trained run chosen on the 5000 held-out validation images "
             "at every protocol scale (results/scale/select_<run>.json), never on this table.", "",
             head, "|---|" + "---:|" * len(PROTOCOL_SCALES)]
    for tag in tags:
        lines.append(_row(f"`{tag}` plain (the 28×28 frame)", series(done, tag, ("plain_frame",))))
        if tag in choices:
            rows = {(choices[tag]["choice"]["scale_set"], choices[tag]["choice"]["pool"]): "chosen on validation"}
        else:  # an untrained base: with every choice the trained runs made
            rows = {(c["choice"]["scale_set"], c["choice"]["pool"]): "no channel training" for c in choices.values()}
        for (scale_set, pool), label in rows.items():
            lines.append(_row(f"`{tag}` channels {scale_set}, {pool} ({label})",
                              series(done, tag, ("pooled", scale_set, pool))))
    return lines + ["", *validation_lines(choices)]


def validation_lines(choices: dict[str, dict]) -> list[str]:
    """Each trained run's training configuration and its choice on the validation images (top-1 %)."""
    lines = ["Validation (held-out training images at every protocol scale; the choice of each run):", "",
             "| run | trained channels | training pool | steps | validation images | chosen | at 1 | mean over scales "
             "| worst scale |", "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for run, select in choices.items():
        config = select["train"]
        choice = select["choice"]
        scores = select["scores"][choice["scale_set"]][choice["pool"]]
        made = {"steer": "steered", "resize": "resized"}
        kind = (f"{len(config['scales'])} scales, below 1 {made[config['below_one'] or 'steer']}, above 1 "
                f"{made[config['above_one'] or 'steer']}")
        lines.append(f"| `{run}` | {kind} | {config['pool']} | {config['total_steps']} | {select['n_val']} | "
                     f"{choice['scale_set']}, {choice['pool']} | {scores[scale_name(1.0)]:.2f} | "
                     f"{sum(scores.values()) / len(scores):.2f} | {min(scores.values()):.2f} |")
    return lines


def rotation_lines(n_test: int) -> list[str]:
    path = RESULTS / f"rotation_{n_test}.json"
    if not path.is_file():
        return []
    done = json.loads(path.read_text())
    tags = list(dict.fromkeys(k.split("|")[0] for k in done))
    lines = [f"<!-- Generated by `python benchmarks/scale_generalisation.py --stage doc` from "
             f"{path.relative_to(ROOT)}; edit the script, not this block. -->", "",
             "| top-1 (%) at test rotation | " + " | ".join(f"{a:g}°" for a in ROTATION_TEST_ANGLES) + " |",
             "|---|" + "---:|" * len(ROTATION_TEST_ANGLES)]
    for tag in tags:
        cells = [done.get(f"{tag}|{a:g}") for a in ROTATION_TEST_ANGLES]
        lines.append(_row(f"`{tag}` plain", [c and c["plain"] for c in cells]))
        for pool in POOLS[:3]:
            lines.append(_row(f"`{tag}` orientation channels 0/90/180/270°, {pool}",
                              [c and c["pooled"][pool] for c in cells]))
    return lines


def write_doc(n_test: int) -> None:
    path = results_path(n_test, None)
    done = json.loads(path.read_text()) if path.is_file() else {}
    seconds = sum(v.get("seconds", 0) for k, v in done.items() if "|" in k)
    text = DOC.read_text() if DOC.is_file() else ""
    text = replace_block(text, "scale_generalisation", [
        f"<!-- Generated by `python benchmarks/scale_generalisation.py --stage doc --n-test {n_test}` "
        f"from {path.relative_to(ROOT)}; edit the script, not this block. -->", "",
        f"The first {n_test} of the 10000 test images at every scale (72×72 canvas, bicubic, antialiased); "
        f"published weights {' and '.join(f'`{tag}`' for tag in EVAL_TAGS.values())}, no retraining. "
        f"Evaluation time {seconds / 60:.0f} min on one thread of a shared 2-core CPU.", "",
        *table(done), "", "![top-1 against the test scale](scale.png)", "", *cost_lines()])
    for name, lines in (("scale_trained", trained_lines(n_test)), ("rotation", rotation_lines(n_test))):
        if lines:
            text = replace_block(text, name, lines)
    atomic_write_text(DOC, text)
    plot(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="eval", choices=("eval", "train", "select", "test", "publish", "rotation",
                                                             "cost", "cost-models", "doc"))
    parser.add_argument("--n-test", type=int, default=2000, help="test images per scale (the first n of 10000)")
    parser.add_argument("--weights", default=None, help="eval: a trained gd_fmnist safetensors file instead")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="base", help="test with --weights: the row's name in the results")
    parser.add_argument("--name", default="sc_drop", help="train/select: the run's name under runs/scale/")
    parser.add_argument("--train-scales", default="1,2^0.5,2", help="train: channel scales, e.g. 1,2^0.5,2")
    parser.add_argument("--train-angles", default="",
                        help="train: orientation channels at these angles (degrees, e.g. 0,90,180,270) instead")
    parser.add_argument("--pool", default="max", choices=("max", "mean", "logsumexp"))
    parser.add_argument("--channel-dropout", type=float, default=0.25)
    parser.add_argument("--init", default="scratch",
                        help="train: 'scratch', 'published', or a gd_fmnist safetensors file to fine-tune")
    parser.add_argument("--below-one", default="steer", choices=gdzoo.layers.scale_channels.BELOW_ONE,
                        help="train: channels under 1 steered or resized")
    parser.add_argument("--above-one", default="steer", choices=gdzoo.layers.scale_channels.ABOVE_ONE,
                        help="train: channels over 1 steered or resized")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=0, help="train: schedule length in steps (0: epochs)")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="train: steps between checkpoints")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="train: stop after this many steps (smoke test)")
    parser.add_argument("--train-subset", type=int, default=None, help="train: only this many training images")
    parser.add_argument("--n-val", type=int, default=5000, help="select: validation images per scale")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "eval":
        run_eval(args.n_test, args.weights, ("gd_fmnist", "ff_fmnist"))
        if args.weights is None:
            write_doc(args.n_test)
    elif args.stage == "train":
        run_train(args)
    elif args.stage == "select":
        run_select(args)
    elif args.stage == "test":
        run_trained_eval(args)
    elif args.stage == "rotation":
        run_rotation(args)
    elif args.stage == "publish":
        run_publish(args)
    elif args.stage == "cost":
        run_cost()
    elif args.stage == "cost-models":
        run_model_costs()
    else:
        write_doc(args.n_test)


if __name__ == "__main__":
    main()
