"""Pruning methods behind a registry: ``register``, ``list_methods()``, ``get(name)``, ``create``.

>>> from prunelab import methods
>>> methods.list_methods()
>>> m = methods.create("l1", mode="global")       # options checked here (methods/options.py)
"""

from __future__ import annotations

from ..errors import ConfigError, UnknownNameError
from .base import Method

_METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator making a :class:`Method` subclass available by ``name``."""

    def wrap(cls):
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get(name: str) -> type:
    """The method class registered as ``name``; before calling a name unknown, the ``prunelab.plugins``
    entry points are loaded (a method registered outside the package)."""
    if name not in _METHODS:
        from ..plugins import load_auto

        load_auto()
    if name not in _METHODS:
        raise UnknownNameError("method", name, _METHODS)
    return _METHODS[name]


def create(name: str, **options) -> Method:
    """Make method ``name``; a bad option key or value raises :class:`ConfigError` naming it."""
    return get(name)(**options)


def from_config(method_cfg: dict) -> Method:
    """Build the method of a config's ``method:`` section (``name`` plus options)."""
    if not method_cfg or "name" not in method_cfg:
        raise ConfigError(f"the config needs a method section with a name; methods: {', '.join(list_methods())}")
    opts = dict(method_cfg)
    return create(opts.pop("name"), **opts)


def _build_gated(plan: dict):
    """Rebuild the gated network of a saved dynamic or generated result from its plan."""
    from .. import models

    net = models.create(plan["model"], **(plan.get("model_kwargs") or {}))
    return from_config(plan["method"]).attach(net)


from ..pruning.result import set_gated_builder  # noqa: E402

set_gated_builder(_build_gated)

from . import bar, chip, ddnp, hrank, ib, interp_decomp, l1, lzr, manidp, morphnet, pfs, plan, random, slimming, vq  # noqa: E402,F401,E501  (registration)

__all__ = ["Method", "register", "list_methods", "get", "create", "from_config"]
