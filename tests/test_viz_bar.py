"""BAR figures return labelled Axes with the scale in the title (Agg backend from the root conftest)."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from prunelab import models, published
from prunelab.analysis.bar import active_neurons, regular_vs_mixed, section_totals
from prunelab.pruning.structure import Structure
from prunelab.viz import bar as vb
from prunelab.viz import scale_label


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _check(ax, scale):
    assert isinstance(ax, plt.Axes)
    assert ax.get_xlabel() and ax.get_ylabel()
    assert scale_label(scale) in ax.get_title()


def test_closed_form_plots():
    ax = vb.plot_concrete_pdf()
    _check(ax, "closed form")
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "P(z=0) = 0.1682" in texts and "P(z=1) = 0.1682" in texts
    _check(vb.plot_concrete_icdf(log_alpha=1.0), "closed form")
    fig, ax = plt.subplots()
    assert vb.plot_transition(ax=ax, scale="ci") is ax
    _check(ax, "ci")
    assert len(ax.get_lines()) == 6


def test_active_neurons_skips_eliminated_blocks():
    spec = models.describe(models.create("bar_wrn", k=1))
    pruned = Structure.random(spec, np.random.default_rng(0), keep=(0.3, 0.6)).with_alive({"layer2.1.mid": []})
    sections = {"full": section_totals(active_neurons(spec)), "2x": section_totals(active_neurons(spec, pruned))}
    ax = vb.plot_active_neurons(sections, scale="cpu")
    _check(ax, "cpu")
    full_bars, pruned_bars = ax.containers
    assert len(full_bars) == 13 and len(pruned_bars) == 12  # "stage 2 block 1" has no 2x bar


def test_accuracy_vs_factor_with_published():
    pub = published.load("bar_results")
    pub = pub[pub.dataset == "Mio-TCD"]  # includes the NaN accuracy row
    ours = pd.DataFrame({"method": ["BAR", "BAR", "Random"], "v_factor": [2.0, 4.0, 2.0],
                         "f_factor": [5.0, 14.0, 4.0], "accuracy": [0.90, 0.89, 0.85]})
    ax = vb.plot_accuracy_vs_factor(ours, x="f_factor", published=pub, scale="cpu")
    _check(ax, "cpu")
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "BAR" in labels and "BAR (published)" in labels and "IB (published)" in labels
    assert ax.get_xscale() == "log"
    assert max(np.max(ln.get_ydata()) for ln in ax.get_lines()) > 50  # percent, not fractions
    with pytest.raises(ValueError):
        vb.plot_accuracy_vs_factor(published.load("bar_results"), scale="published")


def test_sensitivity_plot():
    runs = pd.DataFrame({"v_factor": np.repeat([2, 4, 8, 16], 3), "accuracy": np.linspace(0.80, 0.90, 12)})
    pub = published.load("bar_sensitivity")
    ax = vb.plot_sensitivity(runs, published=pub[pub.dataset == "CIFAR-10"], scale="ci")
    _check(ax, "ci")
    _check(vb.plot_sensitivity(pub[pub.dataset == "CIFAR-100"], scale="published"), "published")


def test_regular_vs_mixed_table():
    table = vb.regular_vs_mixed_table(published.load("bar_regular_vs_mixed"))
    assert list(table.columns) == ["dataset", "PF", "V regular", "V mixed", "Δ V", "FLOP regular", "FLOP mixed",
                                   "Δ FLOP"]
    row = table.iloc[1]
    assert (row["PF"], row["V regular"], row["V mixed"], row["Δ V"]) == ("4", "1.37E+06", "7.88E+05", "-43%")
    spec = models.describe(models.create("bar_wrn", k=1))
    s = Structure.random(spec, np.random.default_rng(0), keep=(0.2, 0.8))
    ours = vb.regular_vs_mixed_table([{"pf": 2, **regular_vs_mixed(spec, s)}])
    assert list(ours.columns) == ["PF", "V regular", "V mixed", "Δ V", "FLOP regular", "FLOP mixed", "Δ FLOP"]
    assert ours.iloc[0]["Δ V"].endswith("%") and ours.iloc[0]["Δ V"].startswith("-")
