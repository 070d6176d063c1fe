"""``plan``: prune to a structure given as a JSON plan, then train it like any other static result.

The control for methods whose structure is the question: the same checkpoint, epochs and schedule
with a structure chosen elsewhere. ManiDP's *static mask* baseline (docs/decisions.md M15) is a plan
whose per-layer widths are the dynamic network's mean kept counts and whose channels are the ones the
dynamic network kept most often; the explorer's exported plans and ``prunelab compact`` plans work too.

    method: {name: plan, plan: runs/x/static_plan.json}

No budget and no learning stage: :meth:`select` reads, validates (against the model's spec) and returns
the plan; the budget report gives the plan's counted MACs against the dense network's.
"""

from __future__ import annotations

from ..counting import count
from ..errors import ConfigError
from ..pruning.result import SelectReport
from ..pruning.structure import Structure
from . import register
from .base import Method
from .options import MethodOptions, dataclass


@dataclass
class PlanOptions(MethodOptions):
    """``plan``: path of the structure plan (a file written by ``Structure.save``)."""

    plan: str = ""

    def check(self):
        super().check()
        if not self.plan:
            raise ConfigError("method plan needs the plan file: method: {name: plan, plan: PATH}")


@register("plan")
class GivenPlan(Method):
    Options = PlanOptions
    needs_budget = False
    budget_tolerance = None

    def structure(self, spec) -> Structure:
        """The plan, checked against ``spec`` (model, tensor names and widths, alive sets)."""
        return Structure.load(self.options.plan).check(spec)

    def check(self, spec, budget):
        self.structure(spec)  # a bad plan stops the run before anything is written
        super().check(spec, budget)

    def tensors(self, spec):
        return [spec.tensor(n) for n in self.structure(spec).alive]

    def select(self, model, spec, budget):
        structure = self.structure(spec)
        dense, kept = count(spec).macs, count(spec, structure).macs
        report = SelectReport(f"plan {self.options.plan}", "macs", None, kept, structure.counts(),
                              {"plan": self.options.plan, "keep": kept / dense, "dense_macs": dense})
        return structure, report
