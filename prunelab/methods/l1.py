"""``l1``: weight magnitude, the L1 norm of the filter producing each channel (Li et al. 2017; WM, L5).

``normalize`` divides each layer's norms by their mean (default), so one global ranking compares
layers of different fan-in fairly, as Torch-Pruning's global magnitude pruner does; ``none`` ranks
raw norms; ``max`` divides by the layer maximum. With ``groups: trunk`` the contributors of a
residual trunk share one mask, scored by the sum of their filters' norms (L6; docs/decisions.md).
"""

from __future__ import annotations

from . import register
from .base import Method, conv_of
from .options import Literal, MethodOptions, dataclass


@dataclass
class L1Options(MethodOptions):
    """``normalize``: how each layer's filter norms are scaled before the global ranking."""

    normalize: Literal["mean", "none", "max"] = "mean"


@register("l1")
class L1Magnitude(Method):
    Options = L1Options

    def scores(self, model, spec):
        how = self.options.normalize
        out = {}
        for t in self.tensors(spec):
            w = conv_of(model, spec, t.name).weight.detach()
            s = w.abs().flatten(1).sum(1).double().cpu().numpy()
            if how == "mean":
                s = s / max(s.mean(), 1e-12)
            elif how == "max":
                s = s / max(s.max(), 1e-12)
            out[t.name] = s
        return out
