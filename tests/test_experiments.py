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


def test_quickstart_collect_trains_nothing_and_lists_what_is_missing(tmp_path):
    res = run("quickstart", "ci", tmp_path / "runs", quiet=True, collect=True, results=tmp_path / "qs.json")
    assert not res["complete"] and "dense resnet20" in res["missing"] and "l1" not in res
    assert not (tmp_path / "runs" / "dense").exists()


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


@pytest.mark.parametrize("old_parts, old_missing, replaced", [
    (["teacher", "bar"], ["bar-v16"], False),        # old has more parts: kept
    (["teacher"], [], False),                         # same parts, old missing fewer: kept
    (["teacher"], ["teacher", "x"], True),            # same parts, old missing more: replaced
    (["sweeps"], [], True),                           # different parts, neither covers the other: replaced
])
def test_a_partial_study_never_replaces_a_partial_one_that_covers_more(tmp_path, old_parts, old_missing, replaced):
    from prunelab.experiments import write_results

    path = tmp_path / "bar.json"
    old = {"study": "bar", "complete": False, "parts": old_parts, "missing": old_missing, "marker": 1}
    path.write_text(json.dumps(old))
    written = write_results(path, {"study": "bar", "complete": False, "parts": ["teacher"], "missing": ["teacher"]},
                            say=lambda *a: None)
    assert (json.loads(path.read_text()).get("marker") is None) == replaced
    assert written == (path if replaced else tmp_path / "bar.partial.json")
