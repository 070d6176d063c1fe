"""``lzr``: L0 regularisation with Hard Concrete gates (Louizos, Welling, Kingma 2018), in BAR's setting.

One Hard Concrete gate per feature map (docs/decisions.md §4.2, §5.1): log alpha ~ U(0, 0.01), beta,
gamma, zeta = 2/3, -0.1, 1.1. Learn stage loss: ``lambda * L_HC`` with ``L_HC = sum P(z != 0)``
(unweighted, BAR's Eq. 5); ``weight: area`` weights each gate by its tensor's H*W (expected activation
volume), ``weight: params`` by the parameters of its filter (Louizos's per-weight L0 cost, without its
weight-decay scaling). There is no budget: sweep ``lambda`` and report the factors reached (L2);
``select: budget`` instead ranks channels by log alpha and meets a budget.

Hard prune: keep channels whose deterministic gate is > 0 (log alpha > -2.398), then fine-tune with
kept maps multiplied by 1 (B9; ``post_prune_scale: zhat`` keeps the frozen gate values).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..hooks import ParamGroup
from ..pruning.budget import solve_budget
from ..pruning.compact import compact
from ..pruning.gates import FixedGate, GatedModel, HardConcreteGate, attach_gates, strip_gates
from ..pruning.result import SelectReport
from ..pruning.structure import Structure, ensure_connected
from . import register
from .base import Method
from .options import Literal, MethodOptions, dataclass, field


def hc_sparsity(gated: GatedModel, weight: str = "none") -> torch.Tensor:
    """``sum_gates w * P(z != 0)`` over the Hard Concrete gates of a gated model (L_HC, Eq. 5)."""
    total = None
    for name, g in gated.items():
        p = g.prob_nonzero()
        if p is None:
            continue
        if weight == "area":
            p = p * gated.spec.tensor(name).area
        elif weight == "params":
            conv = gated.net.get_submodule(gated.spec.tensor(name).conv)
            p = p * conv.weight[0].numel()
        elif weight != "none":
            raise ConfigError(f"L_HC weight must be none, area or params, got {weight!r}")
        s = p.sum()
        total = s if total is None else total + s
    return total


@dataclass
class HardConcreteOptions(MethodOptions):
    """Options of Hard Concrete gates shared by ``lzr`` and ``bar``.

    ``init``: log alpha's initial distribution (``[uniform, low, high]``); ``noise``: one gate sample
    per batch or per example; ``gate_lr``: Adam's step on log alpha; ``post_prune_scale``: what kept
    maps are multiplied by after hard pruning (``one``, B9, or the frozen deterministic gate ``zhat``).
    """

    lambda_: float = field(default=1e-5, metadata={"key": "lambda"})
    gate_lr: float = 1e-3
    init: tuple[str, float, float] = ("uniform", 0.0, 0.01)
    noise: Literal["batch", "example"] = "batch"
    post_prune_scale: Literal["one", "zhat"] = "one"

    def check(self):
        super().check()
        if self.lambda_ < 0:
            raise ConfigError(f"option lambda must be >= 0, got {self.lambda_}")
        if self.gate_lr <= 0:
            raise ConfigError(f"option gate_lr must be > 0, got {self.gate_lr}")


@dataclass
class LzrOptions(HardConcreteOptions):
    """``weight``: how each gate's P(z != 0) is weighted; ``select``: ``threshold`` (gate > 0) or
    ``budget`` (rank log alpha, meet the run's budget)."""

    weight: Literal["none", "area", "params"] = "none"
    select: Literal["threshold", "budget"] = "threshold"


def hard_concrete_gated(method: Method, net):
    """``net`` with one Hard Concrete gate on every tensor of the method's slots."""
    from ..models.registry import describe

    spec = describe(net)
    o = method.options
    return attach_gates(net, lambda t: HardConcreteGate(t.channels, init=tuple(o.init), noise=o.noise),
                        method.slots(spec))


def zhat_values(model, structure) -> dict:
    """Kept channels' frozen deterministic gate values (``post_prune_scale: zhat``), dead channels 0, for
    every tensor of the structure: one without a gate (a residual branch's delta that dead-branch removal
    emptied when only ``mid`` is gated) keeps its channels at 1."""
    gates = dict(model.items())
    kept = {n: torch.as_tensor(m, dtype=torch.float32) for n, m in structure.masks().items()}
    return {n: m * gates[n].values().detach().cpu().float() if n in gates else m for n, m in kept.items()}


class HardConcreteMethod(Method):
    """Shared by ``lzr`` and ``bar``: Hard Concrete gates on every conv output, and what kept maps
    are multiplied by after hard pruning (``post_prune_scale``: 1, or the frozen gate value ẑ)."""

    Options = HardConcreteOptions
    slot_set = "outputs"
    honours_groups = False  # one Hard Concrete gate per tensor decides its channels

    def attach(self, net):
        return hard_concrete_gated(self, net)

    def folds_gates(self):
        return self.options.post_prune_scale == "zhat"

    def kept_values(self, model, structure):
        if self.options.post_prune_scale == "zhat":
            return zhat_values(model, structure)
        return super().kept_values(model, structure)

    def hard_prune(self, model, structure):
        if self.options.post_prune_scale == "zhat":
            import copy

            device = next(model.net.parameters()).device
            gates = {n: FixedGate(v.to(device)) for n, v in zhat_values(model, structure).items()}
            # on a copy: attaching the fixed gates to model.net would replace the learned gates' hooks
            # in the caller's network (it would then compute with the frozen values)
            net = strip_gates(copy.deepcopy(model.net))
            net.__dict__.pop("_prunelab_spec", None)
            return compact(GatedModel(net, gates, model.spec), structure)
        return compact(model.net, structure)


@register("lzr")
class L0Regularization(HardConcreteMethod):
    learns = True
    Options = LzrOptions
    budget_tolerance = None  # threshold selection: the cost is what lambda reached (L2)
    needs_budget = False  # sweep lambda instead (L2); select: budget needs one

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.select == "budget":  # the budget solver's global ranking meets it
            self.budget_tolerance = Method.budget_tolerance
            self.needs_budget = True

    def param_groups(self, trainer):
        gates = [g.log_alpha for _, g in trainer.model.items()]
        return [ParamGroup("gates", gates, optimizer="adam", lr=self.options.gate_lr, schedule="main")]

    def loss_terms(self, trainer, batch):
        return {"l0": self.options.lambda_ * hc_sparsity(trainer.model, self.options.weight)}

    def end_epoch(self, trainer, epoch):
        from ..counting import count

        s = Structure.from_gates(trainer.model)
        c, c0 = count(trainer.model.spec, s), count(trainer.model.spec)
        return {"alive_fraction": sum(len(v) for v in s.alive.values()) / sum(s.channels.values()),
                "v_factor": c0.volume / max(c.volume, 1), "f_factor": c0.macs / max(c.macs, 1)}

    def select(self, model, spec, budget):
        if self.options.select == "budget":
            if budget is None:
                raise ConfigError("lzr with select: budget needs a budget")
            scores = {n: g.log_alpha.detach().double().cpu().numpy() for n, g in model.items()}
            s, rep = solve_budget(spec, scores, budget, min_channels=self.options.min_channels,
                                  model_kwargs=model.prunelab_kwargs)
            return s, SelectReport.from_budget(rep, s, rule="log alpha ranking + bisection on the budget")
        s = Structure.from_gates(model)
        # a layer whose gates all closed would disconnect the network: revive its best channel
        s = ensure_connected(s, spec, {n: g.log_alpha.detach().cpu().numpy() for n, g in model.items()})
        metric = budget.metric if budget is not None else "macs"
        from ..pruning.budget import measure

        achieved = measure(spec, s, metric)
        target = budget.keep * measure(spec, Structure.full(spec, names=[]), metric) if budget is not None else None
        return s, SelectReport("deterministic gate > 0 (log alpha > -2.398)", metric, target, achieved, s.counts(),
                               {"revived": s.meta.get("revived", [])})
