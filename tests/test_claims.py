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
    assert bar["dense"]["volume"] == 274_432 and len(bar["runs"]) == 4
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
