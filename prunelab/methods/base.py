"""What a pruning method is: a training hook plus a way to score or gate channels.

A method is one file under ``prunelab/methods/`` holding a :class:`Method` subclass registered with
:func:`prunelab.methods.register`. The shared pipeline (:mod:`prunelab.pruning.pipeline`) calls

1. :meth:`Method.attach` to put gates on the network (scoring-only methods attach none),
2. the shared :class:`~prunelab.train.trainer.Trainer` with the method as a hook when
   :attr:`Method.learns` (extra loss terms, parameter groups, callbacks),
3. :meth:`Method.select` to choose a structure (by default: :meth:`Method.scores` fed to the budget
   solver),
4. :meth:`Method.hard_prune` to build the pruned network, fine-tuned with :meth:`Method.finetune_hooks`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch.nn as nn

from ..errors import ConfigError, suggest
from ..models.spec import ModelSpec
from ..pruning.budget import Budget, solve_budget
from ..pruning.compact import compact
from ..pruning.gates import GatedModel
from ..pruning.structure import Structure
from ..train.trainer import Hook

# default gate placements per model family (methods.md §0.3)
DEFAULT_SLOTS = {
    "resnet_cifar": ("mid",),
    "vgg": ("conv",),
    "mobilenet": ("stem", "expand", "final"),
    "resnet_imagenet": ("mid1", "mid2"),
}


class Method(Hook):
    """Base class. Subclasses set ``name`` (by :func:`register`), ``defaults`` and override hooks."""

    name: ClassVar[str] = "base"
    learns: ClassVar[bool] = False  # has a structure-learning training stage
    defaults: ClassVar[dict] = {}
    slot_defaults: ClassVar[dict] = DEFAULT_SLOTS

    def __init__(self, **options):
        valid = {"slots", "mode", "min_channels", "groups", *self.defaults}
        bad = [k for k in options if k not in valid]
        if bad:
            raise ConfigError(f"method {self.name!r} has no option {bad[0]!r}.{suggest(bad[0], valid)} "
                              f"Valid options: {', '.join(sorted(valid))}")
        for k, v in options.items():  # numbers given as text (e.g. from YAML's "1e-3") become numbers
            d = self.defaults.get(k)
            if isinstance(d, (int, float)) and not isinstance(d, bool) and isinstance(v, str):
                try:
                    options[k] = type(d)(float(v))
                except ValueError:
                    raise ConfigError(f"method {self.name} option {k} must be a number, got {v!r}") from None
        self.options = {"slots": None, "mode": "global", "min_channels": 1, "groups": "none",
                        **self.defaults, **options}
        if self.options["groups"] not in ("none", "trunk"):
            raise ConfigError(f"method option groups must be 'none' or 'trunk' (residual trunk shares one mask), "
                              f"got {self.options['groups']!r}")

    def __repr__(self):
        return f"{type(self).__name__}({self.options})"

    # -- placement ---------------------------------------------------------------------------------
    def slots(self, spec: ModelSpec) -> tuple:
        s = self.options.get("slots")
        if s:
            return tuple([s] if isinstance(s, str) else s)
        try:
            return self.slot_defaults[spec.family]
        except KeyError:
            raise ConfigError(f"method {self.name} has no default gate slots for {spec.family} models; "
                              f"set method.slots (one of {spec.slots()})") from None

    def tensors(self, spec: ModelSpec):
        return spec.select(self.slots(spec))

    def attach(self, net: nn.Module) -> nn.Module:
        """Put this method's gates on ``net`` (default: none; scoring-only methods)."""
        return net

    def prepare(self, spec: ModelSpec, budget: Budget | None) -> None:
        """Called before the learn stage with the dense spec and the run's budget (if any)."""
        self.spec, self.budget = spec, budget

    # -- selection ---------------------------------------------------------------------------------
    def scores(self, model: nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"method {self.name} does not score channels")

    def groups(self, spec: ModelSpec):
        if self.options["groups"] == "trunk":
            trunks = spec.trunks()
            if not trunks:
                raise ConfigError(f"method option groups: trunk, but model {spec.model} declares no residual trunks "
                                  f"among its gated tensors (its trunk input is not gated); use groups: none")
            chosen = {t.name for t in self.tensors(spec)}
            return [[n for n in members if n in chosen] for members in trunks.values()]
        return None

    def select(self, model: nn.Module, spec: ModelSpec, budget: Budget | None) -> tuple[Structure, dict]:
        """Choose the structure. Default: the budget solver on :meth:`scores`."""
        if budget is None:
            raise ConfigError(f"method {self.name} needs a budget (e.g. budget: {{metric: macs, keep: 0.5}})")
        return solve_budget(spec, self.scores(model, spec), budget, mode=self.options["mode"],
                            groups=self.groups(spec), min_channels=self.options["min_channels"],
                            model_kwargs=_kwargs(model))

    # -- after pruning -----------------------------------------------------------------------------
    def hard_prune(self, model: nn.Module, structure: Structure) -> nn.Module:
        """The physically pruned network to fine-tune (gates of value 1 on kept channels, B9)."""
        net = model.net if isinstance(model, GatedModel) else model
        return compact(net, structure)

    def finetune_hooks(self) -> list:
        return []


def _kwargs(model):
    return dict(getattr(model, "prunelab_kwargs", {}) or {})


def bn_of(model: nn.Module, spec: ModelSpec, name: str) -> nn.Module:
    net = model.net if isinstance(model, GatedModel) else model
    return net.get_submodule(spec.tensor(name).module)


def conv_of(model: nn.Module, spec: ModelSpec, name: str) -> nn.Module:
    net = model.net if isinstance(model, GatedModel) else model
    return net.get_submodule(spec.tensor(name).conv)
