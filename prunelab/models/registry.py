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
    kwargs = _checked_kwargs(name, entry.builder, kwargs)
    try:
        model = entry.builder(**kwargs)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs} ({str(e).splitlines()[0][:160]})") from None
    empty = [n for n, m in model.named_modules() if _channels(m) == 0]
    if empty:
        raise ConfigError(f"model {name!r} with {kwargs} has layers without channels ({empty[0]}); use larger "
                          f"width arguments")
    model.prunelab_name = name
    model.prunelab_kwargs = dict(kwargs)
    return model


def _channels(m: nn.Module):
    if isinstance(m, nn.Conv2d):
        return min(m.in_channels, m.out_channels)
    if isinstance(m, nn.Linear):
        return min(m.in_features, m.out_features)
    if isinstance(m, nn.BatchNorm2d):
        return m.num_features
    return None


def _checked_kwargs(name: str, builder, kwargs: dict) -> dict:
    """Model arguments checked against the builder's annotations: numbers finite and > 0 (they are
    sizes: widths, depths, class counts), integers whole, strings strings; one line on a bad one."""
    import math
    import typing

    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the values to the builder
        return dict(kwargs)
    out = {}
    for k, v in kwargs.items():
        t = hints.get(k)
        if t in (int, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            if ok and t is int:
                ok = float(v).is_integer()
                v = int(v) if ok else v
            if not ok:
                kind = "a whole number >= 1" if t is int else "a finite number > 0"
                raise ConfigError(f"model {name!r} argument {k} must be {kind}, got {v!r}")
            v = float(v) if t is float else v
        elif t is str and not isinstance(v, str):
            raise ConfigError(f"model {name!r} argument {k} must be a string, got {v!r}")
        out[k] = v
    return out


def describe(model: nn.Module, name: str | None = None, *, example_input=None) -> ModelSpec:
    """The :class:`ModelSpec` of a model (its gated tensors and ops, with shapes traced at one input size).

    * A model built by :func:`create` (or named by ``name``) whose registry entry has a describer: the
      hand-written description, at the registry's input size (or at ``example_input``'s size).
    * Any other ``nn.Module``, given ``example_input`` (a batch it accepts): the description found by
      tracing it with ``torch.fx`` (:func:`prunelab.models.trace.describe_traced`; its module docstring
      lists the rules and limits). Ops the tracer cannot follow raise one
      :class:`~prunelab.errors.ConfigError` line naming the op and module path.

    Cached on the module, so repeated calls are free (a cached description at another input size than
    ``example_input``'s is replaced). Works on the dense model only; a compacted model is described by
    its plan (:class:`prunelab.pruning.Structure`).
    """
    if getattr(model, "prunelab_compact", False):
        raise ConfigError("a compact model is described by its plan: use Structure.cost() on the dense model's spec")
    size = None
    if example_input is not None:
        if not hasattr(example_input, "shape") or len(example_input.shape) < 2:
            raise ConfigError(f"example_input must be a batch the model accepts, e.g. torch.randn(1, 3, 32, 32); got "
                              f"{type(example_input).__name__} {tuple(getattr(example_input, 'shape', ()))}")
        size = tuple(example_input.shape[1:])
    cached = getattr(model, "_prunelab_spec", None)
    if cached is not None and (size is None or tuple(cached.input_size) == size):
        return cached
    name = name or getattr(model, "prunelab_name", None)
    if name is not None and (name in _REGISTRY or example_input is None):
        entry = get_entry(name)
        spec = entry.describe(model)
        spec.model = name
        spec.family = entry.family
        spec.input_size = size or entry.input_size
        spec = trace_shapes(model, spec)
        spec.slot_sets = {k: tuple(v) for k, v in entry.slot_sets.items()}
    elif example_input is not None:
        from .trace import describe_traced

        spec = describe_traced(model, example_input, name=name)
    else:
        raise ConfigError(f"{type(model).__name__} was not built by prunelab.models.create(); describe it by tracing "
                          f"with describe(model, example_input=<a batch it accepts>), or pass name= of a registered "
                          f"model")
    model._prunelab_spec = spec
    return spec
