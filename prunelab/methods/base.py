"""What a pruning method is: a training hook plus a way to turn what it learned into a pruned result.

A method is one file under ``prunelab/methods/`` holding a :class:`Method` subclass registered with
:func:`prunelab.methods.register`, and an ``Options`` dataclass (:mod:`.options`) for its settings.
The workflow (:mod:`prunelab.workflows.pipeline`) calls

1. :meth:`Method.attach` to put gates (and the method's controller, a learnable network that drives
   them) on the network; scoring-only methods attach none,
2. the shared :class:`~prunelab.train.trainer.Trainer` with the method as a hook when
   :attr:`Method.learns` (extra loss terms, parameter groups, callbacks). What ``select`` needs from
   training (best gates, counters) lives in :meth:`state_dict`, saved with the learn checkpoint,
3. :meth:`Method.finalize`, which returns a :class:`~prunelab.pruning.result.PrunedResult`: by default
   :meth:`select` (a structure and a :class:`~prunelab.pruning.result.SelectReport`) and
   :meth:`hard_prune` (the compact network), i.e. a static result. Dynamic and generated methods
   return their own kinds,
4. the fine-tuning stage, with :meth:`Method.finetune_hooks`.

:meth:`Method.masked` is the reference the conformance test holds the pruned module to: the dense
network with the structure's masks, computing what the compact network must compute in eval mode.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..hooks import Hook
from ..models.registry import describe
from ..models.spec import ModelSpec
from ..pruning.budget import Budget, solve_budget
from ..pruning.compact import compact
from ..pruning.gates import FixedGate, GatedModel
from ..pruning.result import PrunedResult, SelectReport, StaticResult
from ..pruning.structure import Structure
from .options import MethodOptions, options_dict, parse_options


class Method(Hook):
    """Base class. Subclasses set ``Options`` and override hooks; :func:`register` sets ``name``.

    Class attributes:
        learns: the method has a structure-learning training stage.
        Options: the options dataclass (checked when the method is made).
        slot_set: which of the model's declared default placements the gates go to
            (``"internal"``: block-internal channels; ``"outputs"``: every conv output).
        result_kind: the kind of :class:`PrunedResult` :meth:`finalize` returns.
        extracts: a generated result is extracted into its static network (hard masks, physically
            compact) before fine-tuning, which then trains that network alone (DDNP); otherwise the
            result's module is fine-tuned as it is.
        budget_tolerance: relative tolerance within which :meth:`finalize` meets a budget by
            selection; None when the budget is reached by training instead (BAR's barrier, L0's
            penalty), so that the selected cost depends on how long the method trained. A selection
            that ends outside it warns (:class:`OffBudgetWarning`) and says so in its report
            (``extra["off_budget"]``).
        honours_groups: :meth:`select` gives the contributors of a residual trunk one mask when
            ``groups: trunk`` is set (the budget solver's selections); False for methods whose gates
            decide each tensor on its own (BAR, L0, DDNP).
    """

    name: ClassVar[str] = "base"
    learns: ClassVar[bool] = False
    # False for a method whose learn stage only reads data and takes no optimisation step (hrank, chip)
    learn_trains: ClassVar[bool] = True
    Options: ClassVar[type] = MethodOptions
    slot_set: ClassVar[str] = "internal"
    result_kind: ClassVar[str] = "static"
    extracts: ClassVar[bool] = False
    budget_tolerance: ClassVar[float | None] = 0.01
    needs_budget: ClassVar[bool] = True
    honours_groups: ClassVar[bool] = True

    def __init__(self, **options):
        self.options = parse_options(self.Options, options, self.name)
        self.spec: ModelSpec | None = None
        self.budget: Budget | None = None

    def __repr__(self):
        return f"{type(self).__name__}({options_dict(self.options)})"

    def divergence_hint(self) -> str:
        """The method setting to lower when the loss diverges (named in the trainer's error)."""
        lam = getattr(self.options, "lambda_", None)
        lr = getattr(self.options, "gate_lr", None)
        parts = [f"method.lambda={lam:g}" if lam is not None else "", f"method.gate_lr={lr:g}" if lr is not None else ""]
        return " or ".join(p for p in parts if p)

    def config(self) -> dict:
        """The ``method:`` config section that recreates this method."""
        return {"name": self.name, **options_dict(self.options)}

    # -- placement ---------------------------------------------------------------------------------
    def slots(self, spec: ModelSpec) -> tuple:
        if self.options.slots:
            return tuple(self.options.slots)
        return tuple(s for s in spec.default_slots(self.slot_set) if s in spec.slots())

    def tensors(self, spec: ModelSpec):
        return spec.select(self.slots(spec))

    def attach(self, net: nn.Module) -> nn.Module:
        """Put this method's gates (and controller) on ``net`` (default: none; scoring-only methods)."""
        return net

    def prepare(self, spec: ModelSpec, budget: Budget | None) -> None:
        """Called before the learn stage with the dense spec and the run's budget (if any)."""
        self.spec, self.budget = spec, budget

    def check(self, spec: ModelSpec, budget: Budget | None) -> None:
        """Checks against the model and the budget, run before a pipeline writes or trains anything:
        the gate slots exist, a budget is given where one is needed, the result can be compacted on
        this model (:meth:`check_compactable`), and :meth:`prepare` accepts them."""
        if self.needs_budget and budget is None:
            raise ConfigError(f"method {self.name} needs a budget (e.g. budget: {{metric: macs, keep: 0.5}})")
        if not self.tensors(spec):
            raise ConfigError(f"method {self.name} finds no gated tensors for slots {list(self.slots(spec))} in "
                              f"{spec.model}; set method.slots to some of {spec.slots()}")
        self.check_compactable(spec)
        self.prepare(spec, budget)

    def folds_gates(self) -> bool:
        """Whether the result is compacted from the gated network, its gate values folded into the layer
        before each gate (BAR's and L0's ``post_prune_scale: zhat``, DDNP's extraction)."""
        return False

    def check_compactable(self, spec: ModelSpec) -> None:
        """Refuse, before training, a placement whose static result compaction cannot build on ``spec``:
        residual trunks whose members would keep different channels where compaction slices one
        channel set per trunk (every model family but the CIFAR ResNets'), and gate values to fold into
        a Linear. Dynamic results are never compacted."""
        if self.result_kind == "dynamic":
            return
        tensors = self.tensors(spec)
        if not splits_trunks(spec):
            self._check_trunks_whole(spec, {t.name for t in tensors})
        if self.folds_gates():
            linear = [t for t in tensors if _producer_kind(spec, t) == "linear"]
            if linear:
                t = linear[0]
                raise ConfigError(f"method {self.name} compacts its gated network, folding each gate's values into "
                                  f"the layer before it, and compaction folds into BatchNorm2d and Conv2d only: "
                                  f"{t.name} (slot {t.slot!r}) is a Linear's output; drop {t.slot!r} from "
                                  f"method.slots (e.g. method.slots: {_slots_without(spec, self.slots(spec), t.slot)})")

    def _check_trunks_whole(self, spec: ModelSpec, gated: set) -> None:
        """Every residual trunk is gated whole, with one mask (``groups: trunk``), or not at all."""
        def off_trunk(slots):
            return [s for s in slots if all(t.trunk is None for t in spec.select((s,)))]

        outside = off_trunk(self.slots(spec)) or off_trunk(spec.slots())
        for trunk, members in spec.trunks().items():
            mine = [n for n in members if n in gated]
            if not mine:
                continue
            where = (f"compaction of {spec.model} (family {spec.family!r}) keeps one channel set per residual "
                     f"trunk, and trunk {trunk} is added from {', '.join(members)}")
            if len(mine) < len(members):
                missing = [n for n in members if n not in gated]
                slots = sorted({spec.tensor(n).slot for n in missing})
                raise ConfigError(f"method {self.name} gates {', '.join(mine)} but not {', '.join(missing)}: {where}; "
                                  f"add slots {slots} to method.slots or use slots outside the trunks "
                                  f"(method.slots: {outside})")
            if not self.honours_groups:
                raise ConfigError(f"method {self.name} decides each gated tensor on its own: {where}; set "
                                  f"method.slots to slots outside the trunks (method.slots: {outside})")
            if self.options.groups != "trunk":
                raise ConfigError(f"method {self.name} with groups: none selects each gated tensor's channels on "
                                  f"its own: {where}; set method.groups: trunk or method.slots: {outside}")

    # -- selection ---------------------------------------------------------------------------------
    def scores(self, model: nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"method {self.name} does not score channels")

    def groups(self, spec: ModelSpec):
        if self.options.groups == "trunk":
            trunks = spec.trunks()
            if not trunks:
                raise ConfigError(f"method option groups: trunk, but model {spec.model} declares no residual trunks "
                                  f"among its gated tensors (its trunk input is not gated); use groups: none")
            chosen = {t.name for t in self.tensors(spec)}
            return [[n for n in members if n in chosen] for members in trunks.values()]
        return None

    def select(self, model: nn.Module, spec: ModelSpec, budget: Budget | None) -> tuple[Structure, SelectReport]:
        """Choose the structure. Default: the budget solver on :meth:`scores`."""
        if budget is None:
            raise ConfigError(f"method {self.name} needs a budget (e.g. budget: {{metric: macs, keep: 0.5}})")
        structure, report = solve_budget(spec, self.scores(model, spec), budget, mode=self.options.mode,
                                         groups=self.groups(spec), min_channels=self.options.min_channels,
                                         model_kwargs=_kwargs(model))
        return structure, SelectReport.from_budget(report, structure)

    def finalize(self, model: nn.Module, spec: ModelSpec, budget: Budget | None) -> PrunedResult:
        """The pruned result at the end of the learn stage (static: structure + compact network)."""
        structure, report = self.select(model, spec, budget)
        if self.budget_tolerance is not None and report.target is not None and report.achieved is not None:
            flag_off_budget(self.name, report, report.metric, report.achieved, report.target,
                            below=self.budget_tolerance, hint="method.min_channels, the budget's round_to or "
                            "mode: uniform's per-layer steps may hold it off the target")
        structure.meta = {**structure.meta, "method": self.config(), "report": report.to_dict()}
        return StaticResult(self.hard_prune(model, structure), structure, report)

    # -- after pruning -----------------------------------------------------------------------------
    def hard_prune(self, model: nn.Module, structure: Structure) -> nn.Module:
        """The physically pruned network to fine-tune (kept channels multiplied by 1; decisions B9)."""
        net = model.net if isinstance(model, GatedModel) else model
        return compact(net, structure)

    def kept_values(self, model: nn.Module, structure: Structure) -> dict[str, torch.Tensor]:
        """What each kept channel is multiplied by after hard pruning (default: 1, dead channels 0)."""
        return {n: torch.as_tensor(m, dtype=torch.float32) for n, m in structure.masks().items()}

    def masked(self, model: nn.Module, structure: Structure) -> nn.Module:
        """The dense network with fixed gates holding :meth:`kept_values` (the compact network's reference)."""
        import copy

        from ..pruning.gates import strip_gates

        net = model.net if isinstance(model, GatedModel) else model
        spec = self.spec if self.spec is not None and self.spec.model == structure.model else None
        if spec is None:  # the dense network's own description (a traced model cannot be described again)
            spec = model.spec if isinstance(model, GatedModel) else describe(net)
        net = strip_gates(copy.deepcopy(net))
        net.__dict__.pop("_prunelab_spec", None)
        gates = {n: FixedGate(v) for n, v in self.kept_values(model, structure).items()}
        return GatedModel(net, gates, spec, fuse_bn=False)

    def finetune_hooks(self) -> list:
        return []


class OffBudgetWarning(UserWarning):
    """A method's result ended outside the tolerance it documents around its budget."""


def flag_off_budget(method: str, report: SelectReport, metric: str, achieved: float, target: float, *,
                    below: float, above: float = 0.0, hint: str = "") -> bool:
    """Warn and record in ``report.extra["off_budget"]`` when ``achieved`` is more than ``below``
    (relative) under ``target`` or more than ``above`` over it; returns whether it was off.
    ``hint``: what to change to meet it, appended to the warning.

    A budget missed silently reads as a method's result at that budget; the warning reaches the
    console and the record reaches ``result.json`` (the report's extra fields are written there)."""
    gap = (achieved - target) / target
    if -below - 1e-9 <= gap <= above + 1e-9:
        return False
    report.extra["off_budget"] = {"metric": metric, "target": float(target), "achieved": float(achieved),
                                  "relative_gap": float(gap), "tolerance": [-float(below), float(above)]}
    warnings.warn(f"{method} ended off its budget: {metric} {achieved:.4g} against a target of {target:.4g} "
                  f"({100 * gap:+.1f}%, outside its tolerance of -{100 * below:.3g}%/+{100 * above:.3g}%); the result "
                  f"is not one at the budget (see off_budget in the report){'; ' + hint if hint else ''}",
                  OffBudgetWarning, stacklevel=3)
    return True


def splits_trunks(spec: ModelSpec) -> bool:
    """Whether compaction of ``spec``'s family can give the members of a residual trunk different
    channels (the CIFAR ResNets' mixed blocks gather and scatter them; the generic engine slices one
    set per trunk). A family compaction declares it with a ``splits_trunks`` attribute."""
    from ..pruning.compact import family_compaction
    from ..pruning.compact_resnet import CifarResNetCompaction

    family = family_compaction(spec)
    return bool(getattr(family, "splits_trunks", isinstance(family, CifarResNetCompaction)))


def _producer_kind(spec: ModelSpec, tensor) -> str | None:
    return next((op.kind for op in spec.ops if op.name == tensor.conv), None)


def _slots_without(spec: ModelSpec, slots, slot: str) -> list:
    return [s for s in slots if s != slot] or [s for s in spec.slots() if s != slot]


def _kwargs(model):
    return dict(getattr(model, "prunelab_kwargs", {}) or {})


def bn_of(model: nn.Module, spec: ModelSpec, name: str) -> nn.Module:
    net = model.net if isinstance(model, GatedModel) else model
    return net.get_submodule(spec.tensor(name).module)


def conv_of(model: nn.Module, spec: ModelSpec, name: str) -> nn.Module:
    net = model.net if isinstance(model, GatedModel) else model
    return net.get_submodule(spec.tensor(name).conv)
