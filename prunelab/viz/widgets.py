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
