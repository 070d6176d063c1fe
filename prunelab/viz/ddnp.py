"""DDNP figures (supplement 001, Fig. A1 a-e; the searched widths; Tables A1 and A4).

Every function takes data (the records of :mod:`prunelab.analysis.ddnp`), an optional ``ax=``, labels
its axes with units, puts the scale in the title and returns the Axes. Accuracies are fractions in the
data and drawn in %. A band is mean ± sample std over seeds, and every legend entry states its n.
"""

from __future__ import annotations

import numpy as np

from .style import title_with_scale

__all__ = ["plot_search_curves", "plot_accuracy_vs", "plot_final_accuracy", "plot_widths", "render_table"]


def _axes(ax, figsize=(6.0, 4.0)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_search_curves(curves: dict, ax=None, *, ylabel: str, title: str, scale: str, percent: bool = False,
                       target: float | None = None, target_label: str = "target"):
    """Mean over seeds with a shaded ± std band, one curve per label (Fig. A1 a, b, d, e).

    ``curves``: ``{label: (epochs, values)}`` with ``values`` of shape (seeds, epochs) (see
    :func:`prunelab.analysis.ddnp.curve`); ``percent`` draws fractions in %; ``target`` adds a dashed
    horizontal line (p, or 1 for R/p).
    """
    ax = _axes(ax)
    f = 100.0 if percent else 1.0
    for i, (label, (epochs, values)) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64) * f
        if values.size == 0:
            continue
        n = values.shape[0]
        mean = values.mean(0)
        color = f"C{i % 10}"
        if n > 1:
            std = values.std(0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            ax.plot(epochs, mean, color=color, label=f"{label} (mean ± std, n={n})")
        else:
            ax.plot(epochs, mean, color=color, label=f"{label} (n=1)")
    if target is not None:
        ax.axhline(target * f, color="0.3", linestyle="--", linewidth=1, label=target_label)
    ax.set_xlabel("search epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return title_with_scale(ax, title, scale)


def plot_accuracy_vs(points: dict, ax=None, *, xlabel: str, title: str, scale: str, series_labels=None,
                     logx: bool = False):
    """Accuracy against a hyper-parameter (Fig. A1 c): every seed as a dot, mean ± std as an error bar.

    ``points``: ``{series: {x: [accuracy per seed]}}`` (e.g. "extracted" and "after fine-tuning").
    """
    ax = _axes(ax)
    for i, (series, by_x) in enumerate(points.items()):
        xs = sorted(by_x)
        if not xs:
            continue
        color = f"C{i % 10}"
        means, stds, ns = [], [], []
        for x in xs:
            v = 100 * np.asarray([a for a in by_x[x] if a is not None], dtype=np.float64)
            ax.plot([x] * len(v), v, "o", color=color, alpha=0.35, markersize=4)
            means.append(v.mean() if v.size else np.nan)
            stds.append(v.std(ddof=1) if v.size > 1 else 0.0)
            ns.append(v.size)
        n = min(ns) if ns else 0
        label = (series_labels or {}).get(series, series)
        ax.errorbar(xs, means, yerr=stds, color=color, marker="s", capsize=3,
                    label=f"{label} (mean ± std, n={n})" if n > 1 else f"{label} (n={n})")
    if logx:
        ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    return title_with_scale(ax, title, scale)


def plot_final_accuracy(groups: dict, ax=None, *, title: str, scale: str):
    """Bars of the mean accuracy per setting, one bar per stage (Fig. A1 d/e's end points).

    ``groups``: ``{setting: {stage: [accuracy per seed]}}``; a bar's error bar is the sample std, its
    dots the seeds, its label says n.
    """
    ax = _axes(ax, figsize=(7.0, 4.0))
    settings = list(groups)
    stages = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(len(stages), 1)
    for j, stage in enumerate(stages):
        for i, name in enumerate(settings):
            v = 100 * np.asarray([a for a in groups[name].get(stage, []) if a is not None], dtype=np.float64)
            if not v.size:
                continue
            x = i + (j - (len(stages) - 1) / 2) * width
            ax.bar(x, v.mean(), width, yerr=v.std(ddof=1) if v.size > 1 else 0, color=f"C{j}", alpha=0.8,
                   capsize=3, label=stage if i == 0 else None)
            ax.plot([x] * v.size, v, "k.", markersize=4)
    ns = {name: max((len([a for a in v if a is not None]) for v in groups[name].values()), default=0) for name in settings}
    ax.set_xticks(range(len(settings)), [f"{s}\n(n={ns[s]})" for s in settings])
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_ylim(0, None)  # bars encode length: from zero, so their ratios read true
    ax.legend(fontsize=8)
    return title_with_scale(ax, title, scale)


def plot_widths(layers, channels, widths: dict, ax=None, *, title: str, scale: str):
    """Channels per pruned layer of searched architectures against the full network.

    ``widths``: ``{label: [channels per layer]}`` (a label may carry the mean over seeds).
    """
    ax = _axes(ax, figsize=(8.0, 3.6))
    x = np.arange(len(layers))
    ax.bar(x, channels, 0.85, color="0.85", label="full network")
    k = max(len(widths), 1)
    w = 0.8 / k
    for i, (label, v) in enumerate(widths.items()):
        ax.bar(x + (i - (k - 1) / 2) * w, v, w, color=f"C{i % 10}", label=label)
    ax.set_xticks(x, [n.replace(".mid", "").replace("layer", "L") for n in layers], rotation=90, fontsize=7)
    ax.set_xlabel("pruned layer (block middle, conv1 outputs)")
    ax.set_ylabel("channels kept")
    ax.legend(fontsize=8)
    return title_with_scale(ax, title, scale)


def render_table(df, ax=None, *, title: str, scale: str = "published", col_width: float = 1.6):
    """A small table (e.g. Table A1 or A4) drawn as a figure, labelled with its scale ("published")."""
    ax = _axes(ax, figsize=(min(2 + col_width * len(df.columns), 14), 0.5 + 0.35 * len(df)))
    ax.axis("off")
    table = ax.table(cellText=df.astype(str).values, colLabels=list(df.columns), loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.3)
    return title_with_scale(ax, title, scale)
