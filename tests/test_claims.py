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
    assert sorted(r["pf"] for r in bar["runs"]) == [2, 4, 8, 16]  # every budget of Table S1's ResNet rows
    assert bar["teacher"]["accuracy"] > 0.7


def test_bar_meets_every_volume_budget(bar):
    for r in bar["runs"]:
        assert r["budget_met"], r["pf"]
        assert r["v_factor"] >= r["pf"] * (1 - 1e-9), (r["pf"], r["v_factor"])


def test_bar_mixed_blocks_cost_less_than_regular(bar):
    for r in bar["runs"]:
        rm = r["regular_vs_mixed"]
        assert rm["v_mixed"] <= rm["v_regular"] and rm["flop_mixed"] <= rm["flop_regular"]
        if r["pf"] >= 4:
            assert rm["v_mixed"] < rm["v_regular"] and rm["flop_mixed"] < rm["flop_regular"], r["pf"]


def test_random_baseline_halves_volume_per_step(bar):
    rnd = sorted((r for r in bar["baselines"] if r["method"] == "Random"), key=lambda r: r["pf"])
    assert [round(r["v_factor"], 6) for r in rnd] == [2, 4, 8, 16]
    assert all(r["f_factor"] > r["v_factor"] for r in rnd)  # F grows about as V^2


def _bar_vs_random(bar):
    acc = {r["pf"]: r["accuracy"] for r in bar["runs"]}
    rnd = {r["pf"]: r["accuracy"] for r in bar["baselines"] if r["method"] == "Random"}
    return {pf: (acc[pf], rnd[pf]) for pf in (4, 8)}


def test_bar_beats_random_pruning_at_factors_4_and_8(bar):
    for pf, (a_bar, a_rnd) in _bar_vs_random(bar).items():
        assert a_bar > a_rnd, f"PF {pf}: BAR {a_bar:.4f} vs random {a_rnd:.4f}"


# -- PFS (supplement 002, Fig. S1/S2) ------------------------------------------------------------------

def test_pfs_results_are_cpu_scale_real_data(pfs):
    assert pfs["scale"] == "cpu" and pfs["model"] == "resnet20"
    assert len(pfs["seeds"]) >= 3 and 0 in pfs["epochs"]
    assert len(pfs["structures"]) == len(pfs["seeds"]) * len(pfs["epochs"])
    for s in pfs["structures"]:  # every structure is the 50 % MACs pruning of the unexpanded ResNet-20
        # PFS keeps the longest prefix of the global gate ranking that fits (docs/decisions.md P3), so it may
        # undershoot by up to one channel's cost: 1.45 % of the budget for a stage-1 channel of ResNet-20
        assert 0.5 <= s["reduction"] < 0.5 + 0.0075, s
        assert all(1 <= w <= f for w, f in zip(s["widths"], pfs["full_widths"]))
    # pre-training really trained: the last checkpoint is far above chance on the test set
    last = str(max(pfs["epochs"]))
    assert all(acc[last] > 0.6 for acc in pfs["pretrain_acc"].values())


@pytest.mark.parametrize("kind", ["counts", "ratio"])
def test_pfs_random_structures_unlike_pretrained_ones(pfs, kind):
    c = claims(summarize(pfs, kind=kind))["1_random_unlike_pretrained"]
    assert c["evaluated"] and c["holds"], c


@pytest.mark.parametrize("kind", [
    # On raw channel counts every structure inherits the 16/32/64 layer widths, which makes all of them
    # correlate strongly (random vs random r = 0.863 > pretrained vs pretrained 0.620 at cpu scale): the
    # claim does not hold on counts here. On keep ratios (width-free) it holds (0.083 < 0.788).
    pytest.param("counts", marks=pytest.mark.xfail(strict=True, reason="cpu scale: r(random, random) = 0.863 "
                                                   "> r(pretrained, pretrained) = 0.620 on raw counts")),
    "ratio"])
def test_pfs_random_structures_more_diverse_across_seeds(pfs, kind):
    c = claims(summarize(pfs, kind=kind))["2_random_more_diverse"]
    assert c["evaluated"] and c["holds"], c
