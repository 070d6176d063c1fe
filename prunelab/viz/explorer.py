"""Figures of the structure explorer (``notebooks/05_explorer.ipynb``): any pruned network's widths
against the full network, where its cost sits (MACs and activation-volume shares per layer), and a
dynamic network's per-instance widths. Data in (rows of :func:`prunelab.analysis.structures.layer_costs`),
``ax=`` optional, Axes out, units on the axes, the scale in the title."""

from __future__ import annotations

import numpy as np

from .style import title_with_scale

__all__ = ["short_name", "plot_widths_vs_full", "plot_cost_shares"]


def short_name(name: str) -> str:
    """``layer2.1.mid`` -> ``L2.1 mid`` (tick labels)."""
    return name.replace("layer", "L").replace(".mid", " mid").replace(".delta", " Δ").replace(".proj", " proj")


def _axes(ax, figsize=(9.0, 3.6)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_widths_vs_full(channels: dict, widths: dict, ax=None, *, scale: str | None, title: str = "Channels kept"):
    """Bars per gated tensor: the full width (grey) and the kept channels of each labelled structure.

    ``channels``: ``{tensor: full width}`` (the order of the x axis); ``widths``: ``{label: {tensor: kept}}``.
    """
    ax = _axes(ax)
    names = list(channels)
    x = np.arange(len(names))
    ax.bar(x, [channels[n] for n in names], 0.85, color="0.85", label="full network")
    k = max(len(widths), 1)
    w = 0.8 / k
    for i, (label, ws) in enumerate(widths.items()):
        ax.bar(x + (i - (k - 1) / 2) * w, [ws.get(n, channels[n]) for n in names], w, color=f"C{i}", label=label)
    ax.set_xticks(x, [short_name(n) for n in names], rotation=90, fontsize=7)
    ax.set_xlabel("gated tensor")
    ax.set_ylabel("channels kept")
    ax.legend(fontsize=7)
    return title_with_scale(ax, title, scale) if scale else ax


def plot_cost_shares(rows: dict, ax=None, *, which: str = "macs_share", scale: str | None,
                     title: str | None = None):
    """Each gated tensor's share (%) of the network's MACs (``macs_share``: the conv producing it) or of
    its activation volume V (``volume_share``), per labelled structure (``{label: layer_costs rows}``)."""
    ax = _axes(ax)
    if which not in ("macs_share", "volume_share"):
        raise ValueError(f"which must be macs_share or volume_share, got {which!r}")
    first = next(iter(rows.values()))
    names = [r["name"] for r in first]
    x = np.arange(len(names))
    k = max(len(rows), 1)
    w = 0.8 / k
    for i, (label, rs) in enumerate(rows.items()):
        by = {r["name"]: r for r in rs}
        ax.bar(x + (i - (k - 1) / 2) * w, [100 * by[n][which] for n in names], w, color=f"C{i}", label=label)
    ax.set_xticks(x, [short_name(n) for n in names], rotation=90, fontsize=7)
    ax.set_xlabel("gated tensor")
    what = "MACs (conv producing the tensor)" if which == "macs_share" else "activation volume V (H·W·channels)"
    ax.set_ylabel(f"share of the network's {what.split(' (')[0]} (%)")
    ax.legend(fontsize=7)
    t = title or f"Where the cost is: share of {what}"
    return title_with_scale(ax, t, scale) if scale else ax
