"""Study runners: --collect aggregates finished sub-runs only and says what is missing."""

import json

import pytest

from prunelab.errors import ConfigError
from prunelab.experiments import run


def test_collect_trains_nothing_and_lists_missing_runs(tmp_path):
    res = run("pfs", "ci", tmp_path / "runs", quiet=True, results=tmp_path / "pfs.json", collect=True)
    assert not res["complete"] and res["structures"] == []
    assert "seed 0" in res["missing"] and any(m.startswith("sweep") for m in res["missing"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing trained
    assert json.loads((tmp_path / "pfs.json").read_text())["missing"] == res["missing"]


def test_collect_without_a_teacher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="teacher"):
        run("bar", "ci", tmp_path / "runs", quiet=True, results=tmp_path / "bar.json", collect=True)
    assert not (tmp_path / "bar.json").exists()


def test_collect_is_refused_for_studies_without_it(tmp_path):
    with pytest.raises(ConfigError, match="--collect"):
        run("quickstart", "ci", tmp_path, quiet=True, collect=True)


def test_unknown_part_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="no part 'sweep'. Did you mean 'sweeps'"):
        run("pfs", "ci", tmp_path / "runs", quiet=True, results=tmp_path / "pfs.json", parts=["sweep"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pfs.json").exists()


def test_a_partial_study_never_replaces_complete_results(tmp_path):
    complete = tmp_path / "pfs.json"
    complete.write_text(json.dumps({"study": "pfs", "complete": True, "marker": 1}))
    res = run("pfs", "ci", tmp_path / "runs", quiet=True, results=complete, collect=True, parts=["sweeps"])
    assert not res["complete"]
    assert json.loads(complete.read_text()) == {"study": "pfs", "complete": True, "marker": 1}  # untouched
    partial = json.loads((tmp_path / "pfs.partial.json").read_text())
    assert partial["partial"] and not partial["complete"] and partial["parts"] == ["sweeps"]
