"""``morphnet``: MorphNet's FLOP-weighted L1 on BatchNorm scales (Gordon et al., CVPR 2018).

Sources: the paper ("MorphNet: Fast & Simple Resource-Constrained Structure Learning of Deep Networks")
and its official TensorFlow code, ``google-research/morph-net`` (``network_regularizers/
flop_regularizer.py`` ``GammaFlopsRegularizer``, ``cost_calculator.py``, ``resource_function.py``,
``framework/grouping_regularizers.py`` ``MaxGroupingRegularizer``, ``op_regularizers/
gamma_l1_regularizer.py``, ``examples/keras/main.py``, README). The commit is not pinned: the files
were read in a stored snapshot of the repository (the project's design notes cite ``d9286a1``).
Decisions: docs/decisions.md §5.3 and L17-L20.

Units. Each gated tensor with a BatchNorm after its conv (BN scale gamma) is a unit, except that the
tensors added into one residual trunk (``spec.trunks()``) form one unit when ``groups: trunk`` (the
default): channel c of a unit is scored ``r_c = max over its members |gamma_m,c|`` and is alive where
``r_c > threshold`` (``MaxGroupingRegularizer``: max of the regularisation vectors, OR of the alive
vectors).

Regulariser. The official FLOP regulariser sums, over every conv / matmul op,
``coeff_op * (n_alive_in * sum|gamma_out| + n_alive_out * sum|gamma_in|)``; collected per unit this is
``cost_U * sum_c r_U,c`` with ``cost_U`` the cost one channel of U adds through the ops that write and
read it. Here ``cost_U`` comes from the package's counter, never a formula of its own::

    cost_U = count(S).macs - count(S with one channel of U removed from every member).macs

at the current alive structure S (``cost: alive``, refreshed every ``cost_every`` steps, as the official
alive counts are live; ``cost: dense`` counts it once at full width). The loss is::

    CE + strength * sum_U (cost_U / C_0) * sum_c r_U,c

where C_0 is the dense network's MACs: ``strength`` = 1 is the README's suggested regularisation
strength 1/(initial cost) (the official strength is ``strength / C_0`` in the code's unit).

Select. Channels with ``r <= threshold`` die (default 1e-2; the keras example's default and the
grouping regularisers' ``DEFAULT_THRESHOLD``; the README's gamma example uses 1e-3); every unit keeps at
least ``min_channels`` (its best). Then MorphNet's uniform width expansion (README step 9;
``expand_to_budget``, default true): every unit's alive width w_U becomes
``clamp(round(f * w_U), min_channels, C_U)`` for one factor f, bisected so that the network is the
largest that meets the budget through the shared counter (f < 1 shrinks uniformly when the thresholded
network is over it). One factor moves every unit of the same alive width at once, so it can stop well
under the target (10 % on ResNet-20 at 10 % MACs); ``refine: true`` (default) then keeps raising the
factor unit by unit, in the order of each unit's next rounding step, adding a channel while the budget
holds (within 1 % of the target; 5 % documented for ``refine: false``). A unit at width k keeps its k
best channels by r. Without expansion (or budget) the thresholded network is the result and the report
states what it reached.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..counting import count
from ..errors import ConfigError
from ..pruning.budget import measure
from ..pruning.result import SelectReport
from ..pruning.structure import Structure
from . import register
from .base import Method, bn_of
from .options import Literal, MethodOptions, dataclass

# one factor moves every unit of the same alive width by a channel at once: 5 % (as random's uniform
# mode, C5; ResNet-20 at 10 % MACs ends up to 10 % under the target); refined channel by channel, 1 %
EXPANSION_TOLERANCE = 0.05
REFINED_TOLERANCE = 0.01


def units_of(spec, names, grouped: bool) -> list[list[str]]:
    """The method's units: each trunk's gated members together (``grouped``), every other tensor alone;
    in the order of their first member in the spec."""
    names = list(names)
    chosen = set(names)
    out, seen = [], set()
    trunk_of = {}
    if grouped:
        for members in spec.trunks().values():
            mine = [n for n in members if n in chosen]
            if mine:
                for n in mine:
                    trunk_of[n] = mine
    for n in names:
        if n in seen:
            continue
        unit = trunk_of.get(n, [n])
        out.append(list(unit))
        seen |= set(unit)
    return out


def unit_scores(gammas: dict, units) -> list[np.ndarray]:
    """``r_c = max_m |gamma_m,c|`` per unit (numpy)."""
    return [np.max(np.stack([np.abs(np.asarray(gammas[n], dtype=np.float64)) for n in u]), axis=0) for u in units]


def _structure(spec, units, masks, model_kwargs=None) -> Structure:
    return Structure.from_masks(spec, {n: m for u, m in zip(units, masks) for n in u}, model_kwargs=model_kwargs)


def channel_costs(spec, units, masks, scores=None, residual: str = "mixed") -> np.ndarray:
    """``cost_U`` of each unit in MACs at the alive ``masks`` (one bool array per unit): what the counter
    loses when one alive channel of U (the weakest by ``scores``) is removed from every member; for a
    unit with no alive channel, what it gains when its best one is added."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    alive = {n: m for u, m in zip(units, masks) for n in u}
    base = count(spec, alive, residual=residual).macs
    out = np.zeros(len(units))
    for i, (u, m) in enumerate(zip(units, masks)):
        s = scores[i] if scores is not None else np.zeros(len(m))
        new = m.copy()
        if m.any():
            idx = np.flatnonzero(m)
            new[idx[np.argmin(s[idx])]] = False
            sign = 1.0
        else:
            new[int(np.argmax(s))] = True
            sign = -1.0
        changed = {**alive, **{n: new for n in u}}
        out[i] = sign * (base - count(spec, changed, residual=residual).macs)
    return out


def top_k_masks(scores, widths) -> list[np.ndarray]:
    """Each unit's ``k`` best channels by score (ties: the lower index)."""
    out = []
    for s, k in zip(scores, widths):
        order = np.lexsort((np.arange(len(s)), -s))
        m = np.zeros(len(s), dtype=bool)
        m[order[:int(k)]] = True
        out.append(m)
    return out


def expanded_widths(alive_widths, full, factor: float, min_channels: int) -> list[int]:
    """``clamp(round(factor * w), min_channels, C)`` per unit (round half up)."""
    return [int(min(c, max(min(min_channels, c), math.floor(factor * w + 0.5)))) for w, c in zip(alive_widths, full)]


@dataclass
class MorphNetOptions(MethodOptions):
    """MorphNet's options.

    ``strength``: the regulariser's weight in units of 1/(dense cost) (1 = the README's suggestion);
    ``threshold``: a channel is alive where its (group's max) |gamma| is above it; ``expand_to_budget``:
    after thresholding, scale every width by one factor to meet the budget (MorphNet's expansion);
    ``cost``: each unit's per-channel cost counted at the current alive structure (``alive``, the code)
    or once at full width (``dense``); ``cost_every``: steps between two recounts of ``alive`` costs;
    ``refine``: after the factor's bisection, keep raising each unit's width in the order the factor
    would (its next rounding step), one channel at a time while the budget still holds (closes the gap
    that one factor leaves when units of equal width step together); ``groups``: ``trunk`` (default)
    makes the tensors of a residual trunk one unit (max grouping).
    """

    strength: float = 1.0
    threshold: float = 1e-2
    expand_to_budget: bool = True
    cost: Literal["alive", "dense"] = "alive"
    cost_every: int = 1
    refine: bool = True
    groups: Literal["none", "trunk"] = "trunk"

    def check(self):
        super().check()
        if self.strength < 0:
            raise ConfigError(f"morphnet option strength must be >= 0, got {self.strength}")
        if self.threshold < 0:
            raise ConfigError(f"morphnet option threshold must be >= 0, got {self.threshold}")
        if self.cost_every < 1:
            raise ConfigError(f"morphnet option cost_every must be >= 1, got {self.cost_every}")


@register("morphnet")
class MorphNet(Method):
    learns = True
    Options = MorphNetOptions
    slot_set = "outputs"  # every conv with a BatchNorm, residual-tied channels grouped
    budget_tolerance = REFINED_TOLERANCE

    def __init__(self, **options):
        super().__init__(**options)
        self.log: list[dict] = []
        if not self.options.refine:
            self.budget_tolerance = EXPANSION_TOLERANCE
        if not self.options.expand_to_budget:  # the thresholded network: what strength reached
            self.budget_tolerance = None
            self.needs_budget = False

    def divergence_hint(self) -> str:
        return f"method.strength={self.options.strength:g}"

    def tensors(self, spec):
        # the tensors whose gate position is a BatchNorm after the conv: they have a gamma
        return [t for t in super().tensors(spec) if t.module != t.conv]

    def check(self, spec, budget):
        if super().tensors(spec) and not self.tensors(spec):
            raise ConfigError(f"morphnet penalises BatchNorm scales, and no tensor of slots {list(self.slots(spec))} "
                              f"of {spec.model} has a BatchNorm after its conv; set method.slots to slots with one "
                              f"(of {spec.slots()}) or use another method (l1)")
        super().check(spec, budget)

    def prepare(self, spec, budget):
        if budget is not None and budget.metric == "latency":
            raise ConfigError("morphnet expands to a budget through the counter (macs, flops, params, volume or "
                              "channels); a latency budget is not supported (use budget.metric: macs)")
        super().prepare(spec, budget)

    def units(self, spec) -> list[list[str]]:
        return units_of(spec, [t.name for t in self.tensors(spec)], self.options.groups == "trunk")

    def groups(self, spec):
        grouped = [u for u in self.units(spec) if len(u) > 1]
        return grouped or None

    # -- learning ----------------------------------------------------------------------------------
    def setup(self, trainer):
        from ..models.registry import describe

        net = trainer.model
        spec = self.spec if self.spec is not None else describe(net)
        self._spec = spec
        self._units = self.units(spec)
        self._bns = [[bn_of(net, spec, n) for n in u] for u in self._units]
        self._dense = float(count(spec).macs)
        self._costs = None

    def _unit_r(self) -> list[torch.Tensor]:
        return [torch.stack([bn.weight.abs() for bn in bns]).amax(0) for bns in self._bns]

    def _refresh_costs(self, r):
        if self.options.cost == "dense":
            masks = [np.ones(len(x), dtype=bool) for x in r]
            scores = None
        else:
            scores = [x.detach().double().cpu().numpy() for x in r]
            masks = [s > self.options.threshold for s in scores]
        costs = channel_costs(self._spec, self._units, masks, scores)
        self._costs = [float(c) / self._dense for c in costs]

    def loss_terms(self, trainer, batch):
        r = self._unit_r()
        step = getattr(trainer, "global_step", 0)
        if self._costs is None or (self.options.cost == "alive" and step % self.options.cost_every == 0):
            self._refresh_costs(r)
        reg = sum(c * x.sum() for c, x in zip(self._costs, r))
        return {"morphnet": self.options.strength * reg}

    def end_epoch(self, trainer, epoch):
        with torch.no_grad():
            r = [x.detach().double().cpu().numpy() for x in self._unit_r()]
        masks = [x > self.options.threshold for x in r]
        alive = {n: m for u, m in zip(self._units, masks) for n in u}
        c = float(count(self._spec, alive).macs)
        rec = {"alive_fraction": float(sum(m.sum() for m in masks) / sum(len(m) for m in masks)),
               "thresholded_macs_keep": c / self._dense}
        self.log.append({"epoch": epoch + 1, **rec})
        return rec

    def state_dict(self):
        return {"log": self.log}

    def load_state_dict(self, state):
        self.log = list(state.get("log", []))

    # -- selection ---------------------------------------------------------------------------------
    def scores(self, model, spec):
        return {t.name: bn_of(model, spec, t.name).weight.detach().abs().double().cpu().numpy()
                for t in self.tensors(spec)}

    def select(self, model, spec, budget):
        units = self.units(spec)
        gammas = self.scores(model, spec)
        r = unit_scores(gammas, units)
        full = [len(x) for x in r]
        mins = [min(self.options.min_channels, c) for c in full]
        # alive: r > threshold; a unit keeps at least min_channels (its best)
        alive_w = [max(int((x > self.options.threshold).sum()), m) for x, m in zip(r, mins)]
        kwargs = dict(getattr(model, "prunelab_kwargs", {}) or {})
        metric = budget.metric if budget is not None else "macs"
        reference = measure(spec, {}, metric)
        thresholded = _structure(spec, units, top_k_masks(r, alive_w), kwargs)
        t_cost = measure(spec, thresholded, metric)
        extra = {"threshold": self.options.threshold, "strength": self.options.strength,
                 "groups": [u for u in units if len(u) > 1], "reference": reference,
                 "alive_widths": {u[0] if len(u) == 1 else "+".join(u): w for u, w in zip(units, alive_w)},
                 "thresholded": t_cost, "thresholded_keep": t_cost / reference}
        target = budget.keep * reference if budget is not None else None
        if not (self.options.expand_to_budget and budget is not None):
            extra["achieved_keep"] = t_cost / reference
            if target is not None:
                extra["target_keep"] = budget.keep
                extra["budget_rule"] = "none: expand_to_budget is off; the cost is what strength reached"
            rule = f"max |gamma| over each unit > {self.options.threshold:g}"
            return thresholded, SelectReport(rule, metric, target, t_cost, thresholded.counts(), extra)

        def cost_of(f):
            s = _structure(spec, units, top_k_masks(r, expanded_widths(alive_w, full, f, self.options.min_channels)))
            return measure(spec, s, metric)

        f_max = max(c / w for c, w in zip(full, alive_w))
        iterations = 0
        if cost_of(f_max) <= target:
            f = f_max
        elif cost_of(0.0) > target:  # every unit at min_channels is over: the floor
            f = 0.0
        else:
            lo, hi = 0.0, f_max  # cost_of(lo) <= target < cost_of(hi); cost is non-decreasing in f
            for _ in range(60):
                mid = (lo + hi) / 2
                iterations += 1
                if cost_of(mid) <= target:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-12 * f_max:
                    break
            f = lo
        widths = expanded_widths(alive_w, full, f, self.options.min_channels)
        added = 0
        if self.options.refine and f < f_max:
            widths, added = self._refine(spec, units, r, widths, alive_w, full, metric, target)
        structure = _structure(spec, units, top_k_masks(r, widths), kwargs)
        achieved = measure(spec, structure, metric)
        extra.update({"expansion_factor": f, "iterations": iterations, "refined_channels": added,
                      "target_keep": budget.keep,
                      "achieved_keep": achieved / reference, "reachable": achieved <= target * (1 + 1e-9),
                      "relative_error": (achieved - target) / target,
                      "within_tolerance": bool(achieved <= target * (1 + 1e-9)
                                               and (target - achieved) / target <= self.budget_tolerance)})
        rule = (f"max |gamma| over each unit > {self.options.threshold:g}, then every alive width x {f:.4g} "
                f"(rounded, capped at the full width), the factor bisected on the budget"
                + (f", {added} channels more where the factor's next steps still fit" if added else ""))
        structure.meta["widths"] = structure.counts()
        return structure, SelectReport(rule, metric, target, achieved, structure.counts(), extra)

    @staticmethod
    def _refine(spec, units, r, widths, alive_w, full, metric, target):
        """Raise the factor on past the bisected one, one unit's next channel at a time in the order the
        factor would add them (unit U grows to k + 1 at f = (k + 0.5) / w_U), skipping a unit for good
        once its next channel no longer fits; returns the widths and the channels added."""
        widths = list(widths)
        open_units = {i for i, (k, c) in enumerate(zip(widths, full)) if k < c}
        added = 0
        while open_units:
            i = min(open_units, key=lambda j: ((widths[j] + 0.5) / alive_w[j], j))
            trial = widths[:i] + [widths[i] + 1] + widths[i + 1:]
            if measure(spec, _structure(spec, units, top_k_masks(r, trial)), metric) <= target:
                widths, added = trial, added + 1
                if widths[i] >= full[i]:
                    open_units.discard(i)
            else:
                open_units.discard(i)
        return widths, added
