"""``random``: channels chosen uniformly at random (BAR supplement §3.2; methods.md §5.6).

By default every layer keeps the same fraction (``mode: uniform``), as BAR's random baseline does;
``mode: global`` ranks seeded random scores over all layers instead.
"""

from __future__ import annotations

import numpy as np

from . import register
from .base import Method


@register("random")
class RandomPruning(Method):
    """Seeded random channel scores."""

    defaults = {"seed": 0, "mode": "uniform"}

    def scores(self, model, spec):
        rng = np.random.default_rng(self.options["seed"])
        return {t.name: rng.random(t.channels) for t in self.tensors(spec)}
