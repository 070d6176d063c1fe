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
