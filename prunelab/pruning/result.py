"""What a pruning method produces at the end of its learn stage: a :class:`PrunedResult`.

Three kinds share one small interface (``module``, ``report``, ``cost()``, ``save(dir)``, and
:func:`load_result` dispatched by the ``kind`` tag of the saved ``plan.json``):

* :class:`StaticResult` (``kind: static``): one structure and its physically compact network
  (random, l1, slimming, lzr, bar, pfs). ``plan.json`` is the structure plan, ``weights.pt`` the
  compact weights, as before.
* :class:`DynamicResult` (``kind: dynamic``): the gated network itself, whose masks depend on the
  input (per-instance gates, ManiDP). Its cost is a distribution over inputs, measured on a loader.
* :class:`GeneratedResult` (``kind: generated``): the gated network with the controller that generates
  its masks (DDNP's generators). Masks that do not depend on the input give one static cost, and
  :meth:`GeneratedResult.to_static` compacts them.

Gated results are rebuilt from the method config saved in the plan: the method package registers the
builder (:func:`set_gated_builder`), so this module needs no method.

Every result carries a :class:`SelectReport`: the fields all methods share (rule, metric, target,
achieved, per-tensor widths) plus a method-specific ``extra``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..counting import count
from ..errors import CheckpointError, PrunelabError
from ..models.registry import create, describe, ensure_model, rebuild_info
from ..plugins import load_recorded
from ..utils import atomic_write_bytes, atomic_write_text, dumps_json, to_jsonable
from .compact import load_compact, save_compact
from .gates import GatedModel
from .structure import Structure

RESULT_FORMAT = "prunelab-result-1"
METRICS = ("macs", "flops", "params", "volume")


# --------------------------------------------------------------------------------------------------
# the report


@dataclass
class SelectReport:
    """How a structure (or a dynamic policy) was chosen, in fields every method shares.

    Attributes:
        rule: how the channels were chosen, in words ("global ranking + bisection", "gate > 0", ...).
        metric: the budget's metric (``macs``, ``flops``, ``volume``, ``params``), None without a budget.
        target: the budget in ``metric`` units (None without one).
        achieved: the selected network's cost in ``metric`` units (for a dynamic result: the mean).
        widths: alive channels per gated tensor (for a dynamic result: the upper bound).
        extra: method-specific fields (the budget solver's full report, BAR's factors, PFS's gates, ...).
    """

    rule: str
    metric: str | None = None
    target: float | None = None
    achieved: float | None = None
    widths: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def budget_met(self) -> bool | None:
        """``achieved <= target`` (to float rounding); None without a budget."""
        if self.target is None or self.achieved is None:
            return None
        return bool(self.achieved <= self.target * (1 + 1e-9))

    def to_dict(self) -> dict:
        """One flat record (the extra fields first, the shared ones win), as ``result.json`` keeps it."""
        return to_jsonable({**self.extra, "rule": self.rule, "metric": self.metric, "target": self.target,
                            "achieved": self.achieved, "widths": dict(self.widths)})

    @classmethod
    def from_dict(cls, d: dict) -> "SelectReport":
        d = dict(d or {})
        shared = {k: d.pop(k, None) for k in ("rule", "metric", "target", "achieved", "widths")}
        return cls(shared["rule"] or "", shared["metric"], shared["target"], shared["achieved"],
                   dict(shared["widths"] or {}), d)

    @classmethod
    def from_budget(cls, report: dict, structure: Structure, rule: str = "global ranking + bisection on the budget",
                    **extra) -> "SelectReport":
        """Wrap the report of :func:`prunelab.pruning.budget.solve_budget`."""
        return cls(rule, report.get("metric"), report.get("target"), report.get("achieved"), structure.counts(),
                   {**report, **extra})


@dataclass
class CostSummary:
    """The cost of a result: one count (static) or a distribution over inputs (dynamic).

    ``macs``/``flops``/``params``/``volume`` are the values (the means, for a dynamic result);
    ``per_instance`` holds the per-input arrays of a dynamic result (None for a static one).
    """

    kind: str
    macs: float
    flops: float
    params: float
    volume: float
    convention: str
    per_instance: dict | None = None

    def quantiles(self, metric: str = "macs", qs=(0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)) -> dict:
        """Quantiles of the per-instance cost (a static cost gives the same value at every q)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if self.per_instance is None:
            return {q: float(getattr(self, metric)) for q in qs}
        v = np.asarray(self.per_instance[metric], dtype=np.float64)
        return {q: float(np.quantile(v, q)) for q in qs}

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "macs": self.macs, "flops": self.flops, "params": self.params,
               "volume": self.volume, "convention": self.convention}
        if self.per_instance is not None:
            v = np.asarray(self.per_instance["macs"], dtype=np.float64)
            out["macs_std"] = float(v.std())
            out["macs_quantiles"] = {str(q): x for q, x in self.quantiles("macs").items()}
            out["instances"] = int(v.size)
        return to_jsonable(out)


def _static_cost(spec, structure, residual="mixed") -> CostSummary:
    c = count(spec, structure, residual=residual)  # exact integer counts
    return CostSummary("static", c.macs, c.flops, c.params, c.volume, c.convention)


# --------------------------------------------------------------------------------------------------
# the results


class PrunedResult:
    """Base class. Subclasses set ``kind`` and implement ``cost``, ``save`` and ``_load``."""

    kind: ClassVar[str] = ""
    final_dir: ClassVar[str] = "final"  # where a pipeline keeps the fine-tuned result in its run directory

    module: nn.Module
    report: SelectReport

    def cost(self, loader=None, *, residual: str = "mixed") -> CostSummary:
        raise NotImplementedError

    def save(self, folder) -> Path:
        raise NotImplementedError

    @classmethod
    def _load(cls, folder: Path, plan: dict, map_location) -> "PrunedResult":
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(kind={self.kind!r}, rule={self.report.rule!r})"


class StaticResult(PrunedResult):
    """One structure and its compact network (``module``)."""

    kind = "static"
    final_dir = "compact"

    def __init__(self, module: nn.Module, structure: Structure, report: SelectReport):
        self.module, self.structure, self.report = module, structure, report
        self._spec = None

    @property
    def spec(self):
        if self._spec is None:
            self._spec = describe(create(self.structure.model, **self.structure.model_kwargs))
        return self._spec

    def cost(self, loader=None, *, residual: str = "mixed") -> CostSummary:
        """The counted cost of the structure (a loader is accepted and not needed)."""
        return _static_cost(self.spec, self.structure, residual)

    def save(self, folder) -> Path:
        """``plan.json`` (the structure, ``kind: static``) and ``weights.pt`` (the compact weights)."""
        return save_compact(self.module, self.structure, folder)

    @classmethod
    def _load(cls, folder, plan, map_location):
        structure = Structure.from_dict(plan)
        return cls(load_compact(folder, map_location=map_location), structure,
                   SelectReport.from_dict(structure.meta.get("report", {"rule": "loaded"})))


_GATED_BUILDER: list[Callable] = []


def set_gated_builder(fn: Callable[[dict], GatedModel]) -> None:
    """Register ``fn(plan) -> GatedModel`` that rebuilds a gated result's network (done by
    :mod:`prunelab.methods`, which knows how each method attaches its gates and controller)."""
    _GATED_BUILDER[:] = [fn]


class _GatedResult(PrunedResult):
    """A result whose module is the gated network itself (dynamic and generated kinds)."""

    def __init__(self, module: GatedModel, report: SelectReport, method: dict):
        if not isinstance(module, GatedModel):
            raise TypeError(f"a {self.kind} result holds a GatedModel, got {type(module).__name__}")
        self.module, self.report, self.method = module, report, dict(method)

    @property
    def spec(self):
        return self.module.spec

    def plan(self) -> dict:
        """What rebuilds the result: the model (with how to rebuild one from outside the package,
        :func:`~prunelab.models.rebuild_info`), the method config, the gated tensors and the report."""
        name = self.module.prunelab_name
        return {"format": RESULT_FORMAT, "kind": self.kind, "model": name,
                "model_kwargs": dict(self.module.prunelab_kwargs), **rebuild_info(name), "method": self.method,
                "gated_tensors": list(self.module.gate_names), "report": self.report.to_dict()}

    def save(self, folder) -> Path:
        """``plan.json`` (kind, model, the method config that rebuilds the gates) and ``weights.pt``
        (the gated network's state dict, gates and controller included)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "plan.json", dumps_json(self.plan()) + "\n")
        buf = io.BytesIO()
        torch.save({"format": f"prunelab-{self.kind}-1", "model_name": self.module.prunelab_name,
                    "state_dict": self.module.state_dict()}, buf)
        atomic_write_bytes(folder / "weights.pt", buf.getvalue())
        return folder

    @classmethod
    def _load(cls, folder, plan, map_location):
        from ..runfiles import load_checkpoint

        if not _GATED_BUILDER:
            raise PrunelabError(f"loading a {cls.kind} result needs the method registry: import prunelab.methods first")
        gated = _GATED_BUILDER[0](plan)
        payload = load_checkpoint(folder / "weights.pt", map_location)
        try:
            gated.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{folder}/weights.pt does not fit its plan ({str(e).splitlines()[0][:160]})") from None
        return cls(gated.to(map_location).eval(), SelectReport.from_dict(plan.get("report")), plan["method"])


class DynamicResult(_GatedResult):
    """Per-instance masks at inference: ``module`` is the gated network with per-instance gates."""

    kind = "dynamic"

    @torch.no_grad()
    def per_instance_widths(self, loader, max_batches: int | None = None) -> dict[str, np.ndarray]:
        """Alive channels of every gated tensor for every input of ``loader`` (eval mode)."""
        m = self.module
        was = m.training
        m.eval()
        out: dict[str, list] = {n: [] for n in m.gate_names}
        try:
            for i, (x, *_rest) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                m(x)
                for n, g in m.items():
                    if g.per_instance:
                        out[n].append(g.alive_per_instance().sum(1).cpu().numpy())
                    else:
                        out[n].append(np.full(len(x), int(g.alive().sum())))
        finally:
            m.train(was)
        if not out or not out[m.gate_names[0]]:
            raise PrunelabError("the loader gave no batch: a dynamic cost is measured over inputs")
        return {n: np.concatenate(v) for n, v in out.items()}

    def cost(self, loader=None, *, residual: str = "mixed", max_batches: int | None = None) -> CostSummary:
        """Per-instance MACs/FLOPs/params/V over ``loader`` (each input's alive widths, counted)."""
        if loader is None:
            raise PrunelabError("a dynamic result's cost is measured over inputs: pass a loader (e.g. the test set)")
        widths = self.per_instance_widths(loader, max_batches)
        c = count(self.spec, widths=widths, residual=residual)
        per = {"macs": np.asarray(c.macs, dtype=np.float64), "params": np.asarray(c.params, dtype=np.float64),
               "volume": np.asarray(c.volume, dtype=np.float64)}
        per["flops"] = 2 * per["macs"]
        return CostSummary("dynamic", float(per["macs"].mean()), float(per["flops"].mean()), float(per["params"].mean()),
                           float(per["volume"].mean()), c.convention + "; mean over inputs", per)


class GeneratedResult(_GatedResult):
    """Masks produced by a network (the controller): ``module`` is the gated network with it."""

    kind = "generated"

    @torch.no_grad()
    def structure(self) -> Structure:
        """The structure the controller generates in eval mode (one forward pass of a zero input)."""
        m = self.module
        was = m.training
        m.eval()
        try:
            p = next(m.parameters())
            m(torch.zeros(1, *m.spec.input_size, device=p.device, dtype=p.dtype))
            if m.per_instance:
                raise PrunelabError("this generated result has per-instance masks; use a dynamic result")
            return Structure.from_gates(m)
        finally:
            m.train(was)

    def cost(self, loader=None, *, residual: str = "mixed") -> CostSummary:
        return _static_cost(self.spec, self.structure(), residual)

    def to_static(self) -> StaticResult:
        """Compact the generated masks into one smaller network."""
        from .compact import compact

        s = self.structure()
        return StaticResult(compact(self.module, s), s, self.report)


KINDS: dict[str, type] = {"static": StaticResult, "dynamic": DynamicResult, "generated": GeneratedResult}


def ensure_plan_model(plan: dict, path) -> None:
    """Import what the plan recorded (``--import``s, the builder of a model from outside the package:
    kept in ``meta`` by a static plan, at the top by a gated one), so a fresh process rebuilds its model
    and method; one line naming the plan when that fails."""
    if not isinstance(plan, dict):
        return
    rec = plan.get("meta") if plan.get("kind", "static") == "static" else plan
    rec = rec if isinstance(rec, dict) else {}
    name = plan.get("model")
    if not isinstance(name, str) or not ("model_source" in rec or "imports" in rec):
        return
    try:
        if plan.get("kind", "static") != "static":  # a gated result rebuilds its method too: it may be a plugin's
            load_recorded(rec.get("imports"), f"{path}")
        ensure_model(name, rec.get("model_source"), rec.get("imports"), where=f"{path}")
    except PrunelabError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def load_result(folder, map_location="cpu") -> PrunedResult:
    """Load a saved result, dispatched on the ``kind`` tag of ``folder/plan.json`` (no tag: static)."""
    folder = Path(folder)
    p = folder / "plan.json"
    if not p.is_file():
        raise CheckpointError(f"{folder} holds no saved result (no plan.json)")
    try:
        plan = json.loads(p.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p} is corrupt ({type(e).__name__})") from None
    if not isinstance(plan, dict):
        raise CheckpointError(f"{p} is not a prunelab plan")
    kind = plan.get("kind", "static")
    if not isinstance(kind, str) or kind not in KINDS:
        raise CheckpointError(f"{p} has result kind {kind!r}; known kinds: {', '.join(KINDS)}")
    ensure_plan_model(plan, p)
    try:
        return KINDS[kind]._load(folder, plan, map_location)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{p} or its weights are damaged ({type(e).__name__}: {str(e)[:80]})") from None
