"""The supplements' qualitative claims, checked on the committed cpu-scale results (real CIFAR-10).

These read results/<study>_cpu.json (produced by `prunelab experiment <study> --scale cpu`). A claim
that does not hold at cpu scale is marked as an expected failure carrying the numbers, never skipped
silently and never asserted the other way round.
"""

import json

import numpy as np
import pytest

from prunelab.analysis.structures import claims, summarize
from prunelab.experiments import results_path


def _load(name):
    p = results_path(name, "cpu")
    if not p.exists():
        pytest.fail(f"{p} is missing: run `prunelab experiment {name} --scale cpu` and commit the file")
    return json.loads(p.read_text())


@pytest.fixture(scope="module")
def bar():
    return _load("bar")


@pytest.fixture(scope="module")
def pfs():
    return _load("pfs")


def test_bar_results_are_cpu_scale_real_data(bar):
    assert bar["scale"] == "cpu" and bar["data_source"] in ("jpeg-archive", "official")
    assert bar["dense"]["volume"] == 274_432
    assert sorted(r["pf"] for r in bar["runs"]) == [2, 4, 8, 16]  # the paper's CIFAR-10 pruning factors
    assert bar["teacher"]["accuracy"] > 0.7


def _bar_claim(bar, start):
    from prunelab.analysis.bar import claims as bar_claims

    found = [c for c in bar_claims(bar) if c["claim"].startswith(start)]
    assert len(found) == 1, start
    return found[0]


def test_bar_meets_every_volume_budget(bar):
    c = _bar_claim(bar, "every BAR structure meets its volume budget")  # V recounted from each structure
    assert c["holds"], [s for s in c["structures"] if not s["met"]]
    assert {s["pf"] for s in c["structures"]} == {2, 4, 8, 16}


def test_bar_mixed_blocks_cost_less_than_regular(bar):
    c = _bar_claim(bar, "mixed blocks cost less than regular ones")
    assert c["holds"], (c["v_delta"], c["flop_delta"])


@pytest.mark.xfail(strict=True, reason="cpu scale (issue 13 protocol, one consistent regular block): the FLOP saving "
                   "of mixed over regular blocks is 22.0 / 26.6 / 26.6 / 32.1 % at PF 2 / 4 / 8 / 16: it grows from "
                   "PF 2 to 16 but not at every step (PF 4 -> 8: 26.63 -> 26.57 %), so the strict trend of the "
                   "published table does not hold")
def test_bar_mixed_saving_grows_with_pruning_factor(bar):
    c = _bar_claim(bar, "the FLOP saving of mixed over regular blocks grows")
    assert c["holds"], c["flop_saving"]


def test_bar_eliminates_residual_blocks_at_high_pruning_factors(bar):
    c = _bar_claim(bar, "residual blocks are eliminated")  # counted on each structure (empty mid or delta)
    assert c["holds"], c["eliminated_blocks"]


@pytest.mark.parametrize("pf", [4, 8])
def test_bar_is_best_at_v4_and_v8(bar, pf):
    """Issue 30: bar_best_at_v4 / bar_best_at_v8, BAR against every baseline row of the results at that
    factor (today Random with and without KD; WM, IB, MorphNet... as the study gains them)."""
    from prunelab.analysis.bar import claims as bar_claims

    c = next(c for c in bar_claims(bar) if c.get("id") == f"bar_best_at_v{pf}")
    assert c["baselines"] and c["holds"], c


def test_bar_loses_less_accuracy_than_random_from_pf2_to_pf16(bar):
    c = _bar_claim(bar, "BAR loses less accuracy")
    assert c["holds"], c


def _bar_vs_random(bar):
    from prunelab.analysis.bar import main_baseline

    acc = {r["pf"]: r["accuracy"] for r in bar["runs"]}
    rnd = {r["pf"]: r["accuracy"] for r in main_baseline(bar)}
    return {pf: (acc[pf], rnd[pf]) for pf in (4, 8)}


def test_bar_beats_random_pruning_at_factors_4_and_8(bar):
    for pf, (a_bar, a_rnd) in _bar_vs_random(bar).items():
        assert a_bar > a_rnd, f"PF {pf}: BAR {a_bar:.4f} vs random {a_rnd:.4f}"


def _learned_vs_pruned(bar):
    """Test accuracy of the gated network at the end of the pruning phase and right after hard pruning,
    per PF (the learned accuracy from the run record, or the last pruning-phase epoch's test accuracy in
    results written before that record existed)."""
    out = {}
    for r in bar["runs"]:
        learned = r.get("accuracy_learned")
        if learned is None:
            learned = [m for m in r["metrics"] if m.get("stage") == "learn"][-1]["test_acc"]
        out[r["pf"]] = (learned, r["accuracy_before_finetune"])
    return out


def test_bar_hard_pruning_keeps_what_the_pruning_phase_learned(bar):
    # the remaining gap is the removed dead branches' constants and the maps closed to meet the budget
    # (the first cpu protocol, kept maps x 1, lost 58.9 -> 23.7 % at PF 2 here)
    stages = _learned_vs_pruned(bar)
    assert sorted(stages) == [2, 4, 8, 16]
    for pf, (learned, pruned) in stages.items():
        assert pruned >= learned - 0.02, f"PF {pf}: {100 * learned:.1f}% -> {100 * pruned:.1f}%"


def _sensitivity_draws(bar):
    """Test accuracy of the random hyper-parameter draws (supp. Fig. 2 / Table 1) per PF; run 0 repeats
    the tuned BAR run and is not a draw."""
    draws = {}
    for r in bar["sensitivity"]:
        if r.get("run", 0) != 0:
            assert isinstance(r["hyperparameters"], dict), r["subrun"]  # the sampled values, recorded
            draws.setdefault(r["pf"], []).append(r["accuracy"])
    return draws


def test_bar_sensitivity_study_has_three_draws_at_pf_4_and_8(bar):
    draws = _sensitivity_draws(bar)
    assert {pf: len(a) for pf, a in draws.items()} == {4: 3, 8: 3}, draws
    for pf, acc in draws.items():  # real repeats: the draws differ (error bars from them are not zero)
        assert np.std(acc) > 0, (pf, acc)


def test_random_baseline_halves_volume_per_step(bar):
    from prunelab.analysis.bar import main_baseline

    rnd = main_baseline(bar)
    assert [round(r["v_factor"], 6) for r in rnd] == [2, 4, 8, 16]
    assert all(r["f_factor"] > r["v_factor"] for r in rnd)  # F grows about as V^2


# -- PFS (supplement 002: Figs. S1, S3-S5) -----------------------------------------------------------

def test_pfs_results_are_cpu_scale_real_data(pfs):
    assert pfs["scale"] == "cpu" and pfs["model"] == "resnet20" and pfs["complete"]
    assert len(pfs["seeds"]) >= 3 and pfs["epochs"] == [0, 1, 5, 10]
    assert len(pfs["structures"]) == len(pfs["seeds"]) * len(pfs["epochs"])
    for s in pfs["structures"]:  # every structure is the 50 % MACs pruning of the unexpanded ResNet-20
        # PFS keeps the longest prefix of the global gate ranking that fits (docs/decisions.md P3), so it may
        # undershoot by up to one channel's cost: 1.45 % of the budget for a stage-1 channel of ResNet-20
        assert 0.5 <= s["reduction"] < 0.5 + 0.0075, s
        assert all(1 <= w <= f for w, f in zip(s["widths"], pfs["full_widths"]))
        # gates learned until the save rule holds or for the documented cap, and the structure says which
        assert 1 <= s["gate_epochs"] <= pfs["settings"]["gate_epochs"] and s["gates_from"], s
    # pre-training converged: the final checkpoint (10 one-cycle epochs) is a trained network, well above
    # the early one
    for seed, acc in pfs["pretrain_acc"].items():
        assert acc["10"] > 0.8 and acc["1"] < acc["10"] - 0.1, (seed, acc)


PFS_CLAIMS = ("1_random_unlike_pretrained", "1b_random_unlike_every_pretrained", "2_random_more_diverse",
              "3_near_beats_distant")
# (claim, vectorisation): the numbers where a claim does not hold at cpu scale (3 seeds pooled, mean Pearson r).
# On raw channel counts every structure inherits the 16/32/64 stage widths, which makes all of them correlate;
# on keep ratios (width-free) claims 1, 1b and 2 hold, and 3 does not: the structures of pretrained
# checkpoints come from gates that stayed near 1 (density 0.90-1.00 after the 4-epoch cap, save rule never met)
PFS_XFAIL = {
    ("1_random_unlike_pretrained", "counts"):
        "cpu scale, counts: r(random, pretrained; same seed) 0.671 >= r(neighbouring checkpoints) 0.664",
    ("1b_random_unlike_every_pretrained", "counts"):
        "cpu scale, counts: r(random, pretrained; same seed) 0.671 >= r(every pretrained pair; same seed) 0.598",
    ("2_random_more_diverse", "counts"):
        "cpu scale, counts: r(random, random) 0.664 >= r(pretrained, pretrained; across seeds) 0.636",
    ("3_near_beats_distant", "ratio"):
        "cpu scale, keep ratios: r(neighbouring checkpoints) 0.526 <= r(checkpoint 1 vs 10) 0.736",
}


@pytest.mark.parametrize("claim,kind", [
    pytest.param(c, k, marks=pytest.mark.xfail(strict=True, reason=PFS_XFAIL[(c, k)])) if (c, k) in PFS_XFAIL
    else (c, k) for c in PFS_CLAIMS for k in ("counts", "ratio")])
def test_pfs_structure_claims(pfs, claim, kind):
    """Claims (1), (1b), (2), (3) of Fig. S1 on all seeds pooled, under both vectorisations (P7)."""
    c = claims(summarize(pfs, kind=kind))[claim]
    assert c["evaluated"] and c["holds"], c


def test_pfs_density_sweep_is_fig_s5(pfs):
    rows = pfs["sweeps"]["density"]
    assert sorted({r["density"] for r in rows}) == [0.3, 0.5, 0.7, 0.9]
    for d in (0.3, 0.5, 0.7, 0.9):
        runs = [r for r in rows if r["density"] == d]
        assert len(runs) == pfs["settings"]["runs"] >= 2 and len({r["run"] for r in runs}) == len(runs)
        assert all(r["ratio"] == 0.5 and 0.5 <= r["reduction"] < 0.5075 for r in runs)


PFS_SWEEP_XFAIL: dict = {}  # claim key -> the numbers where a sweep claim does not hold at cpu scale


def _pfs_sweep_claims(pfs):
    from prunelab.analysis.structures import density_claims, pruning_ratio_claims

    out = {"s5_not_sensitive": density_claims(pfs["sweeps"]["density"])[0]}
    out["s4_falls"], out["s4_no_collapse"] = pruning_ratio_claims(pfs["sweeps"]["pruning_ratio"],
                                                                  full_acc=pfs["full_acc"])
    return out


@pytest.mark.parametrize("key", [
    pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=PFS_SWEEP_XFAIL[k])) if k in PFS_SWEEP_XFAIL else k
    for k in ("s5_not_sensitive", "s4_falls", "s4_no_collapse")])
def test_pfs_sweep_claims(pfs, key):
    """Fig. S5: accuracy not very sensitive to r; Fig. S4: accuracy falls with R* without collapsing."""
    c = _pfs_sweep_claims(pfs)[key]
    assert c["holds"], c


# -- ManiDP (supplement 000) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def manidp():
    from prunelab import models

    study = _load("manidp")
    arrays = np.load(results_path("manidp", "cpu").with_suffix(".npz"))
    spec = models.describe(models.create(study["model"]))
    return study, arrays, spec


def _manidp_claim(manidp, claim_id: str) -> dict:
    from prunelab.analysis.manidp import claims as manidp_claims

    found = [c for c in manidp_claims(*manidp) if c["id"] == claim_id]
    assert len(found) == 1, claim_id
    return found[0]


def test_manidp_results_are_cpu_scale_real_data(manidp):
    study, arrays, spec = manidp
    assert study["scale"] == "cpu" and set(study["variants"]) == {"with_sim", "without_sim"}
    assert study["dense"]["test_acc"] > 0.85 and study["dense"]["epochs"] == 30  # the converged checkpoint
    for v in ("with_sim", "without_sim"):
        kept = arrays[f"{v}/test_kept"]
        assert kept.shape == (10000, len(study["layers"]))  # every test image, every masked layer
        assert (kept <= np.array(study["channels"])).all()


# stable claim ids of prunelab.analysis.manidp.claims that are tests (the others are reported)
MANIDP_CLAIMS = ("dynamic_beats_static", "dynamic_vs_l1", "masks_differ", "cost_tracks_difficulty", "lsim_aligns",
                 "lambda_by_complexity", "kept_ratio_at_target")
# claims that do not hold in the committed cpu results (issue 31's 30-epoch protocol from the 30-epoch
# ResNet-20: 2 seeds of ManiDP with L_sim and of the static mask, 1 of ManiDP without L_sim and of l1), with
# their numbers: at cpu scale the masks stay near-static and the static controls tie or win
MANIDP_XFAIL = {
    "dynamic_beats_static": "ManiDP 85.36 +- 1.06 % (n=2) vs static mask 85.23 +- 0.32 % (n=2): accuracy holds, but "
                            "mean MACs differ by 1.13 % (15.90 vs 15.72 M), just outside the 1 % match",
    "dynamic_vs_l1": "ManiDP 85.36 % (n=2) at 15.90 M vs l1 85.68 % (n=1) at 15.17 M mean MACs",
    "masks_differ": "mean pairwise Jaccard of kept sets 0.906 / 0.912 (seeds 0 / 1) >= 0.8",
    "cost_tracks_difficulty": "Spearman(per-image MACs, pretrained loss) 0.191 / 0.206 (seeds 0 / 1), mean 0.198 <= 0.2",
    "kept_ratio_at_target": "mean kept-channel ratio 0.471 against the nominal remain rate r* = 0.6",
}


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=MANIDP_XFAIL[k]))
                                 if k in MANIDP_XFAIL else k for k in MANIDP_CLAIMS])
def test_manidp_claims(manidp, key):
    c = _manidp_claim(manidp, key)
    if c["holds"] is None:  # the committed results do not have the sub-runs this claim compares yet
        pytest.skip(f"results/manidp_cpu.json lacks {c.get('missing')} (`prunelab experiment manidp --scale cpu`)")
    assert c["holds"], c


# -- DDNP (supplement 001) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddnp():
    from prunelab import models

    study = _load("ddnp")
    return study, models.describe(models.create(study["model"]))


def _ddnp_claim(ddnp, start: str) -> dict:
    from prunelab.analysis.ddnp import claims as ddnp_claims

    found = [c for c in ddnp_claims(*ddnp) if c["claim"].startswith(start)]
    assert len(found) == 1, start
    return found[0]


def test_ddnp_results_are_cpu_scale_real_data(ddnp):
    from prunelab.experiments.ddnp_study import SCALES, settings

    study, spec = ddnp
    assert study["scale"] == "cpu" and study["complete"] and not study["missing"]
    assert study["dense"]["test_acc"] > 0.85 and study["dense"]["epochs"] == 30  # the converged checkpoint
    # every setting the results were planned with (recorded in them) is complete; a setting the plan gained
    # since (e.g. full_two_term) is missing until the study is rerun, which staleness() reports
    assert set(study["settings"]) <= set(settings("cpu"))
    for name, st in study["settings"].items():
        runs = [r for r in study["runs"].values() if r["setting"] == name]
        assert sorted(r["seed"] for r in runs) == list(st["seeds"]), name
        for r in runs:
            assert len(r["widths"]) == len(study["layers"]) and all(
                1 <= w <= c for w, c in zip(r["widths"], study["channels"]))
            assert len(r["epochs"]) == 40 and r["epochs"][-1]["R_hard"] == pytest.approx(r["R_hard"], abs=1e-9)
            # the eval-mode masked network and the extracted one compute the same function
            assert r["extracted_test_acc"] == pytest.approx(r["masked_test_acc"], abs=1e-4)
            assert (r["finetuned_test_acc"] is not None) == st["finetune"]
    assert sorted((r["method"], r["seed"]) for r in study["compare"].values()) == [
        (m, s) for m in ("l1", "pfs") for s in SCALES["cpu"]["compare_seeds"]]


DDNP_CLAIMS = {
    "p": "the extracted network's remaining-FLOPs ratio",
    "lambda": "the smallest lambda",
    "rho_ft": "rho = 0 gives a lower test accuracy than rho = 1 (after fine-tuning)",
    "rho_ex": "rho = 0 gives a lower test accuracy than rho = 1 (of the extracted",
    "fix_s_ft": "Fix S is worse than the full method by more than the seed spread (after",
    "fix_s_ex": "Fix S is worse than the full method by more than the seed spread (of the",
    "fix_k_ft": "Fix k is worse than the full method by more than the seed spread (after",
    "fix_k_ex": "Fix k is worse than the full method by more than the seed spread (of the",
    "inputs": "learnable and fixed generator inputs",
}
# claims that do not hold at cpu scale, with their numbers (filled from results/ddnp_cpu.json)
DDNP_XFAIL = {
    "rho_ft": "not at equal budgets: the rho = 0 networks collapse to a recounted R of 0.089 +- 0.042 against "
              "p = 0.5 (rho = 1: 0.496 +- 0.005), so their 60.57 % vs 84.59 % after fine-tuning compares "
              "different budgets (n = 3 each)",
    "rho_ex": "not at equal budgets: R 0.089 +- 0.042 (rho = 0) vs 0.496 +- 0.005 (rho = 1) against p = 0.5; "
              "extracted 10.77 % vs 67.60 % (n = 3 each)",
    "fix_s_ft": "after 2 fine-tuning epochs Fix S and the full method tie: 84.52 +- 0.07 % vs "
                "84.59 +- 0.34 % (n = 3 each), a gap of 0.08 pp inside the seed spread (0.34 pp); before fine-tuning "
                "Fix S is far worse (27.14 % vs 67.60 %)",
}


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=DDNP_XFAIL[k]))
                                 if k in DDNP_XFAIL else k for k in DDNP_CLAIMS])
def test_ddnp_claims(ddnp, key):
    c = _ddnp_claim(ddnp, DDNP_CLAIMS[key])
    assert c["holds"], c


def test_ddnp_vs_l1_at_an_equal_budget_after_a_long_fine_tune(ddnp):
    """Issue 29 item 3: DDNP against l1 at 50 % MACs after the rank part's 8 fine-tuning epochs, paired over
    seeds, recomputed from the per-run records (analysis.ddnp.equal_budget). The rank part may be committed
    in the results file or, run on its own with --parts dense,rank, in its .partial.json sibling."""
    from prunelab.analysis.ddnp import equal_budget_claim
    from prunelab.experiments import results_with_part

    study, spec = ddnp
    c = equal_budget_claim(results_with_part(study, "ddnp", "cpu", "rank"), spec)
    if c is None:
        pytest.skip("the committed ddnp results hold no rank part: run `prunelab experiment ddnp --scale cpu "
                    "--parts dense,rank`")
    assert c["holds"], c
