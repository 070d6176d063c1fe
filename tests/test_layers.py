"""The package's layers: a lower layer never imports a higher one (checked on the source, every
import statement, module level or inside functions).

config -> data -> model + method -> trainer -> result -> analysis -> plots -> notebook. In particular
``prunelab/pruning`` and ``prunelab/analysis`` import nothing from ``train``, ``methods``,
``workflows`` or ``experiments`` (and ``pruning`` nothing from ``config``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "prunelab"

# rank of each top-level module or subpackage; an import may only go to an equal or lower rank
RANK = {
    "errors": 0, "utils": 0, "runfiles": 0, "hooks": 0, "published": 0, "plugins": 0,
    "config": 1, "data": 1, "models": 1,
    "counting": 2,
    "pruning": 3,
    "analysis": 4,
    "train": 5,
    "methods": 6,
    "workflows": 7,
    "viz": 8, "experiments": 8,
    "demo": 9, "cli": 9, "__init__": 9, "__main__": 9,
}
FORBIDDEN = {
    "pruning": {"train", "methods", "config", "experiments", "workflows"},
    "analysis": {"train", "methods", "workflows", "experiments"},
}


def _imports(path: Path):
    """(line, absolute prunelab module) for every import in ``path``."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("prunelab"):
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("prunelab"):
                if mod == "prunelab":  # from prunelab import methods, models (or an attribute: __version__)
                    for a in node.names:
                        if (PKG / a.name).is_dir() or (PKG / f"{a.name}.py").is_file():
                            yield node.lineno, f"prunelab.{a.name}"
                else:
                    yield node.lineno, mod


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


FILES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PKG)) for p in FILES])
def test_no_import_goes_up_a_layer(path):
    src = _layer("prunelab." + ".".join(path.relative_to(PKG).with_suffix("").parts))
    assert src in RANK, f"{src} has no layer in tests/test_layers.py::RANK"
    bad = []
    for line, mod in _imports(path):
        dst = _layer(mod)
        assert dst in RANK, f"{mod} has no layer in RANK"
        if dst in FORBIDDEN.get(src, ()) or (dst != src and RANK[dst] > RANK[src]):
            bad.append(f"{path.relative_to(PKG)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The check would catch a violation hidden in a function body."""
    f = PKG / "pruning" / "compact.py"
    assert any(m == "prunelab.runfiles" for _, m in _imports(f))  # load_compact imports it inside the function
