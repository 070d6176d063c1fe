"""``random``: channels chosen uniformly at random (BAR supplement §3.2; docs/decisions.md §5.6).

By default every layer keeps the same fraction (``mode: uniform``), as BAR's random baseline does;
``mode: global`` ranks seeded random scores over all layers instead.
"""

from __future__ import annotations

import numpy as np

from . import register
from .base import Method
from .options import Literal, MethodOptions, dataclass


@dataclass
class RandomOptions(MethodOptions):
    """``seed``: the random scores' seed."""

    seed: int = 0
    mode: Literal["global", "uniform"] = "uniform"


@register("random")
class RandomPruning(Method):
    """Seeded random channel scores."""

    Options = RandomOptions
    # uniform mode keeps the same fraction of every layer: the budget is met in steps of about one
    # channel per layer at once, so it lands further below the target than a global ranking
    budget_tolerance = 0.05

    def scores(self, model, spec):
        rng = np.random.default_rng(self.options.seed)
        return {t.name: rng.random(t.channels) for t in self.tensors(spec)}
