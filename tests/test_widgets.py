"""Widgets driven as a browser would (observers fire synchronously in plain pytest)."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prunelab import models
from prunelab.analysis.bar import active_neurons, section_totals
from prunelab.pruning.structure import Structure
from prunelab.viz.widgets import (ActiveNeuronsExplorer, BarrierExplorer, BudgetExplorer, ConcreteExplorer,
                                  StructureExplorer, TransitionExplorer)


def teardown_function():
    plt.close("all")


def test_budget_explorer_recomputes_on_slider_and_mode():
    spec = models.describe(models.create("resnet20"))
    rng = np.random.default_rng(0)
    e = BudgetExplorer(spec, {t.name: rng.random(t.channels) for t in spec.select("mid")}, keep=0.5)
    first = e.report["achieved"]
    e.slider.value = 0.3
    assert e.report["achieved"] < first and e.report["achieved"] <= e.report["target"]
    assert f"{e.report['achieved'] / 1e6:.2f} M" in e.label.value
    e.mode_toggle.value = "uniform"
    assert e.report["mode"] == "uniform"


def test_concrete_and_transition_explorers():
    c = ConcreteExplorer()
    assert "P(z=0) = 0.1682" in c.label.value
    c.beta.value = 0.5
    assert "P(z=0) = 0.2317" in c.label.value
    t = TransitionExplorer()
    t.d.value = 1e-2
    assert "T(0.25) = 0.2500" in t.label.value  # d -> 0: linear


def _curve(ax):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "f(V; a, b)"]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def test_barrier_explorer_follows_margin_bound_and_schedule():
    from prunelab.methods.bar import barrier, budget_bound

    e = BarrierExplorer(margin=0.1, b=1.5, v=1.2)
    x, y = _curve(e.ax)
    np.testing.assert_allclose(y, barrier(x, 0.9, 1.5), rtol=1e-12)
    assert e.value == barrier(1.2, 0.9, 1.5) and f"= {e.value:.4g}" in e.label.value  # x = 0.5: f = 0.5
    assert "f(V = 1.200 B) = 0.5 " in e.label.value
    e.margin.value = 0.01  # a moves to 0.99 B: the curve is redrawn
    x2, y2 = _curve(e.ax)
    np.testing.assert_allclose(y2, barrier(x2, 0.99, 1.5), rtol=1e-12)
    assert x2.min() > 0.99 > x.min()
    e.b.value = 1.3
    assert np.isclose(e.value, barrier(1.2, 0.99, 1.3)) and "b = 1.3000 B" in e.label.value
    e.mode.value = "t"  # the bound follows b(t) from b0 = 2.02 B
    assert e.b.disabled and not e.t.disabled and "b(t = 0) = 2.0200 B" in e.label.value
    e.t.value = 0.5
    b = float(budget_bound(0.5, 2.02, 1.0, 10.0))
    assert np.isclose(e.bound(), b) and f"b(t = 0.5) = {b:.4f} B" in e.label.value
    x3, y3 = _curve(e.ax)
    np.testing.assert_allclose(y3, barrier(x3, 0.99, b), rtol=1e-12)
    e.v.value = 0.5
    assert e.value == 0.0 and "sparsity loss off" in e.label.value


def test_active_neurons_explorer_reports_eliminated_blocks():
    spec = models.describe(models.create("bar_wrn", k=1))
    full = {t.name: np.arange(t.channels) for t in spec.tensors}
    s = Structure._make(spec, {**full, "layer2.1.mid": [], "layer2.1.delta": []})
    sections = {"full": section_totals(active_neurons(spec)), "8x": section_totals(active_neurons(spec, s))}
    e = ActiveNeuronsExplorer(sections, "ci")
    assert "stage 2 block 1" in e.label.value


def test_structure_explorer_compares_two_structures():
    study = {"scale": "ci", "seeds": [0, 1], "epochs": [0, 2], "full_widths": [16, 32, 64],
             "structures": [{"seed": s, "epoch": e, "widths": [8 + s, 12 + e, 30 - e]} for s in (0, 1) for e in (0, 2)]}
    e = StructureExplorer(study)
    e.seed2.value, e.epoch2.value = 0, 0
    assert "r between the two structures (channel counts): 1.000" in e.label.value
    e.epoch.value = 2
    assert "1.000" not in e.label.value


def _ddnp_study():
    layers = ["layer1.0.mid", "layer2.0.mid", "layer3.0.mid"]
    runs = {}
    for name, r_end in (("full", 0.5), ("lambda=0.05", 0.8), ("rho=0", 0.3), ("fix_k", 0.5)):
        for seed in (0, 1):
            epochs = [{"epoch": e, "R_hard": 1 - (1 - r_end) * e / 4, "test_acc": 0.8 - 0.02 * e + 0.01 * seed}
                      for e in range(1, 5)]
            runs[f"{name}/s{seed}"] = {"setting": name, "seed": seed, "p": 0.5, "epochs": epochs,
                                       "widths": [8 + seed, 16, 30 if name != "fix_k" else 32], "R_hard": r_end,
                                       "macs": 2e7, "extracted_test_acc": 0.7, "finetuned_test_acc": 0.8}
    return {"scale": "ci", "layers": layers, "channels": [16, 32, 64], "runs": runs,
            "settings": {k: {} for k in ("full", "lambda=0.05", "rho=0", "fix_k")}}


def test_ddnp_sweep_explorer_follows_sweep_value_and_seed():
    from prunelab.viz.widgets import DDNPSweepExplorer

    e = DDNPSweepExplorer(_ddnp_study())
    assert e.sweep.value == "lambda" and "final R = 0.800" in e.label.value  # the smallest lambda first
    e.value.value = "full"
    assert "final R = 0.500" in e.label.value and "seed 0" in e.label.value
    e.seed.value = 1
    assert "seed 1" in e.label.value
    e.sweep.value = "rho"
    assert "rho = 0" in e.label.value and "final R = 0.300" in e.label.value


def test_architecture_compare_reports_both_networks():
    from prunelab.viz.widgets import ArchitectureCompare

    e = ArchitectureCompare(_ddnp_study(), "full", "fix_k/s0")
    assert e.a.value == "full/s0" and "fix_k/s0" in e.label.value and "Pearson r" in e.label.value
    e.b.value = "full/s1"
    assert "full/s1" in e.label.value


def test_run_explorer_views_and_export(tmp_path):
    from prunelab.experiments.catalog import Entry
    from prunelab.pruning.compact import compact
    from prunelab.viz.widgets import RunExplorer

    spec = models.describe(models.create("resnet20"))
    mids = [t.name for t in spec.select("mid")]
    rng = np.random.default_rng(0)
    alive = {n: sorted(rng.choice(spec.tensor(n).channels, spec.tensor(n).channels // 2, replace=False).tolist())
             for n in mids}
    kept = rng.integers(1, 16, size=(20, len(mids)))
    entries = {
        "a": Entry("a", "test", "resnet20", {}, "static", {n: len(v) for n, v in alive.items()}, alive, 0.8, "after ft"),
        "b": Entry("b", "test", "resnet20", {}, "static", {n: spec.tensor(n).channels // 4 for n in mids}, None, None,
                   "no accuracy"),
        "dyn": Entry("dyn", "test", "resnet20", {}, "dynamic", dict(zip(mids, kept.mean(0))), None, 0.7, "dynamic",
                     per_instance={"kept": kept, "layers": mids, "index": np.arange(20), "correct": np.ones(20, bool),
                                   "label": np.zeros(20, int)}),
    }
    e = RunExplorer(entries, scale="ci", images=np.zeros((20, 3, 32, 32), np.uint8), export_dir=tmp_path,
                    first="a", second="b")
    assert "a: 80.00% (after ft)" in e.label.value and "Pearson r of keep ratios" in e.label.value
    for view in RunExplorer.VIEWS:
        e.view.value = view
    e.first.value = "dyn"
    e.view.value = "per instance"
    e.instance.value = 19
    assert e.instance.max == 19 and "M MACs mean over 20 test images" in e.label.value
    assert e.export() is None and "nothing to export" in e.label.value
    e.first.value = "a"
    e.export_button.click()  # as a browser click would
    plan = e.exported
    assert plan.exists() and "prunelab compact" in e.label.value
    s = Structure.load(plan)
    assert s.counts() == entries["a"].widths and all(list(s.alive[n]) == alive[n] for n in mids)
    compact(models.create("resnet20"), s)  # the plan compacts
    e.first.value = "b"
    e.export_path.value = str(tmp_path / "b.json")
    e.export()
    assert "first channels" in e.label.value and Structure.load(tmp_path / "b.json").counts()["layer1.0.mid"] == 4


def test_structure_explorer_keep_ratios_and_missing_structures():
    study = {"scale": "ci", "seeds": [0, 1], "epochs": [0, 2], "full_widths": [16, 32, 64],
             "pretrain_acc": {"0": {"2": 0.61}},
             "structures": [{"seed": 0, "epoch": e, "widths": [8, 16 + e, 30], "reduction": 0.5} for e in (0, 2)]}
    e = StructureExplorer(study)  # seed 1 has no structure (a partial study)
    assert "not in this (partial) study: seed 1, epoch 2 (61" not in e.label.value
    assert "not in this (partial) study: seed 1" in e.label.value
    e.seed2.value, e.epoch2.value = 0, 2
    e.kind.value = "ratio"
    assert "(keep ratios)" in e.label.value
