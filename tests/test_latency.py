"""Latency tables and latency budgets (no timed assertions: measurements are tiny or replaced by a
table built by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunelab import models
from prunelab.errors import ConfigError
from prunelab.pruning import latency as lat
from prunelab.pruning.budget import Budget, solve_budget


def _linear_table(spec, per_channel=1e-5, base=1e-3, step=1, fit="points"):
    """A hand-made table: each group costs per_channel x ceil(width / step) x step (steps of ``step``)."""
    gs = {}
    for n, g in lat.groups(spec).items():
        c = spec.tensor(n).channels
        widths = list(range(1, c + 1))
        gs[n] = {"signature": g["signature"], "widths": widths,
                 "seconds": [per_channel * step * int(np.ceil(w / step)) for w in widths]}
    full = base + sum(g["seconds"][-1] for g in gs.values())
    return lat.LatencyTable({"model": spec.model, "device": "test", "threads": 1}, gs, full, {"path": None}, fit=fit)


def test_width_grid():
    assert lat.width_grid(16) == list(range(1, 17))
    g = lat.width_grid(512)
    assert g[:64] == list(range(1, 65)) and 256 in g and g[-1] == 512 and all(b > a for a, b in zip(g, g[1:]))
    assert lat.width_grid(70)[-1] == 70


def test_groups_share_measurements_and_refuse_trunk_tensors():
    spec = models.describe(models.create("resnet56"))
    gs = lat.groups(spec)
    assert len(gs) == 27 and len({g["signature"] for g in gs.values()}) <= 6  # identical blocks share one
    with pytest.raises(ConfigError, match="read together with other tensors"):
        lat.groups(models.describe(models.create("resnet20", shortcut="B")), ["layer1.0.delta"])


def test_a_tiny_measured_table_predicts_the_full_network_and_interpolates(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path))
    kw = dict(batch=2, threads=1, repeats=1, block_ms=0.5, grid=lambda c: [1, c // 2, c], progress=False)
    table = lat.latency_table("resnet20", {}, **kw)
    assert table.predict({}) == pytest.approx(table.full_seconds)
    g = table.groups["layer3.0.mid"]
    assert g["widths"] == [1, 32, 64]
    mid = table.group_seconds("layer3.0.mid", 48, raw=True)
    assert mid == pytest.approx((g["seconds"][1] + g["seconds"][2]) / 2)
    a, b = lat.theil_sen(g["widths"], g["seconds"])
    assert table.group_seconds("layer3.0.mid", 48) == pytest.approx(max(0.0, a + 48 * b))
    assert table.key["batch"] == 2 and table.key["threads"] == 1 and table.key["channels_last"]
    # a second request with the same key reads the cached file
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: pytest.fail("measured again"))
    again = lat.latency_table("resnet20", {}, **kw)
    assert again.to_dict()["groups"] == json.loads(json.dumps(table.to_dict()))["groups"]
    # another key (batch) is another table
    with pytest.raises(pytest.fail.Exception):
        lat.latency_table("resnet20", {}, **{**kw, "batch": 3})


def test_latency_budget_meets_the_predicted_target():
    spec = models.describe(models.create("resnet20"))
    table = _linear_table(spec)
    rng = np.random.default_rng(0)
    scores = {t.name: rng.random(t.channels) for t in spec.select("mid")}
    s, rep = solve_budget(spec, scores, Budget("latency", 0.6), latency=table)
    assert rep["achieved"] <= rep["target"] * (1 + 1e-9)
    assert rep["target"] == pytest.approx(0.6 * table.full_seconds)
    assert (rep["target"] - rep["achieved"]) / rep["target"] < 0.01
    assert rep["achieved"] == pytest.approx(table.predict_structure(s))


def test_round_to_keeps_multiples_and_auto_lets_the_table_decide():
    spec = models.describe(models.create("resnet20"))
    rng = np.random.default_rng(1)
    scores = {t.name: rng.random(t.channels) for t in spec.select("mid")}
    stepped = _linear_table(spec, step=8)  # time only grows every 8 channels: multiples of 8 are free
    s8, rep8 = solve_budget(spec, scores, Budget("latency", 0.5, round_to=8), latency=stepped)
    assert all(n % 8 == 0 or n == spec.tensor(k).channels for k, n in s8.counts().items())
    assert rep8["achieved"] <= rep8["target"] * (1 + 1e-9)
    # without the channel-by-channel refinement, the stepped table makes a multiple of 4 or 8 the best
    sa, repa = solve_budget(spec, scores, Budget("latency", 0.5, round_to="auto"), latency=stepped, refine=False)
    assert repa["achieved"] <= repa["target"] * (1 + 1e-9)
    fitting = [t["channels_kept"] for t in repa["round_to_tried"].values() if t["fits"]]
    assert repa["round_to"]["auto"] >= 4 and repa["channels_kept"] == max(fitting)
    # the refinement fills the channels a step leaves free, so width 1 keeps at least as many
    _, rep_r = solve_budget(spec, scores, Budget("latency", 0.5, round_to="auto"), latency=stepped)
    tried = rep_r["round_to_tried"]
    assert tried["1"]["channels_kept"] >= tried["8"]["channels_kept"]
    smooth = _linear_table(spec, step=1)  # no steps: rounding only loses channels, auto keeps 1
    _, rep1 = solve_budget(spec, scores, Budget("latency", 0.5, round_to="auto"), latency=smooth)
    assert rep1["round_to"]["auto"] == 1


def test_latency_budget_parsing_and_bad_input():
    b = Budget.parse({"metric": "latency", "keep": 0.5, "batch": 128, "threads": 2, "round_to": "auto"})
    assert (b.batch, b.threads, b.round_to) == (128, 2, "auto")
    with pytest.raises(ConfigError, match="batch must be a whole number"):
        Budget.parse({"metric": "latency", "keep": 0.5, "batch": 0})
    with pytest.raises(ConfigError, match="device must be cpu"):
        Budget.parse({"metric": "latency", "keep": 0.5, "device": "tpu"})


def test_cli_latency_table_bad_input(capsys):
    from prunelab.cli import main

    assert main(["latency-table", "resnet21"]) == 2
    assert main(["latency-table", "resnet20", "--batch", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "resnet21" in err[0] and "--batch" in err[1]


def test_theil_sen_ignores_an_outlying_width():
    """One slow measurement (a busy moment of the machine) must not bend the prediction: the case of a
    full width measured at twice its neighbours' trend, which made the solver drop one channel to "save"
    half the latency."""
    w = np.arange(1, 17, dtype=float)
    t = 0.5 + 0.25 * w
    t[-1] *= 2.0
    t[3] *= 1.5
    a, b = lat.theil_sen(w, t)
    assert a == pytest.approx(0.5) and b == pytest.approx(0.25)
    table = lat.LatencyTable({}, {"g": {"signature": "s", "widths": w.tolist(), "seconds": t.tolist()}},
                             full_seconds=20.0)
    assert table.group_seconds("g", 16) == pytest.approx(4.5)  # the trend, not the outlier (8.5)
    assert table.group_seconds("g", 16, raw=True) == pytest.approx(9.0)
    assert table.predict({"g": 15}) == pytest.approx(20.0 - 0.25)
