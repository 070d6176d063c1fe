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


def _earlier_file(tmp_path, **teacher):
    from prunelab.experiments import provenance

    row = {"subrun": "bar-v2", "config_sha256": "c" * 64, "pf": 2, "accuracy": 0.5}
    res = {"study": "bar", "scale": "ci", "commit": "abc1234", "teacher": {"weights_sha256": "t" * 64, **teacher},
           "runs": [row], "baselines": [], "sensitivity": [{**row, "run": 0}], **provenance("bar", "ci")}
    path = tmp_path / "bar.json"
    path.write_text(json.dumps(res))
    return path


@pytest.mark.parametrize("teacher_sha, config_sha, reused", [
    ("t" * 64, "c" * 64, True),  # same teacher weights, config and code: the earlier row stands in
    ("u" * 64, "c" * 64, False),  # another teacher
    ("t" * 64, "d" * 64, False),  # another config
])
def test_earlier_rows_are_reused_only_for_the_same_teacher_and_config(tmp_path, teacher_sha, config_sha, reused):
    from prunelab.experiments.bar_study import EarlierRows
    from prunelab.workflows import SubRuns

    earlier = EarlierRows(_earlier_file(tmp_path), "ci", teacher_sha, say=lambda *a: None)
    rows = earlier.get(SubRuns(tmp_path / "runs", quiet=True), "bar-v2", config_sha)
    assert (rows is not None) == reused
    if reused:
        assert rows[0]["accuracy"] == 0.5 and rows[0]["made_at_commit"] == "abc1234" and earlier.used == ["bar-v2"]


def test_earlier_rows_of_other_study_code_are_not_reused(tmp_path):
    from prunelab.experiments.bar_study import EarlierRows
    from prunelab.workflows import SubRuns

    path = _earlier_file(tmp_path)
    res = json.loads(path.read_text())
    path.write_text(json.dumps({**res, "code_hash": "0" * 64}))
    said = []
    earlier = EarlierRows(path, "ci", "t" * 64, say=said.append)
    assert earlier.get(SubRuns(tmp_path / "runs", quiet=True), "bar-v2", "c" * 64) is None
    assert "other study code" in said[0]


def test_a_finished_local_subrun_wins_over_earlier_rows(tmp_path):
    from prunelab.experiments.bar_study import EarlierRows
    from prunelab.workflows import SubRuns

    (tmp_path / "runs" / "bar-v2").mkdir(parents=True)
    (tmp_path / "runs" / "bar-v2" / "result.json").write_text("{}")
    earlier = EarlierRows(_earlier_file(tmp_path), "ci", "t" * 64, say=lambda *a: None)
    assert earlier.get(SubRuns(tmp_path / "runs", quiet=True), "bar-v2", "c" * 64) is None


def test_a_study_on_a_fresh_machine_reuses_the_committed_rows(tmp_path):
    """The session-loss case: runs/ is gone, the results file is not. The teacher is retrained (the
    same weights: training is deterministic), and the BAR sub-runs are taken from the file, not trained."""
    first = run("bar", "ci", tmp_path / "runs1", quiet=True, results=tmp_path / "bar.json", parts=["teacher", "bar"])
    again = run("bar", "ci", tmp_path / "runs2", quiet=True, results=tmp_path / "bar.json", parts=["teacher", "bar"])
    assert again["teacher"]["weights_sha256"] == first["teacher"]["weights_sha256"]
    assert sorted(again["reused_subruns"]) == sorted(r["subrun"] for r in first["runs"]) and first["runs"]
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in first["runs"]]
    assert not any(p.name.startswith("bar-v") for p in (tmp_path / "runs2").iterdir())  # nothing trained again
