"""Model registry: one decorator makes an architecture available by name.

>>> from prunelab import models
>>> net = models.create("resnet20")            # plain nn.Module
>>> spec = models.describe(net)                # its gated tensors and ops (see spec.py)

Models of your own (README, "Your own model"):

* ``@register_model("mynet")`` on a function returning an ``nn.Module``: without ``describe=`` it is
  described by tracing (:mod:`.trace`) at ``input_size``. Load its module with ``--import`` (a module
  name or a .py file) or a ``prunelab.plugins`` entry point (:mod:`prunelab.plugins`).
* ``create("mypkg.models:make", **kw)`` (``model.builder`` in a config): the function is imported and
  called; the model is named by that path and described by tracing.

A model that is not the package's own records how to rebuild it (:func:`rebuild_info`: the builder's
import path, its input size and the imports of this process) in every saved plan, and
:func:`ensure_model` rebuilds it in a fresh process.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError, UnknownNameError
from .spec import ModelSpec, trace_shapes

DEFAULT_INPUT_SIZE = (3, 32, 32)
OWN_MODEL_HINT = ("for a model of your own, register it with prunelab.models.register_model (loading its file with "
                  "--import) or set model.builder: 'module.path:function' (README, \"Your own model\")")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    describe: Callable[[nn.Module], ModelSpec] | None  # topology only; shapes are traced. None: torch.fx tracing
    family: str
    input_size: tuple[int, int, int]
    num_classes: int
    # where a method puts its gates by default: "internal" = the channels a block can lose without
    # touching a residual trunk (most channel pruners), "outputs" = every conv output (BAR, L0)
    slot_sets: dict = field(default_factory=dict)
    # model arguments of the default-width network (PFS measures budgets against it)
    reference_kwargs: dict = field(default_factory=dict)
    path: str | None = None  # "module:function" of the builder: where a fresh process finds it

    @property
    def own(self) -> bool:
        """Whether the package defines this model (its plans need no record of how to rebuild it)."""
        return (self.builder.__module__ or "").startswith("prunelab.")


_REGISTRY: dict[str, ModelEntry] = {}


def _input_size(value, key: str) -> tuple[int, int, int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ConfigError(f"{key} must be [channels, height, width], three whole numbers >= 1, got {value!r}")
    return tuple(int(v) for v in value)


def register_model(name: str | Callable | None = None, *, describe: Callable | None = None, family: str | None = None,
                   input_size=DEFAULT_INPUT_SIZE, num_classes: int = 10, slot_sets: dict | None = None,
                   reference_kwargs: dict | None = None):
    """Decorator registering a builder function under ``name`` (default: the function's name).

    ``describe``: the hand-written describer of the zoo's models; without one the model is described by
    tracing (:func:`prunelab.models.trace.describe_traced`) with an input of ``input_size`` (C, H, W),
    family ``"traced"``. ``slot_sets`` names the default gate placements (``{"internal": slots,
    "outputs": slots}``); ``reference_kwargs`` are the model arguments of its default-width network.
    ``@register_model`` without parentheses registers the function under its own name.
    """
    if callable(name):  # @register_model, bare
        return register_model()(name)
    size = _input_size(input_size, "register_model input_size")

    def wrap(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} registered twice")
        fam = family or ("traced" if describe is None else "custom")
        _REGISTRY[key] = ModelEntry(key, fn, describe, fam, size, num_classes, dict(slot_sets or {}),
                                    dict(reference_kwargs or {}), f"{fn.__module__}:{fn.__qualname__}")
        return fn

    return wrap


def use_builder(path: str, input_size=None) -> ModelEntry:
    """The entry of the builder ``"module.path:function"`` (imported and registered under that path on first
    use; described by tracing at ``input_size``, default (3, 32, 32)). One input size per builder and
    process: another one is refused."""
    from ..plugins import load_auto, resolve_function

    size = None if input_size is None else _input_size(input_size, "model.input_shape")
    entry = _REGISTRY.get(path)
    if entry is not None:
        if size is not None and size != entry.input_size:
            raise ConfigError(f"model.builder {path!r} is used at input size {list(entry.input_size)} in this "
                              f"process already, and now at {list(size)}; run the two in separate processes")
        return entry
    load_auto()  # once per process: a builder's file may come from $PRUNELAB_IMPORTS (a study's worker)
    fn = resolve_function(path, "model.builder")
    _REGISTRY[path] = ModelEntry(path, fn, None, "traced", size or DEFAULT_INPUT_SIZE, 10, path=path)
    return _REGISTRY[path]


def list_models() -> list[str]:
    """Names of all registered models (builder paths used in this process left out)."""
    return sorted(k for k in _REGISTRY if ":" not in k)


def unknown_model(name, key: str = "") -> UnknownNameError:
    """The error for an unknown model name: the close names, the valid ones, and how to add one's own."""
    e = UnknownNameError("model", name, list_models())
    e.args = (f"{key}{e.args[0]}; {OWN_MODEL_HINT}",)
    return e


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (a builder path ``"module:function"`` is imported); before calling a
    name unknown, the ``prunelab.plugins`` entry points are loaded."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and ":" in name:
        return use_builder(name)
    from ..plugins import load_auto

    load_auto()
    if name not in _REGISTRY:
        raise unknown_model(name)
    return _REGISTRY[name]


def rebuild_info(name: str) -> dict:
    """What a saved plan records so a fresh process rebuilds model ``name``: ``model_source`` (the builder's
    import path and input size) for a model the package does not define, and ``imports`` (what
    ``--import`` loaded in this process) when there were any. Empty for the zoo without plugins."""
    from ..plugins import imported

    out = {}
    entry = _REGISTRY.get(name)
    if entry is not None and not entry.own:
        out["model_source"] = {"builder": entry.path, "input_size": list(entry.input_size)}
    if imported():
        out["imports"] = imported()
    return out


def ensure_model(name: str, source: dict | None = None, imports=(), where: str = "a saved plan") -> None:
    """Make model ``name`` of a saved plan known in this process: import what the plan recorded
    (``imports``, :func:`prunelab.plugins.load_recorded`), then its builder (``source``, see
    :func:`rebuild_info`). A model known already needs neither (an import the plan recorded for its
    method may be gone). One line when it cannot be had."""
    from ..plugins import load_recorded, resolve_function

    source = source if isinstance(source, dict) else {}
    size = source.get("input_size")
    if name in _REGISTRY:
        if ":" in name:
            use_builder(name, size)  # the same input size, or one line
        return
    load_recorded(imports, where)
    if isinstance(name, str) and ":" in name:
        use_builder(name, size)
        return
    if name in _REGISTRY:
        return
    builder = source.get("builder")
    if isinstance(builder, str):
        fn = resolve_function(builder, f"{where}: the builder of model {name!r}")
        if name not in _REGISTRY:  # importing its module did not register it: described by tracing
            register_model(name, input_size=size or DEFAULT_INPUT_SIZE)(fn)
    if name not in _REGISTRY:
        get_entry(name)  # the entry points, else one line naming the fix


def create(name: str, **kwargs) -> nn.Module:
    """Build a registered model, or call the builder ``"module.path:function"``. Unknown names or keyword
    arguments give a clear error.

    The returned module remembers ``prunelab_name`` and ``prunelab_kwargs`` so that a checkpoint or
    a compact plan can rebuild it, and ``prunelab_builder`` (the builder's import path) and
    ``prunelab_input_size`` (the input size it is described at).
    """
    entry = get_entry(name)
    try:
        params = inspect.signature(entry.builder).parameters
    except (TypeError, ValueError):  # no signature to check (a builtin, a C extension): the call says
        params = None
    accepts_any = params is None or any(p.kind == p.VAR_KEYWORD for p in params.values())
    bad = [k for k in kwargs if not accepts_any and k not in params]
    if bad:
        valid = [k for k in params]
        raise ConfigError(f"model {name!r} takes no argument(s) {bad}; valid arguments: {valid}")
    kwargs = _checked_kwargs(name, entry.builder, kwargs)
    # the zoo's builders fail on bad sizes in these ways; a user's builder may fail in any way, named in one line
    errors = (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError) if entry.own else Exception
    try:
        model = entry.builder(**kwargs)
    except errors as e:
        msg = ' '.join(str(e).split())[:160]
        raise ConfigError(f"model {name!r} cannot be built with {kwargs} ({type(e).__name__}: {msg}); fix "
                          f"model.kwargs{'' if entry.own else ' or the builder ' + str(entry.path)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r}: {entry.path} returned a {type(model).__name__}, not a torch.nn.Module; "
                          f"make the builder return the network")
    empty = [n for n, m in model.named_modules() if _channels(m) == 0]
    if empty:
        raise ConfigError(f"model {name!r} with {kwargs} has layers without channels ({empty[0]}); use larger "
                          f"width arguments")
    model.prunelab_name = name
    model.prunelab_kwargs = dict(kwargs)
    model.prunelab_builder = entry.path
    model.prunelab_input_size = entry.input_size
    return model


def _example_input(model: nn.Module, size):
    """A random batch of one at ``size`` on the model's device and in its float type, drawn from a generator
    of its own (describing a model must not move the run's random streams)."""
    import torch

    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    p = next(model.parameters(), None)
    return x.to(p.device, p.dtype) if p is not None and p.is_floating_point() else x


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
      hand-written description, at the registry's input size (or at ``example_input``'s size). An entry
      without one (``register_model`` without ``describe=``, a ``"module:function"`` builder) is traced
      with a random batch of one at its input size (family ``"traced"``).
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
        if entry.describe is None:  # a model of one's own without a describer: traced at its input size
            from .trace import describe_traced

            x = example_input if example_input is not None else _example_input(model, entry.input_size)
            spec = describe_traced(model, x, name=name)
            spec.family = entry.family
            model._prunelab_spec = spec
            return spec
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
