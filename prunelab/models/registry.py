"""Model registry: one decorator makes an architecture available by name.

>>> from prunelab import models
>>> net = models.create("resnet20")            # plain nn.Module
>>> spec = models.describe(net)                # its gated tensors and ops (see spec.py)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError, UnknownNameError
from .spec import ModelSpec, trace_shapes


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    describe: Callable[[nn.Module], ModelSpec]  # topology only; shapes are traced
    family: str
    input_size: tuple[int, int, int]
    num_classes: int
    # where a method puts its gates by default: "internal" = the channels a block can lose without
    # touching a residual trunk (most channel pruners), "outputs" = every conv output (BAR, L0)
    slot_sets: dict = field(default_factory=dict)
    # model arguments of the default-width network (PFS measures budgets against it)
    reference_kwargs: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | None = None, *, describe: Callable, family: str,
                   input_size=(3, 32, 32), num_classes: int = 10, slot_sets: dict | None = None,
                   reference_kwargs: dict | None = None):
    """Decorator registering a builder function under ``name`` (default: the function's name).

    ``slot_sets`` names the default gate placements (``{"internal": slots, "outputs": slots}``);
    ``reference_kwargs`` are the model arguments of its default-width network.
    """

    def wrap(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} registered twice")
        _REGISTRY[key] = ModelEntry(key, fn, describe, family, tuple(input_size), num_classes,
                                    dict(slot_sets or {}), dict(reference_kwargs or {}))
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, _REGISTRY)
    return _REGISTRY[name]


def create(name: str, **kwargs) -> nn.Module:
    """Build a registered model. Unknown names or keyword arguments give a clear error.

    The returned module remembers ``prunelab_name`` and ``prunelab_kwargs`` so that a checkpoint or
    a compact plan can rebuild it.
    """
    entry = get_entry(name)
    params = inspect.signature(entry.builder).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    bad = [k for k in kwargs if k not in params and not accepts_any]
    if bad:
        valid = [k for k in params]
        raise ConfigError(f"model {name!r} takes no argument(s) {bad}; valid arguments: {valid}")
    model = entry.builder(**kwargs)
    model.prunelab_name = name
    model.prunelab_kwargs = dict(kwargs)
    return model


def describe(model: nn.Module, name: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a model built by :func:`create` (traced at its input size).

    Cached on the module, so repeated calls are free. Works on the dense model only; a compacted
    model is described by its plan (:class:`prunelab.pruning.Structure`).
    """
    if getattr(model, "prunelab_compact", False):
        raise ConfigError("a compact model is described by its plan: use Structure.cost() on the dense model's spec")
    cached = getattr(model, "_prunelab_spec", None)
    if cached is not None:
        return cached
    name = name or getattr(model, "prunelab_name", None)
    if name is None:
        raise ConfigError("model was not built by prunelab.models.create(); pass name= to describe()")
    entry = get_entry(name)
    spec = entry.describe(model)
    spec.model = name
    spec.family = entry.family
    spec.input_size = entry.input_size
    spec = trace_shapes(model, spec)
    spec.slot_sets = {k: tuple(v) for k, v in entry.slot_sets.items()}
    model._prunelab_spec = spec
    return spec
