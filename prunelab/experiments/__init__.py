"""Experiments that reproduce a supplement's figures: many runs, one small cached results file.

    prunelab experiment bar --scale cpu [--out runs/bar-cpu] [--resume] [--parts teacher,bar,random]
    prunelab experiment pfs --scale cpu

Every sub-run is an ordinary, resumable run directory under ``--out``; a finished sub-run is never
trained again. The aggregated results (no weights) go to ``results/<name>_<scale>.json`` in the
repository, which the notebooks read. Rerunning the same command regenerates them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "results"


def results_path(name: str, scale: str) -> Path:
    """Where the cached results of experiment ``name`` at ``scale`` live."""
    return RESULTS_DIR / f"{name}_{scale}.json"


def experiments() -> dict:
    import importlib

    out = {}
    for name in ("bar", "pfs"):
        mod = importlib.import_module(f".{name}_study", __name__)
        out[name] = mod.run
    return out


def run(name: str, scale: str, out=None, *, parts=None, quiet: bool = False, results=None) -> dict:
    exps = experiments()
    if name not in exps:
        raise UnknownNameError("experiment", name, exps)
    return exps[name](scale, out, parts=parts, quiet=quiet, results=results)
