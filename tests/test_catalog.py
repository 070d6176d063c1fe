"""The explorer's catalog skips what it cannot read, says why, and still lists everything else
(issue 28 item 1)."""

from __future__ import annotations

import json
import shutil

import pytest

from prunelab.experiments.catalog import catalog


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One real ci pruning run (l1, a few steps)."""
    from prunelab.config import load_config
    from prunelab.workflows import run_pipeline

    d = tmp_path_factory.mktemp("cat") / "good"
    cfg = load_config("resnet20_l1", "ci", overrides={"train": {"max_steps": 2, "progress": False},
                                                      "stages": {"finetune": {"train": {"epochs": 1, "max_steps": 2}}}})
    run_pipeline(cfg, d, quiet=True)
    return d


DAMAGE = {
    "result-garbage": lambda d: (d / "result.json").write_text("{not json"),
    "result-a-list": lambda d: (d / "result.json").write_text("[1, 2]"),
    "structure-truncated": lambda d: (d / "structure.json").write_text((d / "structure.json").read_text()[:40]),
    "structure-wrong-shape": lambda d: (d / "structure.json").write_text(json.dumps({"alive": 3})),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_run_is_skipped_with_its_reason_and_the_others_listed(good_run, tmp_path, damage, capsys):
    root = tmp_path / "runs"
    shutil.copytree(good_run, root / "ok")
    shutil.copytree(good_run, root / "bad")
    DAMAGE[damage](root / "bad")
    cat = catalog(tmp_path / "no-results", runs=[root])
    assert str(root / "ok") in cat and str(root / "bad") not in cat
    assert [p for p, _ in cat.skipped] == [str(root / "bad")]
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["[1, 2]", "{garbage", json.dumps({"study": "ddnp", "runs": {"x": 3}}), "7"])
def test_a_results_file_of_the_wrong_shape_is_skipped(tmp_path, content):
    res = tmp_path / "results"
    res.mkdir()
    (res / "ddnp_cpu.json").write_text(content)
    cat = catalog(res, quiet=True)
    assert len(cat) == 0 and cat.skipped and cat.skipped[0][0].endswith("ddnp_cpu.json")


def test_the_committed_results_all_load():
    cat = catalog(quiet=True)
    assert cat.skipped == [] and len(cat) > 0
