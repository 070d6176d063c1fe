"""ManiDP figures (supplement 000): Fig. S1 (lambda(x_i)/lambda' over epochs for complex and simple
instances), Fig. S2 (R^l and T^l without and with L_sim), Fig. S3 (test images ordered by their
sub-network's MACs; CIFAR-10 here, the supplement uses ImageNet), the per-instance MACs histogram and
MACs against the pretrained network's loss. Each takes data and an optional ``ax`` and returns it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .style import title_with_scale

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _ax(ax, figsize=(6.0, 4.0)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def to_image(u8_chw: np.ndarray) -> np.ndarray:
    """A uint8 (3, H, W) CIFAR image as (H, W, 3) for imshow."""
    return np.asarray(u8_chw).transpose(1, 2, 0)


def plot_lambda_trajectories(trajectories: np.ndarray, groups: dict, ax=None, *, scale: str, images=None,
                             examples: int = 3):
    """Fig. S1: lambda(x_i)/lambda' per epoch, mean ± std over the instances of each group (n in the
    legend), with ``examples`` single instances per group drawn thin. ``trajectories`` is
    (epochs, instances); ``groups`` maps a label to the column positions of its instances; ``images``
    (optional) maps a label to thumbnails (uint8 CHW) of the example instances, drawn beside the curves."""
    ax = _ax(ax, (7.0, 4.2))
    epochs = np.arange(1, trajectories.shape[0] + 1)
    colors = {"complex": "tab:red", "simple": "tab:blue"}
    for label, cols in groups.items():
        v = trajectories[:, cols].astype(np.float64)
        m, s = np.nanmean(v, 1), np.nanstd(v, 1)
        c = colors.get(label)
        ax.plot(epochs, m, lw=2.4, color=c, label=f"{label} instances: mean ± std (n = {len(cols)})")
        ax.fill_between(epochs, m - s, m + s, color=c, alpha=0.15)
        for j in cols[:examples]:
            ax.plot(epochs, v[:, list(cols).index(j)], lw=0.8, color=c, alpha=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ(x_i) / λ′ (complexity weight, 0–1)")
    ax.set_ylim(-0.02, 1.02)
    # below the axes: the bands span the whole height, any place inside would cover one of them
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    if images:
        for k, (label, thumbs) in enumerate(images.items()):
            for j, im in enumerate(thumbs[:examples]):
                ins = ax.inset_axes([1.02 + 0.13 * j, 0.62 - 0.45 * k, 0.12, 0.3])
                ins.imshow(to_image(im))
                ins.set_xticks([]), ins.set_yticks([])
                for sp in ins.spines.values():
                    sp.set_color(colors.get(label, "k"))
                    sp.set_linewidth(2)
                if j == 0:
                    ins.set_title(label, fontsize=8, color=colors.get(label, "k"))
    return title_with_scale(ax, "Complexity weight λ(x_i)/λ′ over training (supplement Fig. S1)", scale)


def plot_similarity(matrix: np.ndarray, labels: np.ndarray, ax=None, *, title: str, scale: str, cbar: bool = True,
                    vmin: float | None = None):
    """One similarity matrix (instances sorted by class, class boundaries marked), seaborn heatmap.

    The colour range runs from ``vmin`` (default: the matrix's own minimum) to 1, and the colour bar
    shows it: saliency matrices are often all close to 1, and a fixed 0-1 range would hide their
    structure. Panels that are compared share one ``vmin`` (:func:`plot_similarity_panel`)."""
    import seaborn as sns

    ax = _ax(ax, (4.2, 3.6))
    m = np.asarray(matrix, dtype=np.float32)
    lo = float(np.min(m)) if vmin is None else float(vmin)
    sns.heatmap(m, ax=ax, cmap="viridis", vmin=min(lo, 0.999), vmax=1, square=True, xticklabels=False,
                yticklabels=False, cbar=cbar, cbar_kws={"label": f"cosine similarity ({lo:.3f} to 1)"} if cbar else None)
    labels = np.asarray(labels)
    edges = np.flatnonzero(np.diff(labels)) + 1
    for e in edges:
        ax.axhline(e, color="white", lw=0.6)
        ax.axvline(e, color="white", lw=0.6)
    centers = np.r_[0, edges] + np.diff(np.r_[0, edges, len(labels)]) / 2
    ax.set_yticks(centers)
    ax.set_yticklabels([CLASSES[int(c)][:5] for c in labels[np.r_[0, edges]]], fontsize=6, rotation=0)
    ax.set_xlabel(f"{len(labels)} test images, sorted by class")
    return title_with_scale(ax, title, scale)


def plot_similarity_panel(sims: dict, labels: np.ndarray, layer: int, layer_name: str, *, scale: str, fig=None):
    """Fig. S2: (a) R and (b) T without L_sim, (c) R and (d) T with L_sim, for one layer. ``sims`` maps
    ``"without_sim"``/``"with_sim"`` to float32 arrays (layers, 2, B, B). The two R panels share one
    colour range and the two T panels another (from the lower of their minima to 1), so that with and
    without L_sim read on the same scale."""
    fig = fig or plt.figure(figsize=(11, 9))
    axes = fig.subplots(2, 2)
    variants = (("without_sim", "without"), ("with_sim", "with"))
    for col, (k, name) in enumerate(((0, "R (features)"), (1, "T (saliencies)"))):
        shared = min(float(np.min(sims[v][layer, k])) for v, _ in variants)
        for row, (variant, text) in enumerate(variants):
            letter = "abcd"[2 * row + col]
            plot_similarity(sims[variant][layer, k], labels, ax=axes[row, col], scale=scale, vmin=shared,
                            title=f"({letter}) {name}, {text} L_sim — {layer_name}")
    fig.tight_layout()
    return fig


def similarity_layers(sims: dict, layers: list[str]) -> list[int]:
    """The layers Fig. S2 shows by default, one per stage: the layer whose saliency matrix T varies most
    between images with L_sim (largest standard deviation of its off-diagonal entries), i.e. where the
    masks are most instance-dependent; ties: the earlier layer."""
    t = np.asarray(sims["with_sim"])[:, 1]
    b = t.shape[-1]
    iu = np.triu_indices(b, 1)
    spread = t[:, iu[0], iu[1]].std(1)
    stages = {}
    for j, n in enumerate(layers):
        stage = n.split(".")[0]
        if stage not in stages or spread[j] > spread[stages[stage]]:
            stages[stage] = j
    return sorted(stages.values())


def plot_accuracy_vs_macs(groups: dict, dense_macs: float, ax=None, *, scale: str, dense_acc: float | None = None):
    """Final test accuracy against mean MACs per run group (dynamic, static mask, l1, ...): each group's
    runs as small dots, their mean with a ± std bar when there are at least 2 runs (n in the legend).
    ``groups`` maps a label to a list of ``(mean MACs, accuracy)`` pairs, accuracy in [0, 1]."""
    ax = _ax(ax, (6.5, 4.2))
    markers = iter("osD^v<>")
    for label, pts in groups.items():
        if not pts:
            continue
        m = np.asarray(pts, dtype=np.float64)
        x, y = 100 * m[:, 0] / dense_macs, 100 * m[:, 1]
        mk = next(markers)
        line = ax.scatter(x, y, s=14, alpha=0.5, marker=mk)
        c = line.get_facecolor()[0]
        if len(m) > 1:
            ax.errorbar(x.mean(), y.mean(), xerr=x.std(ddof=1), yerr=y.std(ddof=1), fmt=mk, ms=8, color=c, capsize=3,
                        label=f"{label}: mean ± std (n = {len(m)})")
        else:
            ax.plot(x.mean(), y.mean(), mk, ms=8, color=c, label=f"{label} (n = 1)")
    if dense_acc is not None:
        ax.axhline(100 * dense_acc, color="k", ls="--", lw=1, label=f"dense checkpoint ({100 * dense_acc:.2f}%)")
    ax.set_xlabel("mean MACs per test image (% of dense; predictors excluded)")
    ax.set_ylabel("final test accuracy (%)")
    ax.legend(fontsize=8, loc="best")
    return title_with_scale(ax, "Dynamic against static at the same cost, same checkpoint and schedule", scale)


def plot_cost_ranked_images(images: np.ndarray, macs: np.ndarray, dense_macs: float, *, scale: str, rows: int = 6,
                            per_row: int = 10, labels=None, fig=None):
    """Fig. S3 on CIFAR-10: rows of test images, from the cheapest sub-networks (top) to the most
    expensive (bottom): row k holds images from the k-th of ``rows`` equal slices of the cost ranking.
    ``images`` uint8 (N, 3, H, W) in the same order as ``macs``."""
    order = np.lexsort((np.arange(len(macs)), macs))
    fig = fig or plt.figure(figsize=(per_row * 0.95, rows * 1.1 + 0.8))
    axes = fig.subplots(rows, per_row)
    slices = np.array_split(order, rows)
    for r, sl in enumerate(slices):
        pick = sl[np.linspace(0, len(sl) - 1, per_row).astype(int)]
        for c, i in enumerate(pick):
            ax = axes[r, c]
            ax.imshow(to_image(images[i]))
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{100 * np.mean(macs[sl]) / dense_macs:.0f}%", fontsize=8, rotation=0, ha="right",
                              va="center")
    fig.suptitle("Test images by the cost of the sub-network that classified them, cheapest row first "
                 "(row label: mean MACs of the row's slice, % of dense)\nCIFAR-10 test set; the supplement's "
                 f"Fig. S3 uses ImageNet, which is not available offline  [{scale} scale]", fontsize=9)
    return fig


def plot_macs_histogram(macs: np.ndarray, dense_macs: float, ax=None, *, scale: str, label=None):
    """Distribution of per-instance MACs (in M), the dense cost marked."""
    ax = _ax(ax)
    ax.hist(np.asarray(macs) / 1e6, bins=40, alpha=0.75, label=label or f"n = {len(macs)} test images")
    ax.axvline(dense_macs / 1e6, color="k", ls="--", lw=1, label=f"dense ({dense_macs / 1e6:.2f} M)")
    ax.axvline(np.mean(macs) / 1e6, color="tab:red", lw=1.5, label=f"mean ({np.mean(macs) / 1e6:.2f} M)")
    ax.set_xlabel("MACs of the instance's sub-network (M, predictors excluded)")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8)
    return title_with_scale(ax, "Per-instance cost of the dynamic network", scale)


def plot_macs_vs_loss(macs: np.ndarray, dense_ce: np.ndarray, ax=None, *, scale: str, rho: float | None = None):
    """Per-instance MACs against the pretrained (dense) network's CE on the same test image."""
    ax = _ax(ax)
    ax.scatter(np.asarray(dense_ce), np.asarray(macs) / 1e6, s=3, alpha=0.25)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("pretrained network's cross-entropy on the image (nats, symlog)")
    ax.set_ylabel("MACs of the instance's sub-network (M)")
    extra = f" (Spearman ρ = {rho:.3f})" if rho is not None else ""
    return title_with_scale(ax, f"Cost against difficulty{extra}", scale)


def plot_kept_channels(kept_row: np.ndarray, channels, layers, ax=None, *, scale: str, title: str):
    """Kept channels per masked layer of one instance, against the full widths."""
    ax = _ax(ax, (7.0, 3.2))
    x = np.arange(len(layers))
    ax.bar(x, channels, color="0.85", label="full width")
    ax.bar(x, kept_row, color="tab:blue", label="kept for this image")
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("layer", "L").replace(".delta", "b").replace(".mid", "a") for n in layers],
                       rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.legend(fontsize=8)
    return title_with_scale(ax, title, scale)
