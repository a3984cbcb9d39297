"""The package's layering: what each layer may import, and what importing it loads.

The rules of docs/architecture.md that a machine can check: imports point downwards only, the
maths (``functional/``), the modules (``nn/``) and the optimizers (``optim/``) load without
Lightning or pyplot, no module uses another module's private name, and the top-level namespace
is the curated list of plugins plus the subpackages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_dyn

PACKAGE = Path(lightning_dyn.__file__).resolve().parent

# What each layer's modules may import from the package (besides themselves).
ALLOWED = {
    "functional": {"_checks"},
    "nn": {"_checks", "functional"},
    "optim": {"_checks", "functional"},
    "metrics": {"_checks", "functional"},
    "callbacks": {"_checks", "_progress", "functional", "nn", "optim", "metrics", "loggers"},
    "strategies": {"_checks", "nn"},
    "recipes": {
        *("_checks", "_progress", "functional", "nn", "optim", "metrics", "loggers"),
        *("callbacks", "strategies"),
    },
}


def _package_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every ``lightning_dyn`` import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "lightning_dyn":
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lightning_dyn":
                    found.append((node.lineno, alias.name, []))
    return found


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_downwards(layer: str) -> None:
    wrong = []
    for path in _modules(layer):
        for line, module, _ in _package_imports(path):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else "<top level>"
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_module() -> None:
    # A helper several modules share lives in a `_`-module under a public name.
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {private} from {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, module, names in _package_imports(path)
        for private in names
        if private.startswith("_")
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("layer", ["functional", "nn", "optim"])
def test_the_lower_layers_load_without_lightning_or_pyplot(layer: str) -> None:
    probe = (
        f"import sys, lightning_dyn.{layer}; "
        "print(sorted(m for m in ('lightning', 'lightning.pytorch', 'matplotlib.pyplot') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_top_level_namespace_is_the_plugins_and_the_subpackages() -> None:
    import lightning_dyn.callbacks
    import lightning_dyn.metrics
    import lightning_dyn.nn
    import lightning_dyn.optim
    import lightning_dyn.strategies

    plugins = {
        *lightning_dyn.callbacks.__all__,
        *lightning_dyn.metrics.__all__,
        *lightning_dyn.nn.__all__,
        *lightning_dyn.strategies.__all__,
        "LANTON",
        "param_groups",
    }
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    subpackages -= {"configs"}  # package data, not code
    subpackages |= {"loggers"}
    assert set(lightning_dyn.__all__) == plugins | subpackages | {"__version__"}
    namespace: dict = {}
    exec("from lightning_dyn import *", namespace)
    assert namespace["PerpGrad"] is lightning_dyn.callbacks.PerpGrad
    assert namespace["ExpertParallelStrategy"] is lightning_dyn.strategies.ExpertParallelStrategy
    assert "kmeans" not in namespace and "l1_norm" not in namespace
    with pytest.raises(AttributeError, match="no attribute 'kmeans'"):
        lightning_dyn.kmeans  # noqa: B018
