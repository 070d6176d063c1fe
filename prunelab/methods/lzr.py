"""``lzr``: L0 regularisation with Hard Concrete gates (Louizos, Welling, Kingma 2018), in BAR's setting.

One Hard Concrete gate per feature map (methods.md §4.2, §5.1): log alpha ~ U(0, 0.01), beta, gamma,
zeta = 2/3, -0.1, 1.1. Learn stage loss: ``lambda * L_HC`` with ``L_HC = sum P(z != 0)`` (unweighted,
BAR's Eq. 5); ``weight: area`` weights each gate by its tensor's H*W (expected activation volume),
``weight: params`` by the parameters of its filter (Louizos's per-weight L0 cost, without its
weight-decay scaling). There is no budget: sweep ``lambda`` and report the factors reached (L2);
``select: budget`` instead ranks channels by log alpha and meets a budget.

Hard prune: keep channels whose deterministic gate is > 0 (log alpha > -2.398), then fine-tune with
kept maps multiplied by 1 (B9; ``post_prune_scale: zhat`` keeps the frozen gate values).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..pruning.budget import solve_budget
from ..pruning.compact import compact
from ..pruning.gates import FixedGate, GatedModel, HardConcreteGate, attach_gates
from ..pruning.structure import Structure, ensure_connected
from ..train.trainer import ParamGroup
from . import register
from .base import Method


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


@register("lzr")
class L0Regularization(Method):
    learns = True
    defaults = {"lambda": 1e-5, "weight": "none", "gate_lr": 1e-3, "init": ("uniform", 0.0, 0.01),
                "noise": "batch", "select": "threshold", "post_prune_scale": "one", "kd": None}
    slot_defaults = {"resnet_cifar": ("stem", "mid", "delta", "proj"), "vgg": ("conv",),
                     "mobilenet": ("stem", "expand", "final"), "resnet_imagenet": ("mid1", "mid2")}

    def attach(self, net):
        from ..models.registry import describe

        spec = describe(net)
        slots = [s for s in self.slots(spec) if s in spec.slots()]
        init = tuple(self.options["init"])
        return attach_gates(net, lambda t: HardConcreteGate(t.channels, init=init, noise=self.options["noise"]), slots)

    def param_groups(self, trainer):
        gates = [g.log_alpha for _, g in trainer.model.items()]
        return [ParamGroup("gates", gates, optimizer="adam", lr=self.options["gate_lr"], schedule="main")]

    def loss_terms(self, trainer, batch):
        return {"l0": self.options["lambda"] * hc_sparsity(trainer.model, self.options["weight"])}

    def end_epoch(self, trainer, epoch):
        from ..counting import count

        s = Structure.from_gates(trainer.model)
        c, c0 = count(trainer.model.spec, s), count(trainer.model.spec)
        return {"alive_fraction": sum(len(v) for v in s.alive.values()) / sum(s.channels.values()),
                "v_factor": c0.volume / max(c.volume, 1), "f_factor": c0.macs / max(c.macs, 1)}

    def select(self, model, spec, budget):
        if self.options["select"] == "budget":
            if budget is None:
                raise ConfigError("lzr with select: budget needs a budget")
            scores = {n: g.log_alpha.detach().double().cpu().numpy() for n, g in model.items()}
            return solve_budget(spec, scores, budget, min_channels=self.options["min_channels"],
                                model_kwargs=model.prunelab_kwargs)
        if self.options["select"] != "threshold":
            raise ConfigError("lzr option select must be threshold or budget")
        s = Structure.from_gates(model)
        # a layer whose gates all closed would disconnect the network: revive its best channel
        s = ensure_connected(s, spec, {n: g.log_alpha.detach().cpu().numpy() for n, g in model.items()})
        return s, {"rule": "deterministic gate > 0 (log alpha > -2.398)", "revived": s.meta.get("revived", [])}

    def hard_prune(self, model, structure):
        if self.options["post_prune_scale"] == "zhat":
            gates = {n: FixedGate(g.values().detach() * torch.as_tensor(structure.masks()[n], dtype=torch.float32))
                     for n, g in model.items()}
            return compact(GatedModel(model.net, gates, model.spec), structure)
        return compact(model.net, structure)
