"""Thin ipywidgets front-ends: each callback is a named method calling analysis and plot functions,
so tests drive them without a kernel or a browser (set ``slider.value``; observers fire at once).
The text label is updated last: in a browser it is the signal that the figure has been redrawn."""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np

from ..counting import count
from ..pruning.budget import solve_budget
from .style import scale_label


def plot_structure_widths(spec, structure, ax=None, scale: str | None = None, title="Channels kept per layer"):
    """Bars of the full width and the kept channels of every gated tensor of a structure."""
    ax = ax or plt.gca()
    names = list(structure.alive)
    full = [spec.tensor(n).channels for n in names]
    kept = [len(structure.alive[n]) for n in names]
    x = np.arange(len(names))
    ax.bar(x, full, color="0.85", label="full")
    ax.bar(x, kept, color="C0", label="kept")
    ax.set_xticks(x, [n.replace(".mid", "").replace("layer", "L") for n in names], rotation=90, fontsize=7)
    ax.set_xlabel("gated tensor")
    ax.set_ylabel("channels")
    ax.set_title(title + (f"\n{scale_label(scale)}" if scale else ""))
    ax.legend()
    return ax


class BudgetExplorer:
    """A slider for the remaining MAC fraction; shows the structure the budget solver picks."""

    def __init__(self, spec, scores: dict, keep: float = 0.5, scale: str | None = None, mode: str = "global"):
        self.spec, self.scores, self.scale, self.mode = spec, scores, scale, mode
        self.dense = count(spec)
        self.slider = W.FloatSlider(value=keep, min=0.1, max=1.0, step=0.05, description="MACs kept",
                                    continuous_update=False, readout_format=".2f")
        self.mode_toggle = W.ToggleButtons(options=["global", "uniform"], value=mode, description="ranking")
        self.out = W.Output()
        self.label = W.Label()
        self.slider.observe(self.on_change, names="value")
        self.mode_toggle.observe(self.on_change, names="value")
        self.widget = W.VBox([W.HBox([self.slider, self.mode_toggle]), self.out, self.label])
        self.structure, self.report = None, None
        self.update()

    def on_change(self, change=None):
        self.update()

    def update(self):
        self.structure, self.report = solve_budget(self.spec, self.scores, {"metric": "macs", "keep": self.slider.value},
                                                   mode=self.mode_toggle.value)
        c = count(self.spec, self.structure)
        with self.out:
            self.out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(8, 3))
            plot_structure_widths(self.spec, self.structure, ax=ax, scale=self.scale,
                                  title=f"l1 structure at {100 * self.slider.value:.0f}% MACs ({self.mode_toggle.value})")
            plt.show()
        self.label.value = (f"target {self.report['target'] / 1e6:.2f} M MACs, achieved {c.macs / 1e6:.2f} M "
                            f"({100 * c.macs / self.dense.macs:.1f}% of dense), params {c.params / 1e6:.3f} M")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class _FigureWidget:
    """Common layout: controls, an output area holding one figure, a text label (updated last)."""

    figsize = (6.5, 3.8)

    def __init__(self, controls):
        self.out = W.Output()
        self.label = W.Label()
        for c in controls:
            c.observe(self.on_change, names="value")
        self.widget = W.VBox([W.HBox(controls), self.out, self.label])

    def on_change(self, change=None):
        self.update()

    def draw(self, ax) -> str:
        raise NotImplementedError

    def update(self):
        with self.out:
            self.out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=self.figsize)
            text = self.draw(ax)
            plt.show()
        self.label.value = text

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class ConcreteExplorer(_FigureWidget):
    """log α and β sliders for the Binary vs Hard Concrete density (BAR supplement Fig. 3)."""

    def __init__(self, log_alpha: float = 0.0, beta: float = 2 / 3):
        self.log_alpha = W.FloatSlider(value=log_alpha, min=-4, max=4, step=0.1, description="log α",
                                       continuous_update=False)
        self.beta = W.FloatSlider(value=beta, min=0.2, max=1.0, step=0.01, description="β", continuous_update=False)
        super().__init__([self.log_alpha, self.beta])
        self.update()

    def draw(self, ax):
        from ..analysis import hard_concrete as hc
        from .bar import plot_concrete_pdf

        plot_concrete_pdf(self.log_alpha.value, self.beta.value, ax=ax)
        p0 = float(hc.hc_prob_zero(self.log_alpha.value, self.beta.value))
        p1 = float(hc.hc_prob_one(self.log_alpha.value, self.beta.value))
        return f"P(z=0) = {p0:.4f}, P(z=1) = {p1:.4f}, P(z≠0) = {1 - p0:.4f}"


class TransitionExplorer(_FigureWidget):
    """A hardness slider for the budget schedule T(t, d) (BAR supplement §1)."""

    def __init__(self, d: float = 10.0):
        self.d = W.FloatLogSlider(value=d, base=10, min=-2, max=2, step=0.05, description="d", continuous_update=False)
        super().__init__([self.d])
        self.update()

    def draw(self, ax):
        from ..methods.bar import transition
        from .bar import plot_transition

        plot_transition(ds=(0.01, 10.0, self.d.value), ax=ax)
        return f"d = {self.d.value:.3g}: T(0.25) = {float(transition(0.25, self.d.value)):.4f}, " \
               f"T(0.5) = {float(transition(0.5, self.d.value)):.4f}, T(0.75) = {float(transition(0.75, self.d.value)):.4f}"


class ActiveNeuronsExplorer(_FigureWidget):
    """Pick a pruning factor: active neurons per section of that network next to the full network."""

    figsize = (9, 3.8)

    def __init__(self, sections: dict, scale: str):
        self.sections, self.scale = sections, scale
        labels = [k for k in sections if k != "full"]
        self.factor = W.Dropdown(options=labels, value=labels[-1], description="network")
        super().__init__([self.factor])
        self.update()

    def draw(self, ax):
        from .bar import plot_active_neurons

        chosen = {"full": self.sections["full"], self.factor.value: self.sections[self.factor.value]}
        plot_active_neurons(chosen, ax=ax, scale=self.scale, colors=["0.7", "tab:red"])
        df = self.sections[self.factor.value]
        gone = df[df["eliminated"].astype(bool)]["section"].tolist()
        return (f"{self.factor.value}: {int(df['alive'].sum())} of {int(self.sections['full']['alive'].sum())} "
                f"feature maps alive; residual branches eliminated: {', '.join(gone) if gone else 'none'}")


class StructureExplorer(_FigureWidget):
    """Pick a seed and a checkpoint (and a second structure): per-layer widths vs the full widths (PFS)."""

    figsize = (8, 3.8)

    def __init__(self, study: dict):
        self.study = study
        seeds, epochs = study["seeds"], study["epochs"]
        self.seed = W.Dropdown(options=seeds, value=seeds[0], description="seed")
        self.epoch = W.Dropdown(options=epochs, value=epochs[0], description="checkpoint")
        self.seed2 = W.Dropdown(options=seeds, value=seeds[-1], description="vs seed")
        self.epoch2 = W.Dropdown(options=epochs, value=epochs[-1], description="checkpoint")
        super().__init__([self.seed, self.epoch, self.seed2, self.epoch2])
        self.update()

    def widths(self, seed, epoch):
        for s in self.study["structures"]:
            if s["seed"] == seed and s["epoch"] == epoch:
                return np.asarray(s["widths"])
        raise KeyError((seed, epoch))

    def draw(self, ax):
        from .style import scale_label

        full = np.asarray(self.study["full_widths"])
        a = self.widths(self.seed.value, self.epoch.value)
        b = self.widths(self.seed2.value, self.epoch2.value)
        x = np.arange(len(full))
        name = lambda s, e: f"seed {s}, {'random init' if e == 0 else f'epoch {e}'}"  # noqa: E731
        ax.plot(x, full, "--", color="0.6", label="full width")
        ax.plot(x, a, "o-", color="tab:red" if self.epoch.value == 0 else "tab:blue", label=name(self.seed.value, self.epoch.value))
        ax.plot(x, b, "s-", color="tab:orange", alpha=0.8, label=name(self.seed2.value, self.epoch2.value))
        ax.set_xlabel("gated layer (block middle) index")
        ax.set_ylabel("channels kept")
        ax.set_title(f"Pruned structures at 50% MACs\n{scale_label(self.study['scale'])}")
        ax.legend(fontsize=7)
        r = np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else float("nan")
        return f"Pearson r between the two structures (channel counts): {r:.3f}; channels kept {int(a.sum())} vs {int(b.sum())}"


class InstanceExplorer(_FigureWidget):
    """ManiDP: pick a test image by index, or by its place in the cost ranking, and see the image, its
    kept channels per layer and its sub-network's MACs."""

    figsize = (9.0, 3.4)

    def __init__(self, images, kept, macs, labels, correct, channels, layers, dense_macs: float, scale: str):
        self.images, self.kept, self.macs = images, kept, macs
        self.labels, self.correct, self.channels, self.layers = labels, correct, channels, layers
        self.dense_macs, self.scale = dense_macs, scale
        self.order = np.lexsort((np.arange(len(macs)), macs))
        self.by = W.ToggleButtons(options=["cost rank", "test index"], value="cost rank", description="pick by")
        self.pick = W.IntSlider(value=0, min=0, max=len(macs) - 1, description="position", continuous_update=False)
        super().__init__([self.by, self.pick])
        self.update()

    def position(self) -> int:
        return int(self.order[self.pick.value]) if self.by.value == "cost rank" else int(self.pick.value)

    def draw(self, ax):
        from .manidp import CLASSES, plot_kept_channels, to_image

        i = self.position()
        fig = ax.figure
        ax.set_position([0.30, 0.25, 0.68, 0.6])
        img = fig.add_axes([0.02, 0.25, 0.22, 0.6])
        img.imshow(to_image(self.images[i]))
        img.set_xticks([]), img.set_yticks([])
        img.set_title(CLASSES[int(self.labels[i])] + (" (correct)" if self.correct[i] else " (wrong)"), fontsize=9)
        plot_kept_channels(self.kept[i], self.channels, self.layers, ax=ax, scale=self.scale,
                           title=f"test image {i}: {self.macs[i] / 1e6:.2f} M MACs")
        rank = int(np.flatnonzero(self.order == i)[0])
        return (f"test image {i}: {self.macs[i] / 1e6:.2f} M MACs ({100 * self.macs[i] / self.dense_macs:.1f}% of "
                f"dense), cost rank {rank + 1} of {len(self.macs)}")


class SimilarityExplorer(_FigureWidget):
    """ManiDP: R^l and T^l of one layer, without or with the similarity loss (supplement Fig. S2)."""

    figsize = (9.0, 4.0)

    def __init__(self, sims: dict, labels, layers, scale: str):
        from ..analysis.manidp import agreement

        self.sims, self.labels, self.layers, self.scale = sims, labels, layers, scale
        self._agreement = agreement
        self.layer = W.Dropdown(options=list(layers), value=layers[len(layers) // 2], description="layer")
        self.variant = W.ToggleButtons(options=[("without L_sim", "without_sim"), ("with L_sim", "with_sim")],
                                       value="with_sim", description="run")
        super().__init__([self.layer, self.variant])
        self.update()

    def draw(self, ax):
        from .manidp import plot_similarity

        j = list(self.layers).index(self.layer.value)
        m = self.sims[self.variant.value][j]
        fig = ax.figure
        ax.set_position([0.05, 0.12, 0.4, 0.7])
        ax2 = fig.add_axes([0.55, 0.12, 0.4, 0.7])
        plot_similarity(m[0], self.labels, ax=ax, scale=self.scale, title=f"R (features) {self.layer.value}", cbar=False)
        plot_similarity(m[1], self.labels, ax=ax2, scale=self.scale, title=f"T (saliencies) {self.layer.value}",
                        cbar=False)
        a = self._agreement(m[0].astype(np.float64), m[1].astype(np.float64))
        return f"{self.layer.value}, {self.variant.label}: Pearson r of R and T off the diagonal {a['pearson']:.3f}, " \
               f"mean (R - T)^2 = {a['loss']:.4f}"
