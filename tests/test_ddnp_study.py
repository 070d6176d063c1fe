"""The DDNP study on the study runner (prunelab/experiments/ddnp_study.py): its plan names the sub-runs
the committed results were made from, in the same order, and every config builds at every scale
(no training here: the ci-scale numbers are compared with the old loop's by hand, see the commit)."""

from __future__ import annotations

import json

import pytest

from prunelab.experiments import RESULTS_DIR
from prunelab.experiments import runner as R
from prunelab.experiments.ddnp_study import PARTS, SCALES, settings


def _configs(scale, parts=None):
    return R.Runner("ddnp", scale, f"/nonexistent/ddnp-{scale}", results="/nonexistent/ddnp.json", quiet=True,
                    parts=parts).configs()


@pytest.mark.parametrize("scale", ["ci", "cpu", "paper"])
def test_every_config_builds_and_starts_from_the_dense_checkpoint(scale):
    states = _configs(scale)
    assert states[0].sub.name == "dense" and all(st.config is not None for st in states)
    expected = 1 + sum(len(st["seeds"]) for st in settings(scale).values()) + 2 * len(SCALES[scale]["compare_seeds"])
    assert len(states) == expected
    for st in states[1:]:
        assert st.sub.needs == ("dense",) and st.sub.kind == "pipeline"
        assert st.config.stages["pretrain"]["init_from"] == f"/nonexistent/ddnp-{scale}/dense/model.pt"
        assert st.config.model.name == SCALES[scale]["model"]


def test_plan_names_the_subruns_of_the_committed_results_in_their_order():
    path = RESULTS_DIR / "ddnp_cpu.json"
    if not path.exists():
        pytest.skip("no committed cpu results")
    committed = json.loads(path.read_text())
    # the settings added to the plan since the results were made (new sub-runs, not yet run) aside, the
    # plan names the committed sub-runs in their order
    added = set(settings("cpu")) - set(committed["settings"])
    names = [st.sub.name for st in _configs("cpu") if st.sub.name.rsplit("-s", 1)[0] not in added]
    runs = [k.replace("/s", "-s") for k in committed["runs"]]
    compare = ["compare-" + k.replace("/s", "-s") for k in committed["compare"]]
    assert names == ["dense"] + runs + compare
    assert added <= {"full_two_term"}, added  # a new setting is named here when it is added


def test_parts_select_their_settings_and_always_keep_the_dense_run():
    names = [st.sub.name for st in _configs("ci", ["rho"])]
    assert names == ["dense", "full-s0", "rho=0-s0", "rho=5-s0"]
    names = [st.sub.name for st in _configs("ci", ["compare"])]
    assert names == ["dense", "compare-l1-s0", "compare-pfs-s0"]
    assert set(R.get_study("ddnp").parts) == set(PARTS)


def test_finished_searches_are_aggregated_when_the_dense_record_is_missing(tmp_path):
    """Issue 28: a damaged or missing dense record used to hide every finished search and comparison
    (they were aggregated only inside ``if dense is not None``)."""
    from prunelab.experiments.ddnp_study import DDNPStudy, _layers

    spec, layers = _layers("ci")
    widths = {n: max(1, spec.tensor(n).channels // 2) for n in layers}
    result = {"dense_test_acc": 0.5, "pruned_test_acc_before_finetune": 0.3, "final_test_acc": 0.4,
              "budget_report": {"p": 0.5, "rule": "top-k"}}
    search = {"result": result, "widths": widths, "stages_done": ["learn", "finetune"], "metrics": [],
              "search_log": []}
    compare = {"result": result, "widths": widths}
    out = DDNPStudy().aggregate("ci", PARTS, {"full-s0": search, "compare-l1-s0": compare}, tmp_path)
    assert "dense" not in out
    assert set(out["runs"]) == {"full/s0"} and out["runs"]["full/s0"]["finetuned_test_acc"] == 0.4
    assert set(out["compare"]) == {"l1/s0"} and out["p"] == 0.5
