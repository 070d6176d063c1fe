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
    from prunelab.experiments.ddnp_study import RANK

    expected = (1 + sum(len(st["seeds"]) for st in settings(scale).values()) + 2 * len(SCALES[scale]["compare_seeds"])
                + len(RANK) * len(SCALES[scale]["rank_seeds"]))
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
    names = [st.sub.name for st in _configs("cpu") if st.sub.name.rsplit("-s", 1)[0] not in added
             and not (st.sub.name.startswith("rank-") and "rank" not in committed["parts"])]
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


def test_the_rank_part_runs_every_method_from_the_dense_checkpoint_and_aggregates_curves(tmp_path):
    """Issue 29 item 3: the ranking comparison's six methods run at ci from the one dense checkpoint, at the
    same budget and fine-tuning schedule, and the aggregate keeps each run's fine-tuning curve."""
    from prunelab import models
    from prunelab.analysis.ddnp import equal_budget
    from prunelab.experiments.ddnp_study import RANK

    res = R.Runner("ddnp", "ci", tmp_path / "runs", results=tmp_path / "d.json", parts=["rank"], quiet=True).run()
    assert not res["missing"] and not res["failed"], res.get("why_missing")
    assert sorted(res["rank"]) == sorted(f"{m}/s0" for m, _, _ in RANK)
    for row in res["rank"].values():
        assert len(row["finetune_curve"]) == SCALES["ci"]["rank_finetune_epochs"]
        if row["method"] != "ddnp":  # a 3-epoch ci search does not reach p (mechanics only)
            assert abs(row["macs"] / res["dense_macs"] - 0.5) < 0.05, row
    eb = equal_budget(res, models.describe(models.create("resnet20")))
    assert {r["method"] for r in eb["table"]} == {m for m, _, _ in RANK} and eb["seeds"] == [0]
    assert len(eb["gap_curve_mean"]) == SCALES["ci"]["rank_finetune_epochs"]
    # every run records the weights it started from: the dense checkpoint's, one fingerprint for all
    assert res["dense"]["weights_sha256"] and eb["checkpoints"] == [res["dense"]["weights_sha256"]]
    assert eb["runs_without_checkpoint_fingerprint"] == 0


def test_equal_budget_pairs_seeds_and_the_claim_can_fail():
    """The paired comparison on synthetic rows: the gap curve is per epoch over paired seeds, the t-test's
    p is small for a consistent gap, and the claim fails when the gap reverses."""
    from prunelab import models
    from prunelab.analysis.ddnp import claims, equal_budget

    spec = models.describe(models.create("resnet20"))
    dense = float(__import__("prunelab.counting", fromlist=["count"]).count(spec).macs)

    def row(method, seed, final, curve):
        return {"method": method, "seed": seed, "finetuned_test_acc": final, "pruned_test_acc": 0.3,
                "macs": 0.5 * dense, "widths": [8] * 9, "finetune_curve": curve}

    study = {"p": 0.5, "settings": {}, "runs": {}, "rank": {}}
    for s, (a, b) in enumerate([(0.86, 0.85), (0.865, 0.852), (0.862, 0.851)]):
        study["rank"][f"ddnp/s{s}"] = row("ddnp", s, a, [a - 0.02, a - 0.01, a - 0.005, a])
        study["rank"][f"l1/s{s}"] = row("l1", s, b, [b - 0.01, b - 0.008, b - 0.004, b])
    eb = equal_budget(study, spec)
    assert eb["seeds"] == [0, 1, 2] and len(eb["gap_curve_mean"]) == 4
    assert abs(eb["final_gap"]["mean"] - (0.010 + 0.013 + 0.011) / 3) < 1e-9 and eb["p_paired_t"] < 0.05
    c = next(c for c in claims(study, spec) if c.get("id") == "ddnp_vs_l1_equal_budget")
    assert c["holds"], c
    for s in range(3):  # l1 wins on every seed: the claim fails
        study["rank"][f"l1/s{s}"]["finetuned_test_acc"] += 0.03
        study["rank"][f"l1/s{s}"]["finetune_curve"] = [v + 0.03 for v in study["rank"][f"l1/s{s}"]["finetune_curve"]]
    c = next(c for c in claims(study, spec) if c.get("id") == "ddnp_vs_l1_equal_budget")
    assert not c["holds"], c


def test_the_equal_budget_claim_fails_across_two_checkpoints():
    """Runs that started from two different trainings of the checkpoint (two weights fingerprints, e.g.
    sessions that each trained it again) do not make a same-checkpoint comparison, however large the gap."""
    from prunelab import models
    from prunelab.analysis.ddnp import equal_budget_claim
    from prunelab.counting import count

    spec = models.describe(models.create("resnet20"))
    dense = float(count(spec).macs)
    study = {"rank": {}}
    for s in range(3):
        for m, acc, sha in (("ddnp", 0.87 + 0.001 * s, "a" * 64), ("l1", 0.85, "a" * 64 if s < 2 else "b" * 64)):
            study["rank"][f"{m}/s{s}"] = {"method": m, "seed": s, "finetuned_test_acc": acc, "pruned_test_acc": 0.3,
                                          "macs": 0.5 * dense, "widths": [8] * 9, "finetune_curve": [acc - 0.01, acc],
                                          "init_weights_sha256": sha}
    c = equal_budget_claim(study, spec)
    assert c["checkpoints"] == 2 and not c["same_checkpoint"] and not c["holds"], c
    study["rank"]["l1/s2"]["init_weights_sha256"] = "a" * 64
    c = equal_budget_claim(study, spec)
    assert c["same_checkpoint"] and c["holds"], c
