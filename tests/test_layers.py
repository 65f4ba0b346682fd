"""The layers of DESIGN.md import nothing above them: data, models, losses, methods, engine; eval and cluster
beside the engine (they know backbones, never methods or the training loop); cli, demo, finetune, sweep and
transfer on top, composing them. Read from the sources' import statements (lazy imports inside functions too)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "selfsup"
TOP = {"cli", "demo", "finetune", "sweep", "transfer", "bench"}
FORBIDDEN = {
    "data": {"models", "losses", "methods", "engine", "eval", "cluster", "report", *TOP},
    "models": {"losses", "methods", "engine", "eval", "cluster", "report", *TOP},
    "losses": {"methods", "engine", "eval", "cluster", "report", *TOP},
    "methods": {"engine", "eval", "cluster", "report", *TOP},
    "engine": {"eval", "cluster", "report", *TOP},
    "eval": {"methods", "engine", "cluster", "report", *TOP},
    "cluster": {"methods", "engine", "report", *TOP},
}


def imported_layers(package: str) -> dict[str, set[str]]:
    """{file: the selfsup layers it imports} for every module of ``package`` (a folder or a .py file)."""
    files = sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [ROOT / f"{package}.py"]
    found = {}
    for f in files:
        names = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfsup."):
                names.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "selfsup":       # from selfsup import engine
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("selfsup.")}
        found[str(f.relative_to(ROOT.parent))] = names
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    wrong = {f: sorted(names & FORBIDDEN[layer]) for f, names in imported_layers(layer).items()
             if names & FORBIDDEN[layer]}
    assert not wrong, f"{layer} imports upward: {wrong}"
