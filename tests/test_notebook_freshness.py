"""Committed notebooks cannot drift from the results they draw (issue 29, item 1).

``tools/build_notebooks.py`` records in each executed notebook's metadata (``metadata.prunelab``) the
sha256 of every results file the kernel read (:func:`prunelab.experiments.results_read`: study results
through ``load_results``, the explorer's catalog, other files through ``load_results_file``). Here each
committed notebook's record is compared with the files in the tree: a results file that changed after
the notebook was executed fails, naming the notebook, the file and the command that re-executes it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from prunelab.experiments import _file_sha256

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# a notebook whose source reads the committed results (a study's, or every one through the catalog)
READS_RESULTS = re.compile(r"load_results\(|load_results_file\(|catalog\(RESULTS_DIR")


def _rebuild(nb: Path) -> str:
    return f"python tools/build_notebooks.py {nb.stem} --scale cpu"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_committed_notebook_was_executed_on_the_results_now_in_the_tree(nb):
    meta = json.loads(nb.read_text()).get("metadata", {}).get("prunelab")
    assert meta is not None, (f"{nb.relative_to(REPO)} records no results fingerprints (built before they were "
                              f"recorded): re-execute it with `{_rebuild(nb)}`")
    read = {p: h for p, h in meta["results_read"].items() if not Path(p).is_absolute()}
    source = (REPO / "notebooks" / "src" / f"{nb.stem}.py").read_text()
    if READS_RESULTS.search(source) and meta["scale"] == "cpu":
        assert read, f"{nb.relative_to(REPO)} reads results but recorded none: re-execute it with `{_rebuild(nb)}`"
    stale = []
    for path, recorded in read.items():
        f = REPO / path
        now = _file_sha256(f) if f.exists() else "missing"
        if now != recorded:
            stale.append(f"{path} (recorded {recorded[:12]}, now {now[:12]})")
    assert not stale, (f"{nb.relative_to(REPO)} was executed on other results than the tree holds: "
                       f"{'; '.join(stale)}; re-execute it with `{meta.get('rebuild') or _rebuild(nb)}`")


def test_the_check_fails_on_a_changed_results_file(tmp_path, monkeypatch):
    """The check can fail: a notebook record whose fingerprint differs from the file is reported."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "x_cpu.json").write_text('{"a": 1}')
    (tmp_path / "notebooks" / "src").mkdir(parents=True)
    (tmp_path / "notebooks" / "src" / "x.py").write_text('S = load_results("x", SCALE)\n')
    nb = tmp_path / "notebooks" / "x.ipynb"
    record = {"scale": "cpu", "results_read": {"results/x_cpu.json": _file_sha256(results / "x_cpu.json")}}
    nb.write_text(json.dumps({"metadata": {"prunelab": record}, "cells": []}))
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    test_a_committed_notebook_was_executed_on_the_results_now_in_the_tree(nb)
    (results / "x_cpu.json").write_text('{"a": 2}')
    with pytest.raises(AssertionError, match=r"x\.ipynb was executed on other results.*results/x_cpu\.json.*"
                                             r"build_notebooks\.py x --scale cpu"):
        test_a_committed_notebook_was_executed_on_the_results_now_in_the_tree(nb)


def test_the_readme_results_table_is_the_one_the_results_files_give():
    """The README's results table is generated from results/*_cpu.json (tools/results_table.py): a results
    file that changed without the table, or a hand edit of the table, fails here."""
    import subprocess

    r = subprocess.run([sys.executable, str(REPO / "tools" / "results_table.py"), "--check"], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr.strip()
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- results-table: end -->")[0].rsplit("do not edit by hand -->", 1)[1]
    assert table.count("\n| ") >= 10, "the generated results table has almost no rows"
