"""``l1``: weight magnitude, the L1 norm of the filter producing each channel (Li et al. 2017; WM, L5).

``normalize`` divides each layer's norms by their mean (default), so one global ranking compares
layers of different fan-in fairly, as Torch-Pruning's global magnitude pruner does; ``none`` ranks
raw norms; ``max`` divides by the layer maximum. With ``groups: trunk`` the contributors of a
residual trunk share one mask, scored by the sum of their filters' norms (L6).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import register
from .base import Method, conv_of


@register("l1")
class L1Magnitude(Method):
    defaults = {"normalize": "mean"}

    def scores(self, model, spec):
        how = self.options["normalize"]
        if how not in ("none", "mean", "max"):
            raise ConfigError(f"l1 option normalize must be none, mean or max, got {how!r}")
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
