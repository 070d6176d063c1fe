"""Build notebooks/*.ipynb from their percent-format sources in notebooks/src/*.py and execute them.

    python tools/build_notebooks.py [NAME ...] [--scale cpu] [--no-execute]

Cells are separated by ``# %%`` lines; ``# %% [markdown]`` starts a markdown cell whose lines drop
their leading ``# ``; ``# %% tags=["parameters"]`` tags a cell. The notebook is executed in the
repository root's ``notebooks/`` folder with ``PRUNELAB_SCALE`` set, so it is committed *with* its
outputs (figures visible when opened). nbval later re-runs it at ci scale.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"
READ_MARK = "prunelab-results-read: "
HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?P<rest>.*)$")


def parse(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell(text)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in path.read_text().splitlines():
        m = HEADER.match(line)
        if m:
            flush()
            kind = "markdown" if m.group("md") else "code"
            t = re.search(r"tags=(\[.*?\])", m.group("rest"))
            tags = json.loads(t.group(1)) if t else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    nb.cells = cells
    return nb


def build(name: str, scale: str, execute: bool, timeout: int) -> Path:
    nb = parse(SRC / f"{name}.py")
    target = OUT / f"{name}.ipynb"
    if execute:
        os.environ["PRUNELAB_SCALE"] = scale
        t = time.time()
        # a last cell, removed after the run, reports the results files the kernel read and their sha256
        # (prunelab.experiments.results_read); they go into the notebook's metadata, where
        # tests/test_notebook_freshness.py compares them with the files in the tree
        nb.cells.append(nbformat.v4.new_code_cell(
            "import json as _json, prunelab.experiments as _experiments\n"
            f"print({READ_MARK!r} + _json.dumps(_experiments.results_read()))"))
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(OUT)}}).execute()
        probe = nb.cells.pop()
        text = "".join(o.get("text", "") for o in probe.get("outputs", []) if o.get("output_type") == "stream")
        read = json.loads(text.split(READ_MARK, 1)[1].splitlines()[0])
        nb.metadata["prunelab"] = {"scale": os.environ["PRUNELAB_SCALE"], "results_read": read,
                                   "rebuild": f"python tools/build_notebooks.py {name} --scale {scale}"}
        print(f"{name}: executed at {scale} scale in {time.time() - t:.0f} s; results read: {', '.join(read) or 'none'}")
    for cell in nb.cells:  # stable files: no per-run execution timestamps
        cell.metadata.pop("execution", None)
    nbformat.write(nb, target)
    return target


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all sources)")
    ap.add_argument("--scale", default="auto", help="PRUNELAB_SCALE for the execution (default auto)")
    ap.add_argument("--no-execute", action="store_true")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in SRC.glob("*.py"))
    for n in names:
        print(build(n, args.scale, not args.no_execute, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
