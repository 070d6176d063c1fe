"""``slimming``: Network Slimming (Liu et al. 2017; docs/decisions.md §5.4).

Learn stage: train with an L1 penalty ``s * sum |gamma|`` on the BatchNorm scales of the gated
tensors (s = 1e-4 for VGG, 1e-5 for ResNets in NS's code; default 1e-4). Select: one global
threshold on |gamma| over all those BNs, bisected so the pruned network meets the budget (NS prunes a
fixed ``percent``; bisecting it on MACs is the package's budget rule). Post-activation basic-block
ResNets prune ``mid`` only (L4). Channels without a BatchNorm (a conv with a bias, a linear layer,
as traced models may have) have no scale to penalise: they are left unpruned.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import register
from .base import Method, bn_of
from .options import MethodOptions, dataclass


@dataclass
class SlimmingOptions(MethodOptions):
    """``sparsity``: the weight s of the L1 penalty on BN scales."""

    sparsity: float = 1e-4

    def check(self):
        super().check()
        if self.sparsity < 0:
            raise ConfigError(f"slimming option sparsity must be >= 0, got {self.sparsity}")


@register("slimming")
class NetworkSlimming(Method):
    learns = True
    Options = SlimmingOptions

    def tensors(self, spec):
        # the tensors whose gate sits on a BatchNorm after the conv (GatedTensor.module is then not the conv)
        return [t for t in super().tensors(spec) if t.module != t.conv]

    def check(self, spec, budget):
        if super().tensors(spec) and not self.tensors(spec):
            raise ConfigError(f"slimming penalises BatchNorm scales, and no tensor of slots {list(self.slots(spec))} "
                              f"of {spec.model} has a BatchNorm after its conv; set method.slots to slots with one "
                              f"(of {spec.slots()}) or use another method (l1)")
        super().check(spec, budget)

    def setup(self, trainer):
        from ..models.registry import describe

        net = trainer.model
        spec = describe(net)
        self._bns = [bn_of(net, spec, t.name) for t in self.tensors(spec)]

    def loss_terms(self, trainer, batch):
        l1 = sum(bn.weight.abs().sum() for bn in self._bns)
        return {"bn_l1": self.options.sparsity * l1}

    def scores(self, model, spec):
        return {t.name: bn_of(model, spec, t.name).weight.detach().abs().double().cpu().numpy()
                for t in self.tensors(spec)}

    def end_epoch(self, trainer, epoch):
        with torch.no_grad():
            g = torch.cat([bn.weight.detach().abs().flatten() for bn in self._bns])
        return {"bn_gamma_mean": float(g.mean()), "bn_gamma_below_1e-2": float((g < 1e-2).float().mean())}
