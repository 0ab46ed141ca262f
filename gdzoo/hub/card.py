"""Model cards (``README.md`` with Hub front matter) for exported weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml

__all__ = ["CITATION", "render_model_card"]

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
    """Markdown card: front matter (library_name timm, license, tags, datasets, metrics), results, usage, citation."""
    metrics = dict(metrics or {})
    front = {
        "library_name": "timm",
        "license": license,
        "pipeline_tag": pipeline_tag,
        "tags": ["timm", "gdzoo", "gaussian-derivative", pipeline_tag],
        "datasets": list(datasets),
        "metrics": sorted({k.split("/")[-1] for k in metrics if isinstance(metrics[k], (int, float))}),
    }
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
