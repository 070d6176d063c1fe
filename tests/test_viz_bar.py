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


def _line(ax, prefix):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    return line


def test_barrier_plot_is_the_closed_form():
    from prunelab.methods.bar import barrier, budget_bound

    ax = vb.plot_barrier(1.0, a=0.9, b=1.3)
    _check(ax, "closed form")
    assert ax.get_yscale() == "log"
    x, y = (np.asarray(v, dtype=float) for v in _line(ax, "f(V").get_data())
    assert len(x) > 100 and np.all(y > 0)  # only positive values on the log axis
    np.testing.assert_allclose(y, barrier(x, 0.9, 1.3), rtol=1e-12)
    inside = (x > 0.9) & (x < 1.3)
    # f = x²/(1 − x) in x = (V − a)/(b − a), written out here independently of `barrier`
    u = (x[inside] - 0.9) / 0.4
    np.testing.assert_allclose(y[inside], np.minimum(u ** 2 / (1 - u), 1e10), rtol=1e-6)
    assert y.min() < 1e-6 and y.max() == 1e10  # from the quadratic onset up to the cap
    assert x.min() > 0.9 and x.max() > 1.3  # nothing at or below a on a log axis; the capped part is drawn
    assert _line(ax, "a =").get_xdata()[0] == 0.9 and _line(ax, "b =").get_xdata()[0] == 1.3

    # in units of B, the onset a = B(1 − margin) and the scheduled bound b(t)
    B = 3.0e6
    ax = vb.plot_barrier(B, margin=0.05, t=0.5, b0=2.02 * B, log=False, mark=1.2 * B)
    b = float(budget_bound(0.5, 2.02 * B, B))
    assert _line(ax, "a =").get_xdata()[0] == 0.95 and np.isclose(_line(ax, "b =").get_xdata()[0], b / B)
    assert "b(t = 0.5)" in _line(ax, "b =").get_label() and ax.get_yscale() == "linear"
    x, y = (np.asarray(v, dtype=float) for v in _line(ax, "f(V").get_data())
    far = x < 0.999 * b / B  # V/B·B rounds; keep away from the pole
    np.testing.assert_allclose(y[far], barrier(x[far] * B, 0.95 * B, b), rtol=1e-6, atol=1e-12)
    assert np.any(y == 0) and np.all(y[x <= 0.95] == 0)  # the sparsity loss is off below a
    expected = float(barrier(1.2 * B, 0.95 * B, b))
    assert f"f(1.2 B) = {expected:.3g}" in " ".join(t.get_text() for t in ax.texts)


def test_barrier_plot_rejects_bad_input():
    with pytest.raises(ValueError, match="b must exceed a"):
        vb.plot_barrier(1.0, a=1.0, b=0.99)
    with pytest.raises(ValueError, match="either b .* or t"):
        vb.plot_barrier(1.0, b=1.2, t=0.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        vb.plot_barrier(1.0, t=1.5)
    with pytest.raises(ValueError, match="raise b0 above a"):
        vb.plot_barrier(1.0, margin=0.1, b0=0.8, t=0.0)
    with pytest.raises(ValueError, match="budget must be a finite volume > 0"):
        vb.plot_barrier(0.0)
    with pytest.raises(ValueError, match=r"margin must lie in \(0, 1\)"):
        vb.plot_barrier(1.0, margin=0.0)
