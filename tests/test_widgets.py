"""Widgets driven as a browser would (observers fire synchronously in plain pytest)."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prunelab import models
from prunelab.analysis.bar import active_neurons, section_totals
from prunelab.pruning.structure import Structure
from prunelab.viz.widgets import (ActiveNeuronsExplorer, BudgetExplorer, ConcreteExplorer, StructureExplorer,
                                  TransitionExplorer)


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
