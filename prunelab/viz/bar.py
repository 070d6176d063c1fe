"""BAR figures (supp 003 §6–§9, main Figs. 6 and 8) and the Regular-vs-Mixed table.

Every plotting function takes data, an optional ``ax=``, labels its axes with units, puts the
scale label (:func:`prunelab.viz.scale_label`) in the title, and returns the Axes. Accuracies in the
input tables are fractions (as in the supplement and ``prunelab.published``) and are drawn in %.
"""

from __future__ import annotations

import numpy as np

from ..analysis import hard_concrete as hc
from ..methods.bar import barrier, barrier_onset, budget_bound, transition
from .style import title_with_scale

__all__ = ["plot_concrete_pdf", "plot_concrete_icdf", "plot_transition", "plot_barrier", "plot_active_neurons",
           "plot_accuracy_vs_factor", "plot_sensitivity", "regular_vs_mixed_table"]

FACTOR_LABELS = {"v_factor": "V-factor (V₀ / V, log₂ scale)",
                 "f_factor": "F-factor (FLOP₀ / FLOP, FLOP = 2×MAC, log₂ scale)"}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _single_dataset(df, what: str):
    # One figure compares methods on one dataset; mixing datasets would draw meaningless lines.
    if df is not None and "dataset" in df.columns and df["dataset"].nunique() > 1:
        raise ValueError(f"{what} holds several datasets {sorted(df['dataset'].unique())}; "
                         f"filter it first, e.g. df[df.dataset == 'CIFAR-10']")


def plot_concrete_pdf(log_alpha=0.0, beta=hc.BETA, gamma=hc.GAMMA, zeta=hc.ZETA, ax=None, scale="closed form"):
    """Binary Concrete density vs Hard Concrete density and its two atoms (supp Fig. 3, left).

    The BC curve is q_BC(s) on (0, 1); the HC curve is the continuous part of its density on (0, 1);
    the atoms P(z=0) and P(z=1) are drawn as stems at z = 0 and z = 1, their heights being
    probabilities (not densities), with the values annotated.
    """
    ax = _axes(ax)
    x = np.linspace(1e-3, 1 - 1e-3, 999)
    ax.plot(x, hc.bc_pdf(x, log_alpha, beta), label="Binary Concrete q_BC(s)")
    ax.plot(x, hc.hc_pdf(x, log_alpha, beta, gamma, zeta), label="Hard Concrete, continuous part")
    p0 = float(hc.hc_prob_zero(log_alpha, beta, gamma, zeta))
    p1 = float(hc.hc_prob_one(log_alpha, beta, gamma, zeta))
    ax.vlines([0.0, 1.0], 0.0, [p0, p1], colors="tab:red", linewidth=2.5, label="Hard Concrete atoms (probability)")
    ax.plot([0.0, 1.0], [p0, p1], "o", color="tab:red")
    ax.annotate(f"P(z=0) = {p0:.4f}", (0.0, p0), xytext=(6, 6), textcoords="offset points", color="tab:red")
    ax.annotate(f"P(z=1) = {p1:.4f}", (1.0, p1), xytext=(-6, 6), textcoords="offset points", ha="right",
                color="tab:red")
    # q_BC diverges at the endpoints for beta < 1; keep the interior readable
    interior = np.concatenate([hc.bc_pdf(x[50:-50], log_alpha, beta), hc.hc_pdf(x, log_alpha, beta, gamma, zeta)])
    ax.set_ylim(0, max(1.3 * float(np.max(interior)), 1.3 * max(p0, p1)))
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("s (BC) or z (HC), gate value (unitless)")
    ax.set_ylabel("density (1/unit) · atoms: probability")
    ax.legend(loc="upper center")
    return title_with_scale(ax, f"BC vs HC density, log α = {log_alpha:g}, β = {beta:.3g}, "
                                f"γ = {gamma:g}, ζ = {zeta:g}", scale)


def plot_concrete_icdf(log_alpha=0.0, beta=hc.BETA, gamma=hc.GAMMA, zeta=hc.ZETA, ax=None, scale="closed form"):
    """Inverse CDFs of the Binary and Hard Concrete, i.e. the samplers u ↦ s and u ↦ z (supp Fig. 3, right).

    The flat parts of the HC curve at 0 and 1 have widths P(z=0) and P(z=1).
    """
    ax = _axes(ax)
    u = np.linspace(0.0, 1.0, 1001)
    ax.plot(u, hc.bc_icdf(u, log_alpha, beta), label="Binary Concrete Q_BC⁻¹(u)")
    ax.plot(u, hc.hc_icdf(u, log_alpha, beta, gamma, zeta), label="Hard Concrete Q_HC⁻¹(u) (Eq. 4)")
    ax.set_xlabel("u ~ Uniform(0, 1) (probability)")
    ax.set_ylabel("s (BC) or z (HC), gate value (unitless)")
    ax.legend(loc="upper left")
    return title_with_scale(ax, f"BC vs HC inverse CDF, log α = {log_alpha:g}, β = {beta:.3g}, "
                                f"γ = {gamma:g}, ζ = {zeta:g}", scale)


def plot_transition(ds=(0.1, 2, 5, 10, 20, 50), ax=None, scale="closed form"):
    """Budget-schedule transition T(t, d) for several hardness values d (supp §1, Eq. 1).

    The supplement's d = 10 is drawn thicker.
    """
    ax = _axes(ax)
    t = np.linspace(0.0, 1.0, 501)
    for d in ds:
        ax.plot(t, transition(t, d), label=f"d = {d:g}", linewidth=2.6 if d == 10 else None)
    ax.set_xlabel("t, fraction of the pruning phase elapsed")
    ax.set_ylabel("T(t, d) (fraction of the way from b₀ to B)")
    ax.legend(loc="upper left")
    return title_with_scale(ax, "Sigmoidal transition T(t, d) of the budget bound", scale)


def _positive(name, value):
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite volume > 0, got {value!r}")
    return v


def plot_barrier(budget=1.0, a=None, b=None, *, margin=1e-4, t=None, b0=None, d=10.0, cap=1e10, v_max=None,
                 mark=None, log=True, ax=None, scale="closed form"):
    """BAR's budget barrier f(V; a, b), the multiplier of the sparsity loss (docs/decisions.md §4.5; B1).

    The objective is L = L_D + λ·f(V; a, b(t))·L_HC (§4.7), with

        f = 0 for V ≤ a;  f = (V − a)² / ((b − a)(b − V)) for a < V < b;  f = cap for V ≥ b

    (:func:`prunelab.methods.bar.barrier`). With x = (V − a)/(b − a), f = x²/(1 − x): the shape
    inside (a, b) does not depend on a and b, only where it sits on the V axis does. Only the
    qualitative shape is documented by the authors (supplement); the formula comes from an
    unofficial re-implementation [unverified; B1].

    Args:
        budget: the budget B. Every volume argument (``a``, ``b``, ``b0``, ``v_max``, ``mark``) is in
            the same unit as ``budget``; the x axis shows V / B.
        a: onset of the barrier; default a = B·(1 − ``margin``) (:func:`~prunelab.methods.bar.barrier_onset`).
        b: the bound. Give either ``b`` or ``t``; with neither, b = b₀ (the bound at t = 0).
        t: fraction of the pruning phase elapsed, in [0, 1]: b = b(t) = (1 − T(t, d))·b₀ + T(t, d)·B
            (:func:`~prunelab.methods.bar.budget_bound`, §4.6; B2).
        b0: the bound at t = 0; default 1.01·B (the package uses b₀ = 1.01·V₀ = 1.01·PF·B).
        d: hardness of the transition T(t, d).
        cap: f at and above b (the paper's +∞); drawn on the log axis, off the top of a linear one.
        v_max: right end of the x range (default b + (b − a)/4).
        mark: a volume at which f is marked and annotated.
        log: log y axis (default: f spans many decades); only the values f > 0 (V > a) are drawn on it.
    """
    budget = _positive("budget", budget)
    if not np.isfinite(margin) or not 0 < margin < 1:
        raise ValueError(f"margin must lie in (0, 1) (a = B·(1 − margin)), got {margin!r}")
    a = float(barrier_onset(budget, margin)) if a is None else float(a)
    if not np.isfinite(a) or a < 0:
        raise ValueError(f"a must be a finite volume >= 0, got {a!r}")
    if b is not None and t is not None:
        raise ValueError("give either b (a fixed bound) or t (the bound b(t) of the schedule), not both")
    if t is not None and not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"t is the fraction of the pruning phase elapsed and must lie in [0, 1], got {t!r}")
    b0 = 1.01 * budget if b0 is None else _positive("b0", b0)
    if b is None:
        b = float(budget_bound(0.0 if t is None else float(t), b0, budget, d))
        if not b > a:
            raise ValueError(f"the bound b(t) = {b:g} does not exceed a = {a:g}: raise b0 above a "
                             f"(the package uses b0 = 1.01·V0) or the margin")
    else:
        b = float(b)
        if not np.isfinite(b) or not b > a:
            raise ValueError(f"b must exceed a = {a:g}, got b = {b!r}: raise b, or lower a (a larger margin)")
    if not cap > 0:
        raise ValueError(f"cap must be > 0 (it stands for the paper's +∞), got {cap!r}")
    lo = max(0.0, a - 0.25 * (b - a))
    hi = b + 0.25 * (b - a) if v_max is None else float(v_max)
    if not hi > a:
        raise ValueError(f"v_max must exceed a = {a:g} to show the barrier, got {v_max!r}")
    if mark is not None:
        mark = float(mark)
        lo, hi = min(lo, max(0.0, mark - 0.05 * (hi - lo))), max(hi, mark + 0.05 * (hi - lo))
    ax = _axes(ax)

    # Dense near both ends of (a, b): f ~ x² at the onset, ~ 1/(1 − x) at the bound (down to the cap).
    tail = max(0.1 / cap, 1e-13)
    x = np.concatenate([np.geomspace(1e-4, 0.5, 200), 1.0 - np.geomspace(0.5, min(tail, 0.5), 300)[1:]])
    v = np.unique(np.concatenate([np.linspace(lo, hi, 801), a + x * (b - a)]))
    v = v[(v >= lo) & (v <= hi)]
    f = barrier(v, a, b, cap)
    keep = f > 0 if log else np.ones_like(f, dtype=bool)
    ax.plot(v[keep] / budget, f[keep], color="tab:blue", label="f(V; a, b)")
    ax.axvspan(lo / budget, a / budget, color="tab:green", alpha=0.15, label="V ≤ a: sparsity loss off (f = 0)")
    if hi > b:
        ax.axvspan(b / budget, hi / budget, color="tab:red", alpha=0.15,
                   label=f"V ≥ b: capped (f = {cap:.0e}, the paper's +∞)")
    ax.axvline(a / budget, color="tab:green", linestyle="--", label=f"a = {a / budget:.4g} B (onset)")
    b_label = (f"b = {b / budget:.4g} B (bound)" if t is None
               else f"b = b(t = {float(t):g}) = {b / budget:.4g} B (b₀ = {b0 / budget:.4g} B, d = {d:g})")
    ax.axvline(b / budget, color="tab:red", linestyle="--", label=b_label)
    if mark is not None:
        fm = float(barrier(mark, a, b, cap))
        ax.axvline(mark / budget, color="0.4", linestyle=":", linewidth=1)
        text = f"f({mark / budget:.4g} B) = {fm:.3g}"
        if fm > 0 or not log:
            ax.plot([mark / budget], [fm], "o", color="k")
            ax.annotate(text, (mark / budget, fm), xytext=(6, -14), textcoords="offset points")
        else:  # f = 0 has no place on a log axis: write it at the bottom
            ax.annotate(text, (mark / budget, 0.03), xycoords=("data", "axes fraction"), xytext=(4, 0),
                        textcoords="offset points")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(top=10 * cap)
    else:
        ax.set_ylim(0.0, 1.1 * 0.95 ** 2 / 0.05)  # up to f(x = 0.95); the cap is off the top
    ax.set_xlim(lo / budget, hi / budget)
    ax.set_xlabel("V / B, activation volume in units of the budget B")
    ax.set_ylabel("f(V; a, b), multiplier of λ·L_HC (unitless)" + (", log scale" if log else ""))
    ax.legend(loc="upper left", fontsize=8)
    return title_with_scale(ax, "BAR budget barrier f(V; a, b) = (V − a)² / ((b − a)(b − V))", scale)


_SECTION_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:red")


def plot_active_neurons(sections, ax=None, *, scale, value="alive", colors=None):
    """Grouped bars of active neurons per network section, one bar colour per network (supp §7 Fig. 1).

    Args:
        sections: ``{label: section_totals DataFrame}``, e.g. ``{"full": ..., "2x": ..., "16x": ...}``,
            in legend order (from :func:`prunelab.analysis.bar.section_totals`).
        value: ``"alive_volume"`` (alive feature maps × H·W: activation values, BAR's "neurons", whose
            sum is V) or ``"alive"`` (alive feature maps).
        colors: one colour per label; the default makes the 4th and 5th labels (8x, 16x) orange and
            red, as in the supplement's caption.

    A section of a block whose residual branch was eliminated (``eliminated`` column) gets no bar for
    that network, as in the supplement ("Sections without an orange (8x) or red (16x) bar are those
    for which a res-Block has been eliminated").
    """
    if value not in ("alive", "alive_volume"):
        raise ValueError("value must be 'alive' or 'alive_volume'")
    ax = _axes(ax)
    order: list[str] = []
    for df in sections.values():
        for name in df["section"]:
            if name not in order:
                order.append(name)
    pos = {name: i for i, name in enumerate(order)}
    n = max(len(sections), 1)
    width = 0.8 / n
    colors = list(colors) if colors is not None else list(_SECTION_COLORS)
    for j, (label, df) in enumerate(sections.items()):
        kept = df if "eliminated" not in df.columns else df[~df["eliminated"].astype(bool)]
        x = np.array([pos[s] for s in kept["section"]], dtype=float) - 0.4 + width * (j + 0.5)
        ax.bar(x, kept[value].to_numpy(), width=width, label=label, color=colors[j % len(colors)])
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=60, ha="right")
    ax.set_xlabel("network section")
    ax.set_ylabel("alive feature maps" if value == "alive"
                  else "active neurons (activation values: alive maps × H·W)")
    ax.legend()
    return title_with_scale(ax, "Alive feature maps per section" if value == "alive"
                            else "Active neurons per section", scale)


def _method_colors(*frames):
    import matplotlib.pyplot as plt

    methods: list[str] = []
    for df in frames:
        if df is not None:
            for m in df["method"]:
                if m not in methods:
                    methods.append(m)
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    palette = cycle + [f"C{i}" for i in range(10)]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def plot_accuracy_vs_factor(results, x="v_factor", published=None, ax=None, *, scale):
    """Test accuracy (%) vs V-factor or F-factor on a log₂ axis, one line per method (main Figs. 6, 8).

    Args:
        results: DataFrame with columns method, v_factor, f_factor, accuracy (a fraction), for one
            dataset (``None`` to draw only ``published``).
        x: ``"v_factor"`` or ``"f_factor"``.
        published: same columns (e.g. ``prunelab.published.load("bar_results")`` filtered to one
            dataset); drawn with dashed lines and hollow markers, labelled "<method> (published)".
            Rows with a missing accuracy (one illegible Mio-TCD IB value) are skipped.
    """
    if x not in FACTOR_LABELS:
        raise ValueError(f"x must be one of {sorted(FACTOR_LABELS)}, got {x!r}")
    _single_dataset(results, "results")
    _single_dataset(published, "published")
    ax = _axes(ax)
    colors = _method_colors(results, published)
    for df, tag, style in ((results, "", {"linestyle": "-", "marker": "o"}),
                           (published, " (published)", {"linestyle": "--", "marker": "o", "markerfacecolor": "none"})):
        if df is None:
            continue
        for method, g in df.dropna(subset=["accuracy"]).groupby("method", sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], 100.0 * g["accuracy"], color=colors[method], label=f"{method}{tag}", **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(FACTOR_LABELS[x])
    ax.set_ylabel("test accuracy (%)")
    ax.legend(ncol=2, fontsize=7 if len(ax.get_lines()) > 8 else None)
    name = "V-factor" if x == "v_factor" else "F-factor"
    return title_with_scale(ax, f"Test accuracy vs {name}", scale)


def _mean_std(df):
    # Already aggregated (the published Table 1 has a std column) or one row per run.
    if "std" in df.columns:
        return df.sort_values("v_factor")[["v_factor", "accuracy", "std"]]
    g = df.groupby("v_factor")["accuracy"]
    out = g.mean().to_frame("accuracy")
    out["std"] = g.std(ddof=1).fillna(0.0)  # one run: no spread to show
    out["n"] = g.size()
    return out.reset_index()


def _n_label(n) -> str:
    n = sorted({int(v) for v in n})
    return f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}–{n[-1]} per point"


def plot_sensitivity(df, published=None, ax=None, *, scale):
    """Mean ± std of test accuracy (%) per V-factor over hyper-parameter draws (supp §8 Fig. 2); the
    legend states the number of runs n behind each mean (and says "single runs" when there is one).

    Args:
        df: one row per run (columns v_factor, accuracy as a fraction) — aggregated here with the
            sample std (ddof = 1) — or already aggregated (columns v_factor, accuracy, std).
        published: aggregated published values (``prunelab.published.load("bar_sensitivity")`` for one
            dataset), drawn with hollow markers and dashed error bars.
    """
    _single_dataset(df, "df")
    _single_dataset(published, "published")
    ax = _axes(ax)
    ours = _mean_std(df)
    if "n" in ours.columns and ours["n"].max() < 2:
        label, yerr = "single runs (no spread)", None
    elif "n" in ours.columns:
        # points with a single run carry no error bar; the legend says how many runs each mean has
        label, yerr = f"mean ± std ({_n_label(ours['n'])})", 100 * ours["std"]
    else:
        label, yerr = "mean ± std", 100 * ours["std"]
    ax.errorbar(ours["v_factor"], 100 * ours["accuracy"], yerr=yerr, marker="o", capsize=4, label=label)
    if published is not None:
        pub = _mean_std(published)
        bars = ax.errorbar(pub["v_factor"], 100 * pub["accuracy"], yerr=100 * pub["std"], marker="s",
                           markerfacecolor="none", linestyle="--", capsize=4,
                           label="published mean ± std (n = 10)")
        for line in bars[2]:
            line.set_linestyle("--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(FACTOR_LABELS["v_factor"])
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    return title_with_scale(ax, "Sensitivity to hyper-parameters", scale)


def regular_vs_mixed_table(rows):
    """Format Regular-vs-Mixed counts like the supplement's §5 tables.

    Args:
        rows: a DataFrame or an iterable of dicts with pf, v_regular, v_mixed, flop_regular,
            flop_mixed (e.g. :func:`prunelab.analysis.bar.regular_vs_mixed` results with ``pf`` added,
            or ``prunelab.published.load("bar_regular_vs_mixed")``). v_delta / flop_delta are
            recomputed when absent; an optional ``dataset`` column is kept as the first column.

    Returns:
        DataFrame of strings with columns [dataset,] PF, V regular, V mixed, Δ V, FLOP regular,
        FLOP mixed, Δ FLOP; counts in the supplement's ``1.79E+06`` form, Δ in whole percent
        relative to Regular. FLOP = 2 × MAC.
    """
    import pandas as pd

    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for q in ("v", "flop"):
        if f"{q}_delta" not in df.columns:
            df[f"{q}_delta"] = (df[f"{q}_mixed"] - df[f"{q}_regular"]) / df[f"{q}_regular"]

    def sci(v):
        return f"{float(v):.2E}"

    def pct(v):
        return f"{100 * float(v):.0f}%"

    out = pd.DataFrame({
        "PF": df["pf"].map(lambda p: f"{p:g}"),
        "V regular": df["v_regular"].map(sci), "V mixed": df["v_mixed"].map(sci), "Δ V": df["v_delta"].map(pct),
        "FLOP regular": df["flop_regular"].map(sci), "FLOP mixed": df["flop_mixed"].map(sci),
        "Δ FLOP": df["flop_delta"].map(pct),
    })
    if "dataset" in df.columns:
        out.insert(0, "dataset", df["dataset"].astype(str).to_numpy())
    return out.reset_index(drop=True)
