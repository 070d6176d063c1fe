"""``bar``: Budget-Aware Regularization (Lemaire, Achkar, Jodoin, CVPR 2019; docs/decisions.md §4).

One Hard Concrete gate per feature map of every conv output (stem, ``mid``, ``delta`` and ``proj`` of
BAR's WRN), log alpha ~ U(0, 0.01), beta/gamma/zeta = 2/3, -0.1, 1.1. The objective is

    L = L_D + lambda * f(V; a, b(t)) * L_HC

* ``L_HC = sum P(z != 0)`` (supplement Eq. 5; unweighted by default, ``sparsity_weight: area`` weights
  each gate by its tensor's H*W [B4]);
* ``V`` = activation volume of the deterministic gates (mixed-connectivity accounting), recomputed
  every step and never differentiated; the F-trained variant uses FLOPs (a ``flops`` budget) [B17];
* ``f`` = the budget barrier (:func:`barrier`): 0 while ``V <= a``, ``(V-a)^2 / ((b-a)(b-V))`` below
  ``b``, capped at 1e10 (an overshoot is logged) [unverified; B1, the unofficial re-implementation's
  form]; ``a = B (1 - margin)``;
* ``b(t) = (1 - T(t, d)) b0 + T(t, d) B`` with the sigmoidal transition T of supplement §1, d = 10,
  ``b0 = 1.01 V0``, ``t`` the fraction of the pruning phase elapsed, updated every step [B2, B3];
* ``L_D`` = Hinton distillation from a trained full network (T = 4, alpha = 0.9) [B6].

Hard prune at ẑ > 0, remove dead residual branches [B10], close the weakest gates if the phase ended
over budget [B20], freeze Φ and fine-tune the compact (mixed-connectivity) network with kept maps
multiplied by their frozen ẑ, so hard pruning keeps the function [B9], distillation kept. The codes in
brackets are explained in docs/decisions.md.
"""

from __future__ import annotations

import numpy as np

from ..counting import count
from ..errors import ConfigError
from ..hooks import ParamGroup
from ..pruning.result import SelectReport
from ..pruning.structure import Structure, clean, ensure_connected
from ..train.distill import Distillation
from . import register
from .lzr import HardConcreteMethod, HardConcreteOptions, hc_sparsity
from .options import Literal, dataclass

# -- the budget schedule and the barrier (closed form, numpy) ----------------------------------------

# Below this hardness the shifted sigmoid is numerically a linear ramp (and 0/0 at d = 0).
_LINEAR_D = 1e-6


def transition(t, d=10.0):
    """Sigmoidal transition T(t, d) = (Sigmoid(d(t − ½)) − δ)/(1 − 2δ), δ = Sigmoid(−d/2) (supp Eq. 1).

    ``t`` (fraction of the pruning phase elapsed) is clipped to [0, 1], so T(0) = 0 and T(1) = 1
    exactly and the bound stays at the budget after the phase. ``d`` sets the hardness: d → 0 is the
    linear ramp T = t (returned as such for d < 1e-6, where the formula is 0/0), d → ∞ a step; the
    supplement uses d = 10 (δ = 0.0066929). Both arguments broadcast.

    Evaluated as (tanh(d(t − ½)/2) + tanh(d/4)) / (2 tanh(d/4)), the same function written with
    Sigmoid(x) = (1 + tanh(x/2))/2, which avoids the cancellation in 1 − 2δ for small d.
    """
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    d = np.asarray(d, dtype=float)
    if np.any(d < 0):
        raise ValueError("transition hardness d must be >= 0")
    d_safe = np.where(d < _LINEAR_D, 1.0, d)  # placeholder where the linear branch is taken
    half = np.tanh(d_safe / 4.0)
    curve = (np.tanh(d_safe * (t - 0.5) / 2.0) + half) / (2.0 * half)
    out = np.where(d < _LINEAR_D, t, curve)
    out = np.clip(out, 0.0, 1.0)  # rounding can leave 1 + 1e-16 at t = 1
    return out[()] if out.ndim == 0 else out


def budget_bound(t, b0, budget, d=10.0):
    """Annealed upper bound b(t) = (1 − T(t, d))·b₀ + T(t, d)·B (docs/decisions.md §4.6; B2).

    ``b0`` must exceed the starting V (the package uses 1.01·V₀) or the barrier is infinite at step 0.
    """
    tt = transition(t, d)
    out = (1.0 - tt) * np.asarray(b0, dtype=float) + tt * np.asarray(budget, dtype=float)
    return out[()] if np.ndim(out) == 0 else out


def barrier_onset(budget, margin=1e-4):
    """Where the barrier starts rising: a = B·(1 − margin) (package form of docs/decisions.md §4.5; B1).

    The re-implementation uses a = B − 1e-4·b₀ instead; both keep b − a > 0 at t = 1.
    """
    return np.asarray(budget, dtype=float) * (1.0 - margin)


def barrier(v, a, b, cap=1e10):
    """Budget barrier f(V; a, b) of docs/decisions.md §4.5 (B1), vectorised and always finite.

    * V ≤ a: 0 (budget comfortably met, the sparsity loss is switched off);
    * a < V < b: (V − a)² / ((b − a)(b − V)) = g(x) with x = (V − a)/(b − a) and g(x) = x²/(1 − x),
      rising to +∞ as V → b;
    * V ≥ b: ``cap`` (the +∞ of the paper, capped so that the loss stays finite).

    Values inside (a, b) are also capped. The form comes only from an unofficial re-implementation
    ([unverified]; B1). Requires b > a everywhere. A NaN volume raises: V is a count, so NaN means
    the counting upstream is broken and must not be hidden behind the cap.
    """
    v = np.asarray(v, dtype=float)
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if np.any(np.isnan(v)):
        raise ValueError("barrier got a NaN volume")
    if np.any(b <= a):
        raise ValueError("barrier needs b > a (b0 must exceed V0 and the margin must be > 0)")
    inside = (v > a) & (v < b)
    gap = np.where(inside, b - v, 1.0)  # placeholder keeps the division finite outside (a, b)
    val = np.where(inside, (v - a) ** 2 / ((b - a) * gap), 0.0)
    val = np.where(v >= b, cap, np.minimum(val, cap))
    return val[()] if val.ndim == 0 else val


# -- the method --------------------------------------------------------------------------------------


@dataclass
class BarOptions(HardConcreteOptions):
    """BAR's options (defaults: the paper's CIFAR setting; docs/decisions.md §4).

    ``d``: hardness of the transition T; ``b0_factor``: b0 / V0 (> 1); ``margin``: a = B (1 - margin);
    ``cap``: the barrier's value at and above b; ``gate_optimizer``: Adam or SGD on log alpha;
    ``sparsity_weight``: ``none`` or ``area`` (B4); ``teacher``: checkpoint of the distillation teacher
    (None: no distillation); ``kd_temperature``, ``kd_alpha``: Hinton distillation; ``clean``: remove
    dead residual branches after pruning (B10); ``post_prune_scale``: ``zhat`` (default) keeps the kept
    maps' deterministic gate values as fixed multipliers, so hard pruning changes the network only by
    the maps it removes (B9); ``trim_to_budget``: if the deterministic gates end the pruning phase over
    the budget, close the alive channels with the smallest log alpha until it holds (B20).
    """

    d: float = 10.0
    b0_factor: float = 1.01
    margin: float = 1e-4
    cap: float = 1e10
    gate_optimizer: Literal["adam", "sgd"] = "adam"
    sparsity_weight: Literal["none", "area", "params"] = "none"
    teacher: str | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    clean: bool = True
    post_prune_scale: Literal["one", "zhat"] = "zhat"  # B9: hard pruning keeps the network function
    trim_to_budget: bool = True

    def check(self):
        super().check()
        if self.d <= 0 or self.b0_factor <= 1 or not 0 < self.margin < 1:
            raise ConfigError("bar needs lambda >= 0, d > 0, b0_factor > 1 (b0 must exceed V0) and 0 < margin < 1")
        if not 0 <= self.kd_alpha <= 1 or self.kd_temperature <= 0:
            raise ConfigError("bar needs 0 <= kd_alpha <= 1 and kd_temperature > 0")


@register("bar")
class BudgetAwareRegularization(HardConcreteMethod):
    learns = True
    Options = BarOptions
    budget_tolerance = None  # the barrier reaches the budget by training; selection keeps gate > 0

    def __init__(self, **options):
        super().__init__(**options)
        self.trace: list = []
        self._teacher_hook = None
        self.overshoots = 0

    # -- gates -------------------------------------------------------------------------------------
    def attach(self, net):
        self._model_kwargs = dict(getattr(net, "prunelab_kwargs", {}))
        return super().attach(net)

    def prepare(self, spec, budget):
        super().prepare(spec, budget)
        if budget is None:
            raise ConfigError("bar needs a budget, e.g. budget: {metric: volume, factor: 4}")
        if budget.metric not in ("volume", "flops", "macs"):
            raise ConfigError(f"bar budgets are on volume or flops, got {budget.metric!r}")

    def _teacher(self):
        if self._teacher_hook is None and self.options.teacher:
            from .. import models
            from ..train.trainer import load_weights

            teacher = models.create(self.spec.model, **self._model_kwargs)
            load_weights(teacher, self.options.teacher)
            self._teacher_hook = Distillation(teacher, self.options.kd_temperature, self.options.kd_alpha)
        return self._teacher_hook

    def setup(self, trainer):
        gated = trainer.model
        spec = gated.spec
        self.metric = "volume" if self.budget.metric == "volume" else "flops"
        full = count(spec)
        self.v_full = float(full.volume if self.metric == "volume" else full.flops)
        self.target = self.budget.keep * self.v_full
        self.b0 = self.options.b0_factor * self.v_full
        self.a = self.target * (1 - self.options.margin)
        self._areas = {n: spec.tensor(n).area for n, _ in gated.items()}
        kd = self._teacher()
        if kd is not None:
            kd.setup(trainer)

    def param_groups(self, trainer):
        gates = [g.log_alpha for _, g in trainer.model.items()]
        # Adam moves every gate by about gate_lr per step whatever its gradient's size; SGD keeps the
        # Hard Concrete loss's own weighting (saturated gates get a tiny sparsity gradient)
        return [ParamGroup("gates", gates, optimizer=self.options.gate_optimizer, lr=self.options.gate_lr,
                           momentum=0.9, schedule="main")]

    # -- the budget --------------------------------------------------------------------------------
    def current_cost(self, gated) -> float:
        """V (or FLOPs) of the deterministic gates, mixed-connectivity accounting."""
        if self.metric == "volume":
            return float(sum(int(g.alive().sum()) * self._areas[n] for n, g in gated.items()))
        return float(count(gated.spec, Structure.from_gates(gated)).flops)

    def bound(self, progress: float) -> float:
        t = transition(progress, self.options.d)
        return float((1 - t) * self.b0 + t * self.target)

    def loss_terms(self, trainer, batch):
        terms = {}
        kd = self._teacher()
        if kd is not None:
            terms.update(kd.loss_terms(trainer, batch))
        progress = trainer.global_step / max(1, trainer.total_steps)
        v = self.current_cost(trainer.model)
        b = self.bound(progress)
        f = float(barrier(v, self.a, b, cap=self.options.cap))
        if v >= b:
            self.overshoots += 1
        l_hc = hc_sparsity(trainer.model, self.options.sparsity_weight)
        terms["sparsity"] = self.options.lambda_ * f * l_hc
        self._last = (trainer.global_step, v, b, f, float(l_hc.detach()))
        return terms

    def after_step(self, trainer, batch):
        self.trace.append(self._last)

    def end_epoch(self, trainer, epoch):
        v = self.current_cost(trainer.model)
        rec = {f"{self.metric}_factor": self.v_full / max(v, 1.0), "bound_factor": self.v_full / self.bound(
            trainer.global_step / max(1, trainer.total_steps)), "barrier_overshoots": self.overshoots}
        if trainer.run is not None and self.trace:
            trainer.run.save_array("bar_trace", np.array(self.trace, dtype=np.float64))
        return rec

    def state_dict(self):
        return {"trace": [list(t) for t in self.trace], "overshoots": self.overshoots}

    def load_state_dict(self, state):
        self.trace = [tuple(t) for t in state.get("trace", [])]
        self.overshoots = state.get("overshoots", 0)

    # -- after the pruning phase -------------------------------------------------------------------
    def _tidy(self, s, spec, scores):
        if self.options.clean:
            s = clean(s, spec)
        return ensure_connected(s, spec, scores)

    def select(self, model, spec, budget):
        scores = {n: g.log_alpha.detach().cpu().numpy() for n, g in model.items()}
        gates = Structure.from_gates(model)
        s = self._tidy(gates, spec, scores)
        full = count(spec)
        metric = budget.metric if budget else "volume"
        pick = {"volume": lambda x: x.volume, "flops": lambda x: x.flops, "macs": lambda x: x.macs}[metric]
        ref = float(pick(full))
        target = budget.keep * ref if budget else None
        end_of_phase = float(pick(count(spec, gates)))  # the deterministic gates as the pruning phase left them
        trimmed = []
        # B20: the barrier keeps V below the annealed bound only approximately (a step can cross it);
        # close the weakest alive gates until the budget holds, so the pruned network meets it by itself
        # and not only through dead-branch removal
        while (self.options.trim_to_budget and target is not None
               and float(pick(count(spec, s))) > target * (1 + 1e-9)):
            cand = [(float(scores[n][i]), n, int(i)) for n, idx in s.alive.items() if len(idx) > 1 for i in idx]
            if not cand:
                break
            _, n, i = min(cand)
            trimmed.append([n, i])
            s = self._tidy(s.with_alive({n: [j for j in s.alive[n] if j != i]}), spec, scores)
        c = count(spec, s)
        achieved = float(pick(c))
        extra = {"target_factor": budget.factor if budget else None,
                 "achieved_factor": ref / max(achieved, 1), "v_factor": full.volume / max(c.volume, 1),
                 "f_factor": full.macs / max(c.macs, 1), "removed_branches": s.meta.get("removed_branches", []),
                 "revived_channels": s.meta.get("revived", []),
                 "end_of_phase": end_of_phase, "end_of_phase_factor": ref / max(end_of_phase, 1),
                 "trimmed_channels": trimmed,
                 "budget_met": bool(budget is None or achieved <= target * (1 + 1e-9)),
                 "barrier_overshoots": self.overshoots}
        rule = "deterministic gate > 0, dead branches removed" if self.options.clean else "gate > 0"
        if trimmed:
            rule += f", {len(trimmed)} weakest gates closed to meet the budget"
        return s, SelectReport(rule, metric, target, achieved, s.counts(), extra)

    def finetune_hooks(self):
        kd = self._teacher()
        return [kd] if kd is not None else []
