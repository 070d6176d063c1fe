"""``bar``: Budget-Aware Regularization (Lemaire, Achkar, Jodoin, CVPR 2019; methods.md §4).

One Hard Concrete gate per feature map of every conv output (stem, ``mid``, ``delta`` and ``proj`` of
BAR's WRN), log alpha ~ U(0, 0.01), beta/gamma/zeta = 2/3, -0.1, 1.1. The objective is

    L = L_D + lambda * f(V; a, b(t)) * L_HC

* ``L_HC = sum P(z != 0)`` (supplement Eq. 5; unweighted by default, ``sparsity_weight: area`` weights
  each gate by its tensor's H*W [B4]);
* ``V`` = activation volume of the deterministic gates (mixed-connectivity accounting), recomputed
  every step and never differentiated; the F-trained variant uses FLOPs (a ``flops`` budget) [B17];
* ``f`` = budget barrier of methods.md §4.5: 0 while ``V <= a``, ``(V-a)^2 / ((b-a)(b-V))`` below
  ``b``, capped at 1e10 (an overshoot is logged) [unverified; B1, the unofficial re-implementation's
  form]; ``a = B (1 - margin)``;
* ``b(t) = (1 - T(t, d)) b0 + T(t, d) B`` with the sigmoidal transition T of supplement §1, d = 10,
  ``b0 = 1.01 V0``, ``t`` the fraction of the pruning phase elapsed, updated every step [B2, B3];
* ``L_D`` = Hinton distillation from a trained full network (T = 4, alpha = 0.9) [B6].

Hard prune at ẑ > 0, remove dead residual branches [B10], freeze Φ and fine-tune the compact
(mixed-connectivity) network with kept maps multiplied by 1 [B9], distillation kept.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.bar import barrier, transition
from ..counting import count
from ..errors import ConfigError
from ..pruning.budget import Budget
from ..pruning.gates import HardConcreteGate, attach_gates
from ..pruning.structure import Structure, clean, ensure_connected
from ..train.distill import Distillation
from ..train.trainer import ParamGroup
from . import register
from .base import Method
from .lzr import hc_sparsity


@register("bar")
class BudgetAwareRegularization(Method):
    learns = True
    defaults = {
        "lambda": 1e-5, "d": 10.0, "b0_factor": 1.01, "margin": 1e-4, "cap": 1e10, "gate_lr": 1e-3,
        "gate_optimizer": "adam",
        "sparsity_weight": "none", "teacher": None, "kd_temperature": 4.0, "kd_alpha": 0.9,
        "init": ("uniform", 0.0, 0.01), "noise": "batch", "clean": True, "post_prune_scale": "one",
    }
    slot_defaults = {"resnet_cifar": ("stem", "mid", "delta", "proj"), "vgg": ("conv",),
                     "mobilenet": ("stem", "expand", "final"), "resnet_imagenet": ("mid1", "mid2")}

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        if o["lambda"] < 0 or o["d"] <= 0 or o["b0_factor"] <= 1 or not 0 < o["margin"] < 1:
            raise ConfigError("bar needs lambda >= 0, d > 0, b0_factor > 1 (b0 must exceed V0) and 0 < margin < 1")
        self.trace: list = []
        self._teacher_hook = None
        self.overshoots = 0

    # -- gates -------------------------------------------------------------------------------------
    def attach(self, net):
        from ..models.registry import describe

        spec = describe(net)
        self._model_kwargs = dict(getattr(net, "prunelab_kwargs", {}))
        slots = [s for s in self.slots(spec) if s in spec.slots()]
        init = tuple(self.options["init"])
        return attach_gates(net, lambda t: HardConcreteGate(t.channels, init=init, noise=self.options["noise"]), slots)

    def prepare(self, spec, budget):
        super().prepare(spec, budget)
        if budget is None:
            raise ConfigError("bar needs a budget, e.g. budget: {metric: volume, factor: 4}")
        if budget.metric not in ("volume", "flops", "macs"):
            raise ConfigError(f"bar budgets are on volume or flops, got {budget.metric!r}")

    def _teacher(self):
        if self._teacher_hook is None and self.options["teacher"]:
            from .. import models
            from ..train.trainer import load_weights

            name = self.spec.model
            teacher = models.create(name, **self._model_kwargs)
            load_weights(teacher, self.options["teacher"])
            self._teacher_hook = Distillation(teacher, self.options["kd_temperature"], self.options["kd_alpha"])
        return self._teacher_hook

    def setup(self, trainer):
        gated = trainer.model
        spec = gated.spec
        self.metric = "volume" if self.budget.metric == "volume" else "flops"
        full = count(spec)
        self.v_full = float(full.volume if self.metric == "volume" else full.flops)
        self.target = self.budget.keep * self.v_full
        self.b0 = self.options["b0_factor"] * self.v_full
        self.a = self.target * (1 - self.options["margin"])
        self._areas = {n: spec.tensor(n).area for n, _ in gated.items()}
        kd = self._teacher()
        if kd is not None:
            kd.setup(trainer)

    def param_groups(self, trainer):
        gates = [g.log_alpha for _, g in trainer.model.items()]
        opt = self.options["gate_optimizer"]
        if opt not in ("adam", "sgd"):
            raise ConfigError(f"bar gate_optimizer must be adam or sgd, got {opt!r}")
        # Adam moves every gate by about gate_lr per step whatever its gradient's size; SGD keeps the
        # Hard Concrete loss's own weighting (saturated gates get a tiny sparsity gradient)
        return [ParamGroup("gates", gates, optimizer=opt, lr=self.options["gate_lr"], momentum=0.9, schedule="main")]

    # -- the budget --------------------------------------------------------------------------------
    def current_cost(self, gated) -> float:
        """V (or FLOPs) of the deterministic gates, mixed-connectivity accounting."""
        if self.metric == "volume":
            return float(sum(int(g.alive().sum()) * self._areas[n] for n, g in gated.items()))
        return float(count(gated.spec, Structure.from_gates(gated)).flops)

    def bound(self, progress: float) -> float:
        return float((1 - transition(progress, self.options["d"])) * self.b0 + transition(progress, self.options["d"]) * self.target)

    def loss_terms(self, trainer, batch):
        terms = {}
        kd = self._teacher()
        if kd is not None:
            terms.update(kd.loss_terms(trainer, batch))
        progress = trainer.global_step / max(1, trainer.total_steps)
        v = self.current_cost(trainer.model)
        b = self.bound(progress)
        f = float(barrier(v, self.a, b, cap=self.options["cap"]))
        if v >= b:
            self.overshoots += 1
        l_hc = hc_sparsity(trainer.model, self.options["sparsity_weight"])
        terms["sparsity"] = self.options["lambda"] * f * l_hc
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
    def select(self, model, spec, budget):
        s = Structure.from_gates(model)
        if self.options["clean"]:
            s = clean(s, spec)
        s = ensure_connected(s, spec, {n: g.log_alpha.detach().cpu().numpy() for n, g in model.items()})
        full = count(spec)
        c = count(spec, s)
        achieved = c.volume if (budget and budget.metric == "volume") else c.flops
        ref = full.volume if (budget and budget.metric == "volume") else full.flops
        report = {"rule": "deterministic gate > 0, dead branches removed" if self.options["clean"] else "gate > 0",
                  "metric": budget.metric if budget else None, "target_factor": budget.factor if budget else None,
                  "achieved_factor": ref / max(achieved, 1), "v_factor": full.volume / max(c.volume, 1),
                  "f_factor": full.macs / max(c.macs, 1), "removed_branches": s.meta.get("removed_branches", []),
                  "revived_channels": s.meta.get("revived", []),
                  "budget_met": bool(budget is None or achieved <= budget.keep * ref * (1 + 1e-9)),
                  "barrier_overshoots": self.overshoots}
        return s, report

    def hard_prune(self, model, structure):
        if self.options["post_prune_scale"] == "zhat":
            from .lzr import L0Regularization

            return L0Regularization(post_prune_scale="zhat").hard_prune(model, structure)
        return super().hard_prune(model, structure)

    def finetune_hooks(self):
        kd = self._teacher()
        return [kd] if kd is not None else []


def budget_of(factor: float, metric: str = "volume") -> Budget:
    return Budget(metric, 1.0 / factor)
