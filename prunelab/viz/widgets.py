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


class BarrierExplorer(_FigureWidget):
    """BAR's budget barrier f(V; a, b), the multiplier of λ·L_HC (docs/decisions.md §4.5, §4.6; B1, B2).

    Sliders for the onset a = B·(1 − margin), the bound (a fixed b / B, or the schedule
    b(t) = (1 − T(t, d))·b₀ + T(t, d)·B with sliders for t, d and b₀ / B) and a volume V / B at which
    the multiplier is read off (marked on the figure and written in the label). Everything is in units
    of the budget B (B = 1). The last figure's Axes is kept in ``ax`` and the value in ``value``.
    """

    figsize = (7.5, 4.2)

    def __init__(self, margin: float = 1e-4, b: float = 1.5, v: float = 1.25, *, t: float | None = None,
                 d: float = 10.0, b0: float = 2.02, log: bool = True):
        self.margin = W.FloatLogSlider(value=margin, base=10, min=-5, max=-0.5, step=0.1, description="margin",
                                       readout_format=".1e", continuous_update=False)
        self.mode = W.ToggleButtons(options=[("fixed b", "b"), ("schedule b(t)", "t")],
                                    value="b" if t is None else "t", description="bound")
        self.log = W.Checkbox(value=log, description="log y axis")
        self.b = W.FloatSlider(value=b, min=1.0, max=4.0, step=0.01, description="b / B", readout_format=".3f",
                               continuous_update=False)
        self.t = W.FloatSlider(value=0.0 if t is None else t, min=0.0, max=1.0, step=0.01, description="t",
                               continuous_update=False)
        self.d = W.FloatLogSlider(value=d, base=10, min=-2, max=2, step=0.05, description="d",
                                  continuous_update=False)
        self.b0 = W.FloatSlider(value=b0, min=1.0, max=17.0, step=0.01, description="b₀ / B", readout_format=".2f",
                                continuous_update=False)
        self.v = W.FloatSlider(value=v, min=0.0, max=4.0, step=0.001, description="V / B", readout_format=".3f",
                               continuous_update=False)
        self.ax, self.value = None, None
        super().__init__([self.margin, self.mode, self.log, self.b, self.t, self.d, self.b0, self.v])
        self.widget.children = (W.HBox([self.margin, self.mode, self.log]), W.HBox([self.b, self.t, self.d, self.b0]),
                                W.HBox([self.v]), self.out, self.label)
        self.update()

    def bound(self) -> float:
        """The bound b / B the figure uses: the slider, or b(t) of the schedule."""
        from ..methods.bar import budget_bound

        if self.mode.value == "b":
            return float(self.b.value)
        return float(budget_bound(self.t.value, self.b0.value, 1.0, self.d.value))

    def draw(self, ax):
        from ..methods.bar import barrier, barrier_onset
        from .bar import plot_barrier

        schedule = self.mode.value == "t"
        self.b.disabled = schedule
        self.t.disabled = self.d.disabled = self.b0.disabled = not schedule
        self.ax = ax
        kw = dict(t=self.t.value, d=self.d.value, b0=self.b0.value) if schedule else dict(b=self.b.value)
        try:
            plot_barrier(1.0, margin=self.margin.value, mark=self.v.value, log=self.log.value, ax=ax, **kw)
        except ValueError as err:
            self.value = None
            return f"cannot draw: {err}"
        a, b = float(barrier_onset(1.0, self.margin.value)), self.bound()
        self.value = float(barrier(self.v.value, a, b))
        where = ("V ≤ a: sparsity loss off" if self.v.value <= a else "V ≥ b: over the bound, capped"
                 if self.v.value >= b else f"x = (V − a)/(b − a) = {(self.v.value - a) / (b - a):.4f}")
        bound = f"b(t = {self.t.value:g}) = {b:.4f} B" if schedule else f"b = {b:.4f} B"
        return (f"a = {a:.5g} B, {bound}: f(V = {self.v.value:.3f} B) = {self.value:.4g} ({where}); "
                f"the sparsity loss enters as λ·{self.value:.4g}·L_HC")


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
    """Pick a seed and a checkpoint (and a second structure): per-layer widths (channel counts or keep
    ratios) against the full widths (PFS). Structures the study lacks (a partial study) are said so."""

    figsize = (8, 3.8)

    def __init__(self, study: dict):
        self.study = study
        seeds, epochs = study["seeds"], study["epochs"]
        self.seed = W.Dropdown(options=seeds, value=seeds[0], description="seed")
        self.epoch = W.Dropdown(options=epochs, value=epochs[0], description="checkpoint")
        self.seed2 = W.Dropdown(options=seeds, value=seeds[-1], description="vs seed")
        self.epoch2 = W.Dropdown(options=epochs, value=epochs[-1], description="checkpoint")
        self.kind = W.ToggleButtons(options=[("channel counts", "counts"), ("keep ratios", "ratio")], value="counts",
                                    description="show")
        super().__init__([self.seed, self.epoch, self.seed2, self.epoch2, self.kind])
        self.widget.children = (W.HBox([self.seed, self.epoch, self.seed2, self.epoch2]), W.HBox([self.kind]),
                                self.out, self.label)
        self.update()

    def widths(self, seed, epoch):
        """The structure's channel counts, or None when the study has none for (seed, epoch)."""
        for s in self.study["structures"]:
            if s["seed"] == seed and s["epoch"] == epoch:
                return np.asarray(s["widths"], dtype=float)
        return None

    def draw(self, ax):
        from .pfs import checkpoint_name
        from .style import scale_label

        full = np.asarray(self.study["full_widths"], dtype=float)
        ratio = self.kind.value == "ratio"
        a = self.widths(self.seed.value, self.epoch.value)
        b = self.widths(self.seed2.value, self.epoch2.value)
        x = np.arange(len(full))
        name = lambda s, e: f"seed {s}, {checkpoint_name(self.study, s, e)}"  # noqa: E731
        ax.plot(x, full / full if ratio else full, "--", color="0.6", label="full width")
        for v, marker, colour, (s_, e_) in ((a, "o-", "tab:red" if self.epoch.value == 0 else "tab:blue",
                                             (self.seed.value, self.epoch.value)),
                                            (b, "s-", "tab:orange", (self.seed2.value, self.epoch2.value))):
            if v is not None:
                ax.plot(x, v / full if ratio else v, marker, color=colour, label=name(s_, e_))
        ax.set_xlabel("gated layer (block middle) index")
        ax.set_ylabel("keep ratio (kept / full width)" if ratio else "channels kept")
        reductions = [s.get("reduction") for s in self.study["structures"] if s.get("reduction") is not None]
        budget = f" at {100 * (1 - float(np.mean(reductions))):.0f} % MACs" if reductions else ""
        ax.set_title(f"Pruned structures{budget}\n{scale_label(self.study['scale'])}")
        ax.legend(fontsize=7)
        missing = [name(*k) for k, v in (((self.seed.value, self.epoch.value), a), ((self.seed2.value, self.epoch2.value), b))
                   if v is None]
        if missing:
            return f"not in this (partial) study: {'; '.join(missing)}"
        va, vb = (a / full, b / full) if ratio else (a, b)
        r = np.corrcoef(va, vb)[0, 1] if va.std() > 0 and vb.std() > 0 else float("nan")
        what = "keep ratios" if ratio else "channel counts"
        return f"Pearson r between the two structures ({what}): {r:.3f}; channels kept {int(a.sum())} vs {int(b.sum())}"


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


class DDNPSweepExplorer(_FigureWidget):
    """DDNP: pick a sweep (lambda or rho), its value and a seed: the search curves of that run (test
    accuracy of the masked network, R/p of the eval widths) and the per-layer widths it ends with."""

    figsize = (11.0, 3.6)

    def __init__(self, study: dict):
        from ..analysis.ddnp import runs_of

        self.study, self._runs_of = study, runs_of
        self.sweeps = {"lambda": self._values("lambda", 4.0), "rho": self._values("rho", 1.0)}
        sweeps = [k for k, v in self.sweeps.items() if v]
        self.sweep = W.ToggleButtons(options=sweeps, value=sweeps[0], description="sweep")
        self.value = W.Dropdown(options=self._options(sweeps[0]), description="value")
        seeds = sorted({r["seed"] for r in study["runs"].values()})
        self.seed = W.Dropdown(options=seeds, value=seeds[0], description="seed")
        self.sweep.observe(self._on_sweep, names="value")
        super().__init__([self.sweep, self.value, self.seed])
        self.update()

    def _values(self, prefix: str, full_value: float) -> dict:
        out = {float(n.split("=")[1]): n for n in self.study["settings"]
               if n.startswith(prefix + "=") and self._runs_of(self.study, n)}
        if out and self._runs_of(self.study, "full"):
            out[full_value] = "full"
        return dict(sorted(out.items()))

    def _options(self, sweep):
        return [(f"{v:g}" + (" (full method)" if n == "full" else ""), n) for v, n in self.sweeps[sweep].items()]

    def _on_sweep(self, change=None):
        self.value.unobserve(self.on_change, names="value")
        self.value.options = self._options(self.sweep.value)
        self.value.value = self.value.options[0][1]
        self.value.observe(self.on_change, names="value")

    def run(self):
        for r in self._runs_of(self.study, self.value.value):
            if r["seed"] == self.seed.value:
                return r
        return None

    def draw(self, ax):
        from ..analysis.ddnp import curve
        from .ddnp import plot_widths
        from .style import scale_label

        r = self.run()
        fig = ax.figure
        ax.set_position([0.05, 0.2, 0.27, 0.62])
        ax_r = fig.add_axes([0.38, 0.2, 0.2, 0.62])
        ax_w = fig.add_axes([0.66, 0.2, 0.32, 0.62])
        name = f"{self.sweep.value} = {self.value.label.split(' ')[0]}, seed {self.seed.value}"
        if r is None:
            ax.text(0.5, 0.5, f"no run for {name}", ha="center", transform=ax.transAxes)
            return f"{name}: not run (see the study's missing list)"
        e, acc = curve([r], "test_acc")
        ax.plot(e, 100 * acc[0], "o-", markersize=3)
        ax.set(xlabel="search epoch", ylabel="test accuracy (%)", title=f"masked network\n{scale_label(self.study['scale'])}")
        e, rh = curve([r], "R_hard", lambda v, run: v / run["p"])
        ax_r.plot(e, rh[0], color="C1")
        ax_r.axhline(1, color="0.3", linestyle="--", linewidth=1)
        ax_r.set(xlabel="search epoch", ylabel="R / p (eval widths)", title=name)
        plot_widths(self.study["layers"], self.study["channels"], {"kept": r["widths"]}, ax=ax_w,
                    title="final widths", scale=self.study["scale"])
        acc_text = f"{100 * r['extracted_test_acc']:.2f}% extracted"
        if r.get("finetuned_test_acc") is not None:
            acc_text += f", {100 * r['finetuned_test_acc']:.2f}% fine-tuned"
        return f"{name}: final R = {r['R_hard']:.3f} (p = {r['p']:g}), {r['macs'] / 1e6:.2f} M MACs, {acc_text}"


class ArchitectureCompare(_FigureWidget):
    """DDNP: two searched architectures (setting and seed each) side by side, per-layer widths against
    the full network, with their costs and accuracies."""

    figsize = (9.0, 3.8)

    def __init__(self, study: dict, first: str = "full", second: str | None = None):
        self.study = study
        self.keys = sorted(study["runs"], key=lambda k: (list(study["settings"]).index(study["runs"][k]["setting"]), k))
        second = second or next((k for k in self.keys if not k.startswith(first + "/")), self.keys[-1])
        first = next((k for k in self.keys if k.startswith(first + "/")), self.keys[0])
        self.a = W.Dropdown(options=self.keys, value=first, description="first")
        self.b = W.Dropdown(options=self.keys, value=second if second in self.keys else self.keys[-1],
                            description="second")
        super().__init__([self.a, self.b])
        self.update()

    def draw(self, ax):
        from .ddnp import plot_widths

        ra, rb = self.study["runs"][self.a.value], self.study["runs"][self.b.value]
        plot_widths(self.study["layers"], self.study["channels"], {self.a.value: ra["widths"], self.b.value: rb["widths"]},
                    ax=ax, title="Searched widths", scale=self.study["scale"])
        ka = np.asarray(ra["widths"], float) / np.asarray(self.study["channels"], float)
        kb = np.asarray(rb["widths"], float) / np.asarray(self.study["channels"], float)
        r = np.corrcoef(ka, kb)[0, 1] if ka.std() > 0 and kb.std() > 0 else float("nan")

        def acc(run):
            a = run.get("finetuned_test_acc") or run["extracted_test_acc"]
            return f"{100 * a:.2f}%"

        return (f"{self.a.value}: R {ra['R_hard']:.3f}, {ra['macs'] / 1e6:.2f} M MACs, {acc(ra)} | {self.b.value}: "
                f"R {rb['R_hard']:.3f}, {rb['macs'] / 1e6:.2f} M MACs, {acc(rb)} | Pearson r of keep ratios {r:.3f}")


class RunExplorer:
    """Explore pruned networks: pick one or two entries of a catalog
    (:func:`prunelab.experiments.catalog.catalog`: cached study results and run directories) and a view:
    per-layer widths against the full network, each layer's share of the MACs or of the activation
    volume, or, for a dynamic network, one test image's kept channels (pick it by its cost rank). The
    label gives each network's accuracy and cost and how alike the two structures are; *export* writes
    the first structure as a plan file for ``prunelab compact PLAN --weights CKPT --out DIR``.

    Analyses and plots live in :mod:`prunelab.analysis.structures` and :mod:`prunelab.viz.explorer`;
    this class only wires them. ``images``: the CIFAR-10 test images (uint8, N x 3 x 32 x 32) for the
    per-instance view.
    """

    NONE = "(none)"
    VIEWS = ("widths", "MACs share", "V share", "per instance")

    def __init__(self, entries: dict, *, scale: str | None = None, images=None, export_dir="out/plans",
                 first: str | None = None, second: str | None = None):
        from pathlib import Path

        self.entries, self.scale, self.images = entries, scale, images
        self.export_dir = Path(export_dir)
        keys = list(entries)
        if not keys:
            raise ValueError("the catalog is empty: no cached results and no pruning runs found")
        self.first = W.Dropdown(options=keys, value=first if first in entries else keys[0], description="network",
                                layout=W.Layout(width="480px"))
        self.second = W.Dropdown(options=[self.NONE] + keys, value=second if second in entries else self.NONE,
                                 description="compare", layout=W.Layout(width="480px"))
        self.view = W.ToggleButtons(options=list(self.VIEWS), value="widths", description="view")
        self.instance = W.IntSlider(value=0, min=0, max=0, description="cost rank", continuous_update=False)
        self.export_button = W.Button(description="export plan", icon="download")
        self.export_path = W.Text(value="", placeholder="plan file (default out/plans/<name>.json)",
                                  description="to", layout=W.Layout(width="420px"))
        self.out = W.Output()
        self.label = W.Label()
        self.exported = None
        for c in (self.first, self.second, self.view, self.instance):
            c.observe(self.on_change, names="value")
        self.export_button.on_click(self.export)
        self.widget = W.VBox([W.HBox([self.first]), W.HBox([self.second]), W.HBox([self.view, self.instance]), self.out,
                              self.label, W.HBox([self.export_button, self.export_path])])
        self.update()

    # -- data ----------------------------------------------------------------------------------------
    def spec_of(self, entry):
        """The :class:`~prunelab.models.spec.ModelSpec` of an entry's model (built once per model and kwargs)."""
        from .. import models

        key = (entry.model, tuple(sorted(entry.model_kwargs.items())))
        cache = self.__dict__.setdefault("_specs", {})
        if key not in cache:
            cache[key] = models.describe(models.create(entry.model, **entry.model_kwargs))
        return cache[key]

    def chosen(self) -> list:
        out = [self.entries[self.first.value]]
        if self.second.value != self.NONE:
            out.append(self.entries[self.second.value])
        return out

    def on_change(self, change=None):
        self.update()

    # -- drawing -------------------------------------------------------------------------------------
    def update(self):
        from ..analysis.structures import layer_costs, structure_similarity
        from .explorer import plot_cost_shares, plot_widths_vs_full

        entries = self.chosen()
        a = entries[0]
        spec = self.spec_of(a)
        dynamic = a.per_instance is not None
        self.instance.disabled = not dynamic
        if dynamic:
            self.instance.max = len(a.per_instance["kept"]) - 1
        names = [n for n in spec.names if any(n in e.widths for e in entries)]
        with self.out:
            self.out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(9.5, 3.8))
            view = self.view.value
            if view == "per instance" and dynamic:
                self._draw_instance(a, ax)
            elif view == "per instance":
                ax.text(0.5, 0.5, f"{a.key} is static: one structure for every input", ha="center",
                        transform=ax.transAxes)
                ax.set_axis_off()
            elif view == "widths":
                plot_widths_vs_full({n: spec.tensor(n).channels for n in names},
                                    {e.key: e.widths for e in entries}, ax=ax, scale=a.scale or self.scale,
                                    title="Channels kept per gated tensor" + (" (dynamic: mean over test images)"
                                                                             if dynamic else ""))
            else:
                rows = {e.key: [r for r in layer_costs(self.spec_of(e), e.widths) if r["name"] in names] for e in entries
                        if e.model == a.model}
                plot_cost_shares(rows, ax=ax, which="macs_share" if view == "MACs share" else "volume_share",
                                 scale=a.scale or self.scale)
            if not (view == "per instance" and dynamic):  # that view places its own axes
                fig.tight_layout()
            plt.show()
        parts = [self._describe(e) for e in entries]
        if len(entries) == 2 and entries[1].model == a.model:
            sim = structure_similarity(spec, a.widths, entries[1].widths)
            parts.append(f"Pearson r of keep ratios {sim['pearson_keep_ratios']:.3f}, of channel counts "
                         f"{sim['pearson_counts']:.3f}")
        elif len(entries) == 2:
            parts.append("different models: no correlation")
        self.label.value = " | ".join(parts)  # last: in a browser, the sign that the figure was redrawn

    def _describe(self, e) -> str:
        from ..counting import count

        spec = self.spec_of(e)
        c = count(spec, widths={n: int(round(w)) for n, w in e.widths.items()}) if e.per_instance is None else None
        if e.per_instance is not None:
            macs = float(self._instance_macs(e).mean())
            cost = f"{macs / 1e6:.2f} M MACs mean over {len(e.per_instance['kept'])} test images"
        else:
            cost = f"{c.macs / 1e6:.2f} M MACs ({100 * c.macs / count(spec).macs:.1f}%), V {int(c.volume):,}"
        acc = f"{100 * e.accuracy:.2f}% ({e.accuracy_note})" if e.accuracy is not None else e.accuracy_note or "no accuracy"
        return f"{e.key}: {acc}, {cost}"

    def _instance_macs(self, e):
        from ..analysis.manidp import per_instance_macs

        if "per_instance_macs" not in e.extra:  # counted once per entry
            e.extra["per_instance_macs"] = per_instance_macs(self.spec_of(e), e.per_instance["kept"],
                                                             e.per_instance["layers"])
        return e.extra["per_instance_macs"]

    def _draw_instance(self, e, ax):
        from .manidp import CLASSES, plot_kept_channels, to_image

        per = e.per_instance
        spec = self.spec_of(e)
        macs = self._instance_macs(e)
        order = np.lexsort((np.arange(len(macs)), macs))
        i = int(order[self.instance.value])
        channels = [spec.tensor(n).channels for n in per["layers"]]
        fig = ax.figure
        if self.images is not None and "index" in per:
            ax.set_position([0.30, 0.3, 0.68, 0.55])
            img = fig.add_axes([0.02, 0.3, 0.22, 0.55])
            img.imshow(to_image(self.images[int(per["index"][i])]))
            img.set_xticks([]), img.set_yticks([])
            right = " (correct)" if per.get("correct") is not None and per["correct"][i] else " (wrong)"
            img.set_title(CLASSES[int(per["label"][i])] + right if "label" in per else "", fontsize=9)
        plot_kept_channels(per["kept"][i], channels, per["layers"], ax=ax, scale=e.scale or self.scale,
                           title=f"test image {int(per['index'][i]) if 'index' in per else i}: {macs[i] / 1e6:.2f} M MACs, "
                                 f"cost rank {self.instance.value + 1} of {len(macs)}")

    # -- export --------------------------------------------------------------------------------------
    def export(self, button=None):
        """Write the first network's structure as a plan file; the label says where and how to compact it."""
        import re

        from ..experiments.catalog import export_plan

        e = self.entries[self.first.value]
        if e.per_instance is not None:
            self.label.value = f"{e.key} is dynamic (one structure per input): nothing to export"
            return None
        path = self.export_path.value.strip() or str(self.export_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", e.key).strip("_")
                                                                          + ".json"))
        self.exported = export_plan(e, path)
        note = "" if e.alive is not None else " (widths only: the first channels of each tensor are kept)"
        self.label.value = (f"exported {e.key} to {self.exported}{note}; compact it with: prunelab compact "
                            f"{self.exported} --weights <dense {e.model} checkpoint> --out <folder>")
        return self.exported

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
