"""``l1``: weight magnitude, the L1 norm of the filter producing each channel (Li et al. 2017; WM, L5).

``normalize`` divides each layer's norms by their mean (default), so one global ranking compares
layers of different fan-in fairly, as Torch-Pruning's global magnitude pruner does; ``none`` ranks
raw norms; ``max`` divides by the layer maximum. With ``groups: trunk`` the contributors of a
residual trunk share one mask, scored by the sum of their filters' norms (L6; docs/decisions.md).

The package's one weight-magnitude score is here: :func:`filter_l1` (one conv, a torch tensor) and
:func:`l1_scores` (every gated tensor of a network, float64 arrays). The ``l1`` method, BAR's WM
baseline (:data:`prunelab.workflows.iterative.SHRINK_RULES`) and DDNP's data-free Fix S scores
(``fix_s_score: l1``) all call them.
"""

from __future__ import annotations

from . import register
from .base import Method, conv_of
from .options import Literal, MethodOptions, dataclass


def filter_l1(conv):
    """The L1 norm of each output filter of ``conv`` (``sum |W[c, :, :, :]|`` per output channel ``c``),
    a 1-d torch tensor in the weight's dtype and on its device, without gradient."""
    return conv.weight.detach().abs().flatten(1).sum(1)


def l1_scores(model, spec, tensors=None) -> dict:
    """``{tensor name: float64 array}``: :func:`filter_l1` of the conv producing each gated tensor of
    ``model`` (a plain network or a :class:`~prunelab.pruning.gates.GatedModel` of it), summed in the
    weight's dtype, then converted to float64 on the CPU. ``tensors``: the tensors of ``spec`` to
    score (default: all of them)."""
    return {t.name: filter_l1(conv_of(model, spec, t.name)).double().cpu().numpy()
            for t in (spec.tensors if tensors is None else tensors)}


@dataclass
class L1Options(MethodOptions):
    """``normalize``: how each layer's filter norms are scaled before the global ranking."""

    normalize: Literal["mean", "none", "max"] = "mean"


@register("l1")
class L1Magnitude(Method):
    Options = L1Options

    def scores(self, model, spec):
        how = self.options.normalize
        out = l1_scores(model, spec, self.tensors(spec))
        for name, s in out.items():
            if how == "mean":
                out[name] = s / max(s.mean(), 1e-12)
            elif how == "max":
                out[name] = s / max(s.max(), 1e-12)
        return out
