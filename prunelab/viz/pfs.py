"""Figures for PFS's supplement (002): structure-similarity panels (Fig. S1/S2), accuracy sweeps
(Fig. S3-S5) and Table S1.

Every function takes data (a study dict, see :mod:`prunelab.analysis.structures`, or sweep rows),
draws on ``ax=`` (or ``fig=`` for composite panels) when given, and returns the Axes (or Figure).
The scale the data were computed at goes in the title through :func:`prunelab.viz.scale_label`.
"""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt
import seaborn as sns

from ..analysis.structures import (RANDOM_EPOCH, correlation_matrix, selected_keys, structure_label,
                                   structure_matrix)
from .style import scale_label, title_with_scale

NAN_COLOUR = "0.82"          # light grey: undefined correlation (constant structure, P7)
RANDOM_COLOUR = "tab:red"    # the supplement draws the random-weight structure in red
FULL_MODEL_COLOUR = "red"    # the supplement's red dotted full-model line (Fig. S3-S5)
ANNOTATE_MAX_CELLS = 12      # beyond this many rows, numbers in cells become unreadable

KIND_TEXT = {"counts": "channel counts", "ratio": "keep ratios (kept / full width)"}

SWEEP_XLABELS = {
    "rate": "channel expansion rate (× default base width)",
    "ratio": "pruning ratio R* (fraction of MACs removed)",
    "density": "density target r (target mean gate)",
    "r": "density target r (target mean gate)",
}
SWEEP_TITLES = {
    "rate": "Accuracy vs expansion rate at 50 % MACs (cf. supp. Fig. S3)",
    "ratio": "Accuracy vs pruning ratio, r = 1 − R* (cf. supp. Fig. S4)",
    "density": "Accuracy vs density target r at 50 % MACs (cf. supp. Fig. S5)",
    "r": "Accuracy vs density target r at 50 % MACs (cf. supp. Fig. S5)",
}


def _new_ax(ax, figsize=(6.0, 4.0)):
    """``ax`` itself, or the Axes of a new figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _model_prefix(study: dict) -> str:
    """``"<model>, "`` for titles, or nothing when the study does not name its model."""
    model = study.get("model")
    return f"{model}, " if model else ""


def _set_title(ax, title: str, scale: str | None):
    """Title with the scale line when a scale is given (composite panels put it in the suptitle)."""
    if scale is None:
        ax.set_title(title)
    else:
        title_with_scale(ax, title, scale)
    return ax


def plot_correlation_matrix(matrix, labels, ax=None, title: str = "Structure correlation",
                            scale: str | None = None, vmin: float | None = None, vmax: float = 1.0,
                            annotate: bool | None = None, colorbar_label: str = "Pearson r (unitless)"):
    """Heatmap (``seaborn.heatmap``) of a correlation matrix with a colour bar; NaN cells grey, marked "n/a".

    Args:
        matrix: square array, e.g. from :func:`prunelab.analysis.structures.correlation_matrix`.
        labels: one tick label per row/column.
        ax: Axes to draw on; a new figure when None.
        title: first title line.
        scale: ``"ci"``/``"cpu"``/``"paper"``; adds the scale line to the title. Leave None only when
            the figure carries the scale elsewhere (e.g. a suptitle).
        vmin, vmax: colour range. ``vmin`` defaults to the smallest finite entry, so a block of high
            correlations gets a "finer scale" (supplement Fig. S1 right).
        annotate: write the value in each cell; default when there are at most 12 rows. NaN cells are
            always marked "n/a", since grey alone is easy to misread.
        colorbar_label: colour-bar label.

    Returns:
        The Axes.
    """
    ax = _new_ax(ax, figsize=(5.5, 4.6))
    M = np.asarray(matrix, dtype=float)
    n = M.shape[0]
    if M.shape != (n, n) or len(labels) != n:
        raise ValueError(f"matrix must be square with one label per row; got {M.shape}, {len(labels)} labels")
    labels = [str(label) for label in labels]
    finite = M[np.isfinite(M)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else -1.0
    if vmin >= vmax:  # a block that is all 1 (or a single cell) still needs a non-empty range
        vmin = vmax - 1e-3
    if annotate is None:
        annotate = n <= ANNOTATE_MAX_CELLS
    missing = ~np.isfinite(M)
    # NaN cells are masked (never coloured as a value) and drawn in the colormap's "bad" grey;
    # seaborn picks dark or light annotation text from each cell's luminance
    cmap = plt.get_cmap("viridis").with_extremes(bad=NAN_COLOUR)
    sns.heatmap(M, mask=missing, cmap=cmap, vmin=vmin, vmax=vmax, square=True, ax=ax,
                annot=bool(annotate), fmt=".2f", annot_kws={"fontsize": 7},
                xticklabels=labels, yticklabels=labels,  # every label: seaborn's "auto" would thin them
                cbar_kws={"label": colorbar_label, "fraction": 0.046, "pad": 0.04})
    # seaborn's heatmap has cell centres at (j + 0.5, i + 0.5), row 0 at the top (as imshow)
    for i, j in zip(*np.nonzero(missing)):
        ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=7, color="0.25")
    ax.set_xticks(np.arange(n) + 0.5, labels, rotation=90)
    ax.set_yticks(np.arange(n) + 0.5, labels, rotation=0)
    ax.set_xlabel("pruned structure (seed / weights source)")
    ax.set_ylabel("pruned structure (seed / weights source)")
    ax.grid(False)  # the package style draws a grid; it would cut through the cells
    return _set_title(ax, title, scale)


def plot_layer_widths(study: dict, seed: int, ax=None, compare: tuple[int, int] | None = None,
                      epochs=None):
    """Channels kept per gated layer for every structure of one seed (supplement Fig. S1 bottom-left).

    The random-initialisation structure (epoch 0) is red, the pretrained ones go from light to dark
    blue with the checkpoint epoch, and the unpruned widths are a dashed grey line.

    Args:
        study: the study dict.
        seed: which seed's structures to draw.
        ax: Axes to draw on; a new figure when None.
        compare: optional ``(seed2, epoch2)``: overlay that structure as a thick black dash-dot line
            (e.g. chosen in a notebook widget).
        epochs: which checkpoint epochs to draw; default all of the study's.

    Returns:
        The Axes.
    """
    ax = _new_ax(ax, figsize=(6.5, 4.0))
    by_key = {(int(s["seed"]), int(s["epoch"])): s for s in study["structures"]}
    keys = selected_keys(study, seeds=[seed], epochs=epochs)
    if not keys:
        raise ValueError(f"study has no structure for seed {seed}")
    layers = np.arange(len(study["full_widths"]))
    ax.plot(layers, study["full_widths"], ls="--", color="0.55", lw=1.2, label="full width")
    pretrained = [k for k in keys if k[1] != RANDOM_EPOCH]
    shades = plt.get_cmap("Blues")(np.linspace(0.4, 0.95, max(len(pretrained), 1)))
    for colour, key in zip(shades, pretrained):
        ax.plot(layers, by_key[key]["widths"], color=colour, lw=1.1, marker=".", label=checkpoint_name(study, *key))
    if (int(seed), RANDOM_EPOCH) in keys:
        # drawn last so the red line stays visible on top of the pretrained ones
        ax.plot(layers, by_key[(int(seed), RANDOM_EPOCH)]["widths"], color=RANDOM_COLOUR, lw=2.2,
                marker="o", ms=3.5, label="random init", zorder=5)
    if compare is not None:
        key = (int(compare[0]), int(compare[1]))
        if key not in by_key:
            raise ValueError(f"study has no structure for seed {key[0]}, epoch {key[1]}")
        ax.plot(layers, by_key[key]["widths"], color="black", ls="-.", lw=2.0, marker="s", ms=3.5,
                label=f"compare: {structure_label(*key)}", zorder=6)
    ax.set_xlabel("gated layer index (order of the study's layers)")
    ax.set_ylabel("channels kept (count)")
    if len(layers) <= 20:  # beyond that the tick labels overlap
        ax.set_xticks(layers)
    ax.set_ylim(bottom=0)
    ax.legend(ncol=2 if len(keys) > 5 else 1, fontsize=7)
    return title_with_scale(ax, f"Channels per layer, {_model_prefix(study)}seed {seed}", study["scale"])


def checkpoint_name(study: dict, seed: int, epoch: int) -> str:
    """``"epoch 5 (71.3 % test)"``: a checkpoint with its test accuracy when the study recorded it."""
    if int(epoch) == RANDOM_EPOCH:
        return "random init"
    acc = (study.get("pretrain_acc") or {}).get(str(int(seed)), {}).get(str(int(epoch)))
    return f"epoch {int(epoch)}" + (f" ({100 * acc:.1f} % test)" if acc is not None else "")


def _finer_vmin(block: np.ndarray) -> float | None:
    """The lower quartile of a block's off-diagonal correlations: the "finer colour scale" of the
    supplement's right panel shows how the high correlations differ (cells below it take the bottom
    colour; the colour bar says so)."""
    off = block[~np.eye(len(block), dtype=bool)]
    off = off[np.isfinite(off)]
    return float(np.percentile(off, 25)) if off.size else None


def plot_seed_panel(study: dict, seed: int, fig=None, kind: str = "counts"):
    """Supplement Fig. S1/S2 panel (a)/(b) for one seed, as one Figure.

    Top-left: correlation matrix over {random, checkpoint epochs}. Right: the pretrained-only block
    on its own colour range (the supplement's "finer scale"). Bottom-left: channels per layer, random
    in red (:func:`plot_layer_widths`). The scale is in the suptitle.

    Args:
        study: the study dict.
        seed: which seed.
        fig: Figure to draw into (it is cleared first, so a widget can redraw it); new when None.
        kind: ``"counts"`` or ``"ratio"`` (what the correlations are computed on, P7).

    Returns:
        The Figure.
    """
    if fig is None:
        fig = plt.figure(figsize=(12.0, 8.5), layout="constrained")
    else:
        fig.clear()
    grid = fig.add_gridspec(2, 2, width_ratios=[1.0, 1.0], height_ratios=[1.15, 1.0])
    ax_all = fig.add_subplot(grid[0, 0])
    ax_fine = fig.add_subplot(grid[:, 1])
    ax_widths = fig.add_subplot(grid[1, 0])
    X, labels = structure_matrix(study, seeds=[seed], kind=kind)
    corr = correlation_matrix(X)
    bar = f"Pearson r of {KIND_TEXT[kind]}"
    plot_correlation_matrix(corr, labels, ax=ax_all, title=f"random and checkpoints, seed {seed}",
                            colorbar_label=bar)
    keep = [i for i, label in enumerate(labels) if not label.endswith("/random")]
    if keep:
        block = corr[np.ix_(keep, keep)]
        vmin = _finer_vmin(block)
        plot_correlation_matrix(block, [labels[i] for i in keep], ax=ax_fine, vmin=vmin,
                                title=f"pretrained checkpoints only, seed {seed}\nfiner colour scale: from the "
                                      f"lower quartile r = {vmin:.2f} (below: darkest)" if vmin is not None else
                                      f"pretrained checkpoints only, seed {seed}",
                                colorbar_label=bar)
    else:
        ax_fine.axis("off")
        ax_fine.text(0.5, 0.5, "no pretrained checkpoint for this seed", ha="center", va="center",
                     transform=ax_fine.transAxes)
    plot_layer_widths(study, seed, ax=ax_widths)
    ax_widths.set_title(f"channels per layer, seed {seed} (red: random init)")
    ckpts = ", ".join(checkpoint_name(study, seed, e) for e in study["epochs"] if int(e) != RANDOM_EPOCH
                      and (int(seed), int(e)) in set(selected_keys(study, seeds=[seed])))
    fig.suptitle(f"PFS: effect of pre-trained weights on the pruned structure, {_model_prefix(study)}seed {seed}\n"
                 f"checkpoints: {ckpts}\n{scale_label(study['scale'])}")
    return fig


def plot_all_structures(study: dict, ax=None, kind: str = "counts"):
    """Supplement Fig. S1/S2 panel (c): correlation over all structures of all seeds.

    Rows and columns are labelled ``"s<seed>/random"`` or ``"s<seed>/e<epoch>"``, seed-major; white
    lines separate the seeds (on the cell borders: the heatmap's cell i spans [i, i + 1]).

    Args:
        study: the study dict.
        ax: Axes to draw on; a new figure when None.
        kind: ``"counts"`` or ``"ratio"``.

    Returns:
        The Axes.
    """
    X, labels = structure_matrix(study, kind=kind)
    n = len(labels)
    ax = _new_ax(ax, figsize=(max(6.0, 0.28 * n + 3.0), max(5.0, 0.28 * n + 2.0)))
    title = f"Structures of all seeds, {_model_prefix(study)}{len(labels)} structures"
    plot_correlation_matrix(correlation_matrix(X), labels, ax=ax, scale=study["scale"], title=title,
                            colorbar_label=f"Pearson r of {KIND_TEXT[kind]}")
    seeds = [label.split("/")[0] for label in labels]
    for i in range(1, n):
        if seeds[i] != seeds[i - 1]:
            ax.axhline(i, color="white", lw=1.5)
            ax.axvline(i, color="white", lw=1.5)
    return ax


def plot_accuracy_sweep(rows, x: str, full_acc: float | None = None, ax=None, xlabel: str | None = None,
                        scale: str | None = None, title: str | None = None, label: str | None = None):
    """Accuracy (%) vs a swept setting, mean ± std over runs (supplement Fig. S3-S5).

    Args:
        rows: list of dicts (or a DataFrame), each with the column ``x`` and ``"acc"``: test accuracy
            as a fraction in [0, 1] (the study's convention), one row per run.
        x: the swept column: ``"rate"`` (expansion, Fig. S3), ``"ratio"`` (pruning ratio, Fig. S4) or
            ``"density"`` (density target r, Fig. S5); any other column works with an explicit
            ``xlabel``.
        full_acc: the unpruned model's accuracy (fraction); drawn as a red dotted line.
        ax: Axes to draw on; a new figure when None.
        xlabel: x-axis label; defaults by ``x``.
        scale: ``"ci"``/``"cpu"``/``"paper"`` for the title.
        title: first title line; defaults by ``x``.
        label: legend entry of this series (to overlay several models on one Axes).

    Returns:
        The Axes.

    Raises:
        ValueError: missing columns, or accuracies above 1 (percent passed where fractions belong).
    """
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty or x not in frame or "acc" not in frame:
        raise ValueError(f"rows need the columns {x!r} and 'acc'; got {list(frame.columns)}")
    if (frame["acc"] > 1).any() or (full_acc is not None and full_acc > 1):
        raise ValueError("accuracies must be fractions in [0, 1]; they are plotted as percent")
    ax = _new_ax(ax)
    # ddof=1: the spread of a handful of runs (5 in the supplement); a single run gets no error bar
    stats = (frame.assign(acc=frame["acc"] * 100).groupby(x)["acc"]
             .agg(mean="mean", std=lambda a: a.std(ddof=1) if len(a) > 1 else 0.0, n="count")
             .sort_index())
    xs, mean, std = stats.index.to_numpy(dtype=float), stats["mean"].to_numpy(), stats["std"].to_numpy()
    runs = int(stats["n"].max())
    line = ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3,
                       label=label or f"pruned, mean ± std over {runs} run{'s' if runs > 1 else ''}")
    ax.fill_between(xs, mean - std, mean + std, alpha=0.15, color=line[0].get_color(), lw=0)
    if full_acc is not None:
        ax.axhline(full_acc * 100, color=FULL_MODEL_COLOUR, ls=":", lw=1.5,
                   label=f"full model ({full_acc * 100:.2f} %)")
    ax.set_xticks(xs)
    ax.set_xlabel(xlabel or SWEEP_XLABELS.get(x, x))
    ax.set_ylabel("test accuracy (%)")
    # headroom above the data and the full-model line, so the legend covers neither
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.3 * (hi - lo))
    ax.legend(loc="upper right")
    return _set_title(ax, title or SWEEP_TITLES.get(x, f"Accuracy vs {x}"), scale)


def table_s1():
    """PFS supplement Table S1 (ImageNet initialisation) as a DataFrame.

    Columns: ``model``, ``target_flops`` (as printed; MACs), ``target_macs``, ``c_in`` (passed as
    ``-e``), ``sparsity`` (the density target r), ``multiplier`` (``-m``), ``source``.
    """
    from .. import published

    return published.load("pfs_table_s1")


def render_table_s1(ax=None):
    """Draw Table S1 as a matplotlib table (published numbers, so the scale tag is "published").

    Returns:
        The Axes (its axis lines are hidden).
    """
    ax = _new_ax(ax, figsize=(7.0, 3.4))
    frame = table_s1()
    header = ["model", "target FLOPs (MACs)", "C_in (-e)", "Sparsity = density r", "Multiplier (-m)"]
    cells = [[row.model, row.target_flops, f"{row.c_in:d}", f"{row.sparsity:.2f}", f"{row.multiplier:.2f}"]
             for row in frame.itertuples()]
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))  # headers are not clipped
    table.scale(1.0, 1.25)
    for col in range(len(header)):
        table[0, col].set_text_props(weight="bold")
    return title_with_scale(ax, "PFS supplement Table S1: ImageNet model initialisation", "published")
