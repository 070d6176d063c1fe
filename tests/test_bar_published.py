"""BAR published tables (supp 003 §5, §6, §8; docs/decisions.md §4.11) parse and match spot values."""

import math

import pytest

from prunelab import published


@pytest.fixture(scope="module")
def results():
    return published.load("bar_results")


def test_files_parse_with_expected_columns(results):
    assert list(results.columns) == ["dataset", "method", "v_factor", "f_factor", "accuracy", "dagger", "budget",
                                     "source"]
    assert list(published.load("bar_sensitivity").columns[:4]) == ["dataset", "v_factor", "accuracy", "std"]
    assert list(published.load("bar_regular_vs_mixed").columns[:8]) == [
        "dataset", "pf", "v_regular", "v_mixed", "v_delta", "flop_regular", "flop_mixed", "flop_delta"]
    assert {"bar_results", "bar_sensitivity", "bar_regular_vs_mixed"} <= set(published.names())
    assert set(results["dagger"]) <= {0, 1} and set(results["budget"]) == {"V", "F"}
    assert results["source"].str.contains("§6").all()
    assert results["accuracy"].dropna().between(0, 1).all()


ROW_COUNTS = {
    "CIFAR-10": {"Random": 4, "WM": 4, "ID": 4, "VQ": 4, "LZR": 5, "IB": 7, "MorphNet": 4, "BAR": 4,
                 "BAR (F-trained)": 4},
    "CIFAR-100": {"Random": 4, "WM": 4, "ID": 4, "VQ": 4, "LZR": 5, "IB": 7, "MorphNet": 4, "BAR": 4},
    "Mio-TCD": {"Random": 4, "WM": 4, "ID": 4, "VQ": 4, "LZR": 6, "IB": 6, "MorphNet": 4, "BAR": 4},
    "TinyImageNet": {m: 4 for m in ("Random", "WM", "ID", "VQ", "LZR", "IB", "MorphNet", "BAR")},
}


def test_row_counts_per_dataset_and_method(results):
    got = results.groupby(["dataset", "method"]).size()
    want = {(d, m): n for d, ms in ROW_COUNTS.items() for m, n in ms.items()}
    assert got.to_dict() == want


def _row(df, dataset, method, v):
    sel = df[(df.dataset == dataset) & (df.method == method) & (df.v_factor == v)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_spot_values(results):
    assert _row(results, "CIFAR-10", "Random", 16.0).accuracy == 0.8136
    bar = _row(results, "CIFAR-10", "BAR", 15.8)
    assert (bar.f_factor, bar.accuracy, bar.dagger, bar.budget) == (68.5, 0.9162, 1, "V")
    # B19: MorphNet is the block printed as a second "Ours"; LZR ends at (15.8, 167.4, .8970)
    mn = _row(results, "CIFAR-10", "MorphNet", 2.0)
    assert (mn.f_factor, mn.accuracy) == (4.0, 0.9325)
    assert _row(results, "CIFAR-10", "LZR", 15.8).f_factor == 167.4
    f = results[(results.method == "BAR (F-trained)")]
    assert (f.budget == "F").all() and f.dagger.tolist() == [0, 0, 1, 0]
    # daggers only on CIFAR (MorphNet and BAR at 7.9 / 15.8, and the F-trained 63.9)
    assert results.groupby("dataset")["dagger"].sum().to_dict() == {"CIFAR-10": 5, "CIFAR-100": 4, "Mio-TCD": 0,
                                                                   "TinyImageNet": 0}
    ib = _row(results, "Mio-TCD", "IB", 11.5)
    assert ib.f_factor == 145.0 and math.isnan(ib.accuracy)
    assert results["accuracy"].isna().sum() == 1
    assert _row(results, "TinyImageNet", "BAR", 16.0).accuracy == 0.5196


def test_sensitivity_and_regular_vs_mixed_spot_values():
    sens = published.load("bar_sensitivity")
    assert len(sens) == 16 and sens.groupby("dataset").size().eq(4).all()
    c = sens[(sens.dataset == "CIFAR-10") & (sens.v_factor == 2)].iloc[0]
    assert (c.accuracy, c["std"]) == (0.9271, 0.001915)

    rvm = published.load("bar_regular_vs_mixed")
    assert len(rvm) == 12 and rvm.groupby("dataset").size().to_dict() == {"CIFAR-10": 4, "CIFAR-100": 4, "Mio-TCD": 4}
    r = rvm[(rvm.dataset == "CIFAR-10") & (rvm.pf == 4)].iloc[0]
    assert (r.v_regular, r.v_mixed, r.v_delta) == (1.37e6, 7.88e5, -0.43)
    assert (r.flop_regular, r.flop_mixed, r.flop_delta) == (1.51e9, 9.49e8, -0.37)
    # printed deltas agree with the printed counts to rounding; mixed never exceeds regular
    assert ((rvm.v_mixed - rvm.v_regular) / rvm.v_regular - rvm.v_delta).abs().max() < 0.01
    assert ((rvm.flop_mixed - rvm.flop_regular) / rvm.flop_regular - rvm.flop_delta).abs().max() < 0.01
    assert (rvm.v_mixed <= rvm.v_regular).all() and (rvm.flop_mixed <= rvm.flop_regular).all()
