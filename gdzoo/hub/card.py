"""Model cards (``README.md`` with Hub front matter) for exported weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml

__all__ = ["CITATION", "card_metrics", "render_model_card"]

CITATION = """@inproceedings{penaudpolge2022ftgd,
  title     = {Fully Trainable Gaussian Derivative Convolutional Layer},
  author    = {Penaud--Polge, Valentin and Velasco-Forero, Santiago and Angulo, Jesus},
  booktitle = {2022 IEEE International Conference on Image Processing (ICIP)},
  pages     = {2421--2425},
  year      = {2022},
  doi       = {10.1109/ICIP46576.2022.9897734}
}"""


def _format_value(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _model_index(name: str, pipeline_tag: str, datasets: Sequence[str], metrics: Mapping[str, object]) -> list[dict]:
    """The Hub's machine-readable ``model-index``: one result per split of ``'<split>/<metric>'`` keys."""
    by_split: dict[str, list[dict]] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            split, _, metric = key.rpartition("/")
            by_split.setdefault(split or "test", []).append({"type": metric, "name": key, "value": value})
    dataset = datasets[0] if datasets else "unknown"
    results = [{"task": {"type": pipeline_tag}, "dataset": {"name": dataset, "type": dataset, "split": split},
                "metrics": rows}
               for split, rows in by_split.items()]
    return [{"name": name, "results": results}]


def card_metrics(card: str) -> dict[str, float]:
    """``{'<split>/<metric>': value}`` from a card's ``model-index`` front matter
    (what :func:`render_model_card` wrote).

    Example:
        >>> card = render_model_card("org/m.t", "m", license="mit", datasets=["d"], metrics={"test/top1": 93.1})
        >>> card_metrics(card)
        {'test/top1': 93.1}
    """
    if not card.startswith("---"):
        return {}
    front = yaml.safe_load(card.split("---", 2)[1]) or {}
    out: dict[str, float] = {}
    for entry in front.get("model-index") or []:
        for result in entry.get("results") or []:
            for row in result.get("metrics") or []:
                out[row.get("name") or f"{result['dataset'].get('split', 'test')}/{row['type']}"] = row["value"]
    return out


def render_model_card(
    repo_id: str,
    architecture: str,
    *,
    license: str,
    datasets: Sequence[str] = (),
    metrics: Mapping[str, object] | None = None,
    params: int | None = None,
    command: str | None = None,
    description: str = "",
    pipeline_tag: str = "image-classification",
) -> str:
    """Markdown card: front matter (library_name timm, license, tags, datasets, metrics, model-index), results, usage,
    citation."""
    metrics = dict(metrics or {})
    front = {
        "library_name": "timm",
        "license": license,
        "pipeline_tag": pipeline_tag,
        "tags": ["timm", "gdzoo", "gaussian-derivative", pipeline_tag],
        "datasets": list(datasets),
        "metrics": sorted({k.split("/")[-1] for k in metrics if isinstance(metrics[k], (int, float))}),
    }
    if metrics:
        front["model-index"] = _model_index(repo_id.split("/")[-1], pipeline_tag, datasets, metrics)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# Model card for {repo_id}", ""]
    lines += [description or f"A gdzoo `{architecture}` model.", ""]
    lines += ["## Model details", "", f"- **Architecture:** `{architecture}` (gdzoo, a timm plugin)"]
    if params is not None:
        lines.append(f"- **Parameters:** {params:,}")
    lines += [f"- **Dataset:** {', '.join(datasets) or 'n/a'}", f"- **License:** {license}", ""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_format_value(v)} |" for k, v in metrics.items()]
        lines.append("")
    if command:
        lines += ["## Reproduce", "", "```bash", command, "```", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "import gdzoo, timm",
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)
