"""``pfs``: Pruning from Scratch (Wang et al., AAAI 2020; docs/decisions.md §3).

1. Scalar gates (init 1) after the BN of the gated convs: CIFAR ResNets ``mid`` (block middles),
   VGG every conv, MobileNet stem + expansions + final 1x1 (the released code's placement; the
   supplement names only the first BN of each inverted residual, whose channels are these).
2. The network's weights stay frozen at their initial (random, or any checkpoint's) values with BN in
   **train mode** (batch statistics, running statistics keep updating); only the gates learn:
   ``CE + lambda * (mean |gate| - r)^2``, gates clamped to [0, 1] after every step, Adam lr 0.01.
   ``r`` is a *density* target (the code calls it "sparsity"; P4), r = 1 - pruning ratio.
3. Save rule: at each epoch's evaluation on the held-out split (45k/5k), keep the gates if their
   density (fraction of gates != 0) is <= r and the held-out accuracy is the best so far; if that never
   happens, keep the final gates.
4. Structure: one global ranking of the gates with MAC bisection relative to the **unexpanded**
   default-width network (P5; a model outside the registry, described by tracing, declares no
   default width and is its own reference); ties broken by (gate desc, layer, channel) (P1), at
   least one channel per layer (P2), the largest count that fits (P3; ``refine: true`` adds channels
   one by one).
5. The pruned network is built from the widths only and trained from scratch (``finetune: {reinit:
   true}``), Scratch-B epochs at paper scale.
"""

from __future__ import annotations

import numpy as np
import torch

from ..counting import count
from ..errors import ConfigError
from ..hooks import ParamGroup
from ..models.registry import create, get_entry, list_models
from ..pruning.budget import solve_budget
from ..pruning.gates import ScalarGate, attach_gates
from ..pruning.result import SelectReport
from . import register
from .base import Method
from .options import Literal, MethodOptions, dataclass, field


@dataclass
class PfsOptions(MethodOptions):
    """PFS's options.

    ``density_target`` (alias ``r``, P4): the target mean gate, 1 - pruning ratio; ``lambda``: weight of
    ``(mean |gate| - r)^2``; ``gate_lr``: Adam on the gates; ``refine``: add channels one by one after the
    bisection (P3); ``count_pool``: count average pooling in MACs (PFS's counter); ``reference``:
    ``unexpanded`` measures the budget against the default-width network (P5), ``model`` against this one;
    ``stop_when_saved``: end gate learning at the first epoch the save rule keeps gates (the cpu protocol;
    the official code runs all its epochs and keeps the best saved ones).
    """

    density_target: float = 0.5
    r: float | None = None
    lambda_: float = field(default=0.5, metadata={"key": "lambda"})
    gate_lr: float = 0.01
    refine: bool = False
    count_pool: bool = False
    reference: Literal["unexpanded", "model"] = "unexpanded"
    stop_when_saved: bool = False

    def check(self):
        super().check()
        if self.r is not None:  # alias of density_target (P4)
            self.density_target = self.r
        if not 0 < self.density_target <= 1:
            raise ConfigError(f"pfs density_target (r) must be in (0, 1], got {self.density_target}")
        if self.lambda_ < 0 or self.gate_lr <= 0:
            raise ConfigError("pfs needs lambda >= 0 and gate_lr > 0")


@register("pfs")
class PruningFromScratch(Method):
    learns = True
    Options = PfsOptions
    # P3: the longest prefix of the global gate ranking that fits, so the cost can stop one large
    # channel short of the target (``refine: true`` adds the channels that still fit)
    budget_tolerance = 0.03

    def __init__(self, **options):
        super().__init__(**options)
        self.best = None  # (held-out accuracy, epoch, gate values) saved by the save rule
        self.log: list[dict] = []

    @property
    def density_target(self) -> float:
        return float(self.options.density_target)

    def prepare(self, spec, budget):
        super().prepare(spec, budget)
        if budget is not None and budget.metric not in ("macs", "flops"):
            raise ConfigError(f"pfs prunes to a MAC (FLOP) budget, got budget.metric {budget.metric!r}")

    def attach(self, net):
        from ..models.registry import describe

        self._net_kwargs = dict(getattr(net, "prunelab_kwargs", {}))
        return attach_gates(net, lambda t: ScalarGate(t.channels, 1.0), self.slots(describe(net)))

    # -- gate learning -----------------------------------------------------------------------------
    def setup(self, trainer):
        for p in trainer.model.net.parameters():  # weights, BN affine and classifier stay frozen
            p.requires_grad_(False)
        self._gates = [g.gate for _, g in trainer.model.items()]

    def param_groups(self, trainer):
        return [ParamGroup("gates", self._gates, optimizer="adam", lr=self.options.gate_lr, schedule="constant")]

    def mean_gate(self) -> torch.Tensor:
        return torch.cat([g.abs() for g in self._gates]).mean()

    def loss_terms(self, trainer, batch):
        return {"density_reg": self.options.lambda_ * (self.mean_gate() - self.density_target) ** 2}

    def after_step(self, trainer, batch):
        with torch.no_grad():
            for g in self._gates:
                g.clamp_(0.0, 1.0)

    def density(self) -> float:
        with torch.no_grad():
            return float(torch.cat([(g != 0).float() for g in self._gates]).mean())

    def end_epoch(self, trainer, epoch):
        d = self.density()
        if "val" not in trainer.last_eval and "test" in trainer.last_eval:
            raise ConfigError("pfs keeps the gates of its best held-out epoch and never selects on the test set: "
                              "give the learn stage a held-out split (data.holdout, e.g. 5000 as the paper's 45k/5k)")
        held = trainer.last_eval.get("val", {}).get("acc")
        saved = False
        if held is not None and d <= self.density_target and (self.best is None or held > self.best[0]):
            self.best = (held, epoch + 1, [g.detach().clone().cpu() for g in self._gates])
            saved = True
        rec = {"gate_density": d, "mean_gate": float(self.mean_gate().detach()), "gates_saved": saved}
        self.log.append({"epoch": epoch + 1, **rec, "heldout_acc": held})
        return rec

    def should_stop(self, trainer):
        return self.options.stop_when_saved and self.best is not None

    def state_dict(self):
        out = {"log": self.log}
        if self.best is not None:
            out["best_acc"], out["best_epoch"] = self.best[0], self.best[1]
            out["best_gates"] = self.best[2]
        return out

    def load_state_dict(self, state):
        self.log = list(state.get("log", []))
        if "best_gates" in state:
            self.best = (state["best_acc"], state["best_epoch"], list(state["best_gates"]))

    # -- structure ---------------------------------------------------------------------------------
    def gate_values(self, model) -> dict[str, np.ndarray]:
        """Gate values to rank: the saved ones (save rule) or the current ones."""
        if self.best is not None:
            return {n: v.double().numpy() for (n, _), v in zip(model.items(), self.best[2])}
        return {n: g.gate.detach().double().cpu().numpy() for n, g in model.items()}

    def reference_network(self, spec) -> str:
        """``unexpanded`` (the registry's default-width network) or ``model`` (this one): a model outside
        the registry (described by tracing) declares no default width, so it is its own reference."""
        return "unexpanded" if self.options.reference == "unexpanded" and spec.model in list_models() else "model"

    def reference_macs(self, spec) -> float:
        """MACs of the unexpanded default-width network (the budget's 100%; the model registry declares
        its default-width arguments), or of this model (:meth:`reference_network`)."""
        if self.reference_network(spec) == "model":
            return float(count(spec, count_pool=self.options.count_pool).macs)
        kw = {**self._net_kwargs, **get_entry(spec.model).reference_kwargs}
        return float(count(create(spec.model, **kw), count_pool=self.options.count_pool).macs)

    def select(self, model, spec, budget):
        if budget is None:
            raise ConfigError("pfs needs a budget, e.g. budget: {metric: macs, reduction: 0.5}")
        if budget.metric not in ("macs", "flops"):
            raise ConfigError("pfs prunes to a MAC (FLOP) budget")
        scores = self.gate_values(model)
        reference = self.reference_macs(spec) * (2 if budget.metric == "flops" else 1)
        structure, report = solve_budget(spec, scores, budget, mode="global", groups=self.groups(spec),
                                         min_channels=self.options.min_channels, count_pool=self.options.count_pool,
                                         reference=reference, refine=self.options.refine, model_kwargs=self._net_kwargs)
        gates_from = (f"epoch {self.best[1]} (held-out acc {self.best[0]:.4f}, density <= r)"
                      if self.best is not None else "final gates (save rule never met)")
        structure.meta["widths"] = structure.counts()
        return structure, SelectReport.from_budget(
            report, structure, rule="global gate ranking + MAC bisection vs " + (
                "the unexpanded network" if self.reference_network(spec) == "unexpanded" else "the model itself"),
            gates_from=gates_from, nonzero_gates=int(sum((v != 0).sum() for v in scores.values())),
            density_target=self.density_target, reference_network=self.reference_network(spec))
