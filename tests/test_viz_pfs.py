"""PFS figures: each returns its Axes/Figure, labels its axes and carries the scale."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from prunelab.viz import pfs, scale_label

FULL = [16, 16, 16, 32, 32, 32, 64, 64, 64]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def study():
    rng = np.random.default_rng(0)
    structures = [{"seed": s, "epoch": e, "widths": rng.integers(1, np.asarray(FULL) + 1).tolist()}
                  for s in (0, 1) for e in (0, 1, 2, 4)]
    structures[1]["widths"] = [f // 2 for f in FULL]  # uniform keep ratio: NaN row under kind="ratio"
    return {"scale": "cpu", "model": "resnet20", "layers": [f"layer{i}.mid" for i in range(9)],
            "full_widths": FULL, "seeds": [0, 1], "epochs": [0, 1, 2, 4], "structures": structures,
            "full_acc": 0.91,
            "sweeps": {"expansion": [{"rate": r, "run": k, "acc": 0.88 + 0.01 * k - 0.02 * r}
                                     for r in (0.75, 1.0, 1.5) for k in range(3)],
                       "pruning_ratio": [{"ratio": p, "run": k, "acc": 0.9 - 0.05 * p + 0.002 * k}
                                         for p in (0.3, 0.5, 0.7) for k in range(2)]}}


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_correlation_matrix_marks_nan_cells():
    M = np.array([[1.0, np.nan, 0.3], [np.nan, 1.0, np.nan], [0.3, np.nan, 1.0]])
    ax = pfs.plot_correlation_matrix(M, ["a", "b", "c"], scale="ci", title="test")
    assert isinstance(ax, plt.Axes)
    assert _texts(ax).count("n/a") == 4 and "0.30" in _texts(ax)
    assert scale_label("ci") in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.figure.axes) == 2  # the heatmap and its colour bar
    assert ax.figure.axes[1].get_ylabel() == "Pearson r (unitless)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_layer_widths_random_red_and_compare(study):
    ax = pfs.plot_layer_widths(study, 0, compare=(1, 4))
    assert isinstance(ax, plt.Axes)
    assert ax.get_xlabel().startswith("gated layer index") and ax.get_ylabel() == "channels kept (count)"
    assert scale_label("cpu") in ax.get_title()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"full width", "random init", "epoch 1", "epoch 4", "compare: s1/e4"} <= set(lines)
    assert lines["random init"].get_color() == "tab:red"
    assert lines["full width"].get_linestyle() == "--"
    np.testing.assert_array_equal(lines["compare: s1/e4"].get_ydata(), study["structures"][7]["widths"])
    with pytest.raises(ValueError):
        pfs.plot_layer_widths(study, 0, compare=(5, 1))


def test_seed_panel_is_a_three_part_figure(study):
    fig = pfs.plot_seed_panel(study, 1)
    assert isinstance(fig, plt.Figure)
    assert scale_label("cpu") in fig.get_suptitle() and "seed 1" in fig.get_suptitle()
    matrix_all, matrix_fine, widths = fig.axes[0], fig.axes[1], fig.axes[2]
    assert [t.get_text() for t in matrix_all.get_yticklabels()] == ["s1/random", "s1/e1", "s1/e2", "s1/e4"]
    assert [t.get_text() for t in matrix_fine.get_yticklabels()] == ["s1/e1", "s1/e2", "s1/e4"]
    assert "finer" in matrix_fine.get_title()
    assert widths.get_ylabel() == "channels kept (count)"
    # redrawing into the same figure (as a widget does) replaces the content
    again = pfs.plot_seed_panel(study, 0, fig=fig, kind="ratio")
    assert again is fig and "seed 0" in fig.get_suptitle()
    assert "n/a" in _texts(fig.axes[0])  # s0/e1 keeps a uniform ratio: undefined r


def test_all_structures_panel(study):
    ax = pfs.plot_all_structures(study)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "s0/random" and labels[-1] == "s1/e4" and len(labels) == 8
    assert scale_label("cpu") in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


@pytest.mark.parametrize("sweep,x", [("expansion", "rate"), ("pruning_ratio", "ratio")])
def test_accuracy_sweep(study, sweep, x):
    fig, given = plt.subplots()
    ax = pfs.plot_accuracy_sweep(study["sweeps"][sweep], x, full_acc=study["full_acc"], ax=given, scale="cpu")
    assert ax is given
    assert ax.get_ylabel() == "test accuracy (%)" and ax.get_xlabel()
    assert scale_label("cpu") in ax.get_title()
    full = [line for line in ax.get_lines() if line.get_label().startswith("full model")]
    assert len(full) == 1 and full[0].get_linestyle() == ":" and full[0].get_ydata()[0] == pytest.approx(91.0)
    rows = study["sweeps"][sweep]
    first_x = min(r[x] for r in rows)
    expected = 100 * np.mean([r["acc"] for r in rows if r[x] == first_x])
    series = ax.containers[0]  # the errorbar container carries the legend label
    assert series.get_label().startswith("pruned, mean ± std over")
    assert series.lines[0].get_ydata()[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="fractions"):
        pfs.plot_accuracy_sweep([{x: 1.0, "acc": 88.0}], x)


def test_table_s1():
    df = pfs.table_s1()
    assert len(df) == 10
    assert {"model", "target_flops", "c_in", "sparsity", "multiplier"} <= set(df.columns)
    row = df[(df.model == "ResNet-50") & (df.target_flops == "4.1G")].iloc[0]
    assert (row.c_in, row.sparsity, row.multiplier) == (80, 0.80, 0.90)
    assert df[df.model == "MobileNetV2"].multiplier.tolist() == [0.75, 0.90, 1.30]
    ax = pfs.render_table_s1()
    assert isinstance(ax, plt.Axes) and scale_label("published") in ax.get_title()
    assert len(ax.tables) == 1
