"""gdzoo's packages import one way: kernels -> layers -> models -> hub / data -> training -> inference -> deploy -> cli.

Every ``import`` / ``from ... import`` in gdzoo's source (at module level or inside a function: lazy imports count,
they close the same circle at run time) is read with :mod:`ast`, and an import from a package to one later in the
order is a failure naming the module and what it imports. The order is the one issue 34 states, written out here,
not read from the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

from _paths import REPO

# Position of each subpackage; a package may import only packages with a smaller number.
ORDER = {"kernels": 0, "layers": 1, "models": 2, "hub": 3, "data": 3, "training": 4, "inference": 5, "deploy": 6,
         "cli": 7}
# Single-file helpers any package may use; they import no subpackage themselves.
LEAVES = {"_io", "errors", "threads", "viz", "__version__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> list[str]:
    """Absolute names of the gdzoo modules (or ``module.attribute``) imported by the file at ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names += [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
    return [name for name in names if name.startswith("gdzoo.")]


def _edges() -> list[tuple[str, str, str, str]]:
    """``(from package, to package, module, imported name)`` for every import that crosses a package boundary."""
    edges = []
    for path in sorted((REPO / "gdzoo").rglob("*.py")):
        module = _module_name(path)
        if module in ("gdzoo", "gdzoo.__main__"):  # the package's facade and ``python -m gdzoo`` stand above all
            continue
        source = module.split(".")[1]
        for name in _imported(path):
            target = name.split(".")[1]
            if target != source:
                edges.append((source, target, module, name))
    return edges


def test_every_package_is_placed() -> None:
    packages = {p.name for p in (REPO / "gdzoo").iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in (REPO / "gdzoo").glob("*.py")} - {"__init__", "__main__"}
    assert packages == set(ORDER), f"place {sorted(packages ^ set(ORDER))} in ORDER"
    assert modules <= LEAVES, f"place {sorted(modules - LEAVES)} in LEAVES"


def test_imports_flow_one_way() -> None:
    wrong = [f"{module} imports {name} ({source} may not import {target})"
             for source, target, module, name in _edges()
             if target not in LEAVES and (source in LEAVES or ORDER[target] >= ORDER[source])]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_lazy_imports() -> None:
    """Imports inside functions and at module level are both seen (else the check above could pass by seeing
    nothing): the predictor imports training's model factory inside a method, loading imports the recipe at the top."""
    edges = {(module, name) for _, _, module, name in _edges()}
    assert ("gdzoo.inference.predictor", "gdzoo.training.modeling") in edges  # inside a method
    assert ("gdzoo.inference.loading", "gdzoo.training.config") in edges  # at module level
    assert ("gdzoo.cli.predict_cmd", "gdzoo.inference.predictor") in edges
