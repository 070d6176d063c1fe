"""Typed method options: each method declares a dataclass, checked once when the method is made.

A field's type says what it accepts (``float``, ``int``, ``bool``, ``str``, ``Literal[...]``,
``X | None``, ``tuple[...]``); a field whose config key is not a Python name (``lambda``) names it in
its metadata: ``field(default=1e-5, metadata={"key": "lambda"})``. :func:`parse_options` turns a
config mapping into the dataclass, with one line naming the bad key or value and the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

from ..errors import ConfigError, suggest


@dataclass
class MethodOptions:
    """Options every method has.

    Attributes:
        slots: gate placements (``mid``, ``stem``, ...); None: the model's default set for the method.
        mode: ``global`` ranks all layers together; ``uniform`` keeps the same fraction of every layer.
        min_channels: the fewest channels a gated tensor keeps.
        groups: ``trunk`` makes the contributors of a residual trunk share one mask; ``none`` does not.
    """

    slots: tuple[str, ...] | None = None
    mode: Literal["global", "uniform"] = "global"
    min_channels: int = 1
    groups: Literal["none", "trunk"] = "none"

    def check(self) -> None:
        """Checks across fields (raise :class:`ConfigError`); subclasses extend it."""
        if self.min_channels < 1:
            raise ConfigError(f"method option min_channels must be >= 1, got {self.min_channels}")
        if self.slots is not None and not self.slots:  # an empty list would fall back to the defaults silently
            raise ConfigError("method.slots must name at least one slot (e.g. [mid]), got []; leave it out "
                              "for the model's default set")


def key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def option_keys(cls) -> list[str]:
    return [key_of(f) for f in fields(cls)]


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return "a list"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


class _Bad(Exception):
    pass


def _coerce(value, tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            try:
                return _coerce(value, a)
            except _Bad:
                continue
        raise _Bad
    if tp is type(None):
        if value is None:
            return None
        raise _Bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp is float:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise _Bad from None
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(value)
        raise _Bad
    if tp is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        raise _Bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise _Bad
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis:
            value = [value]  # one slot given as a string
        if not isinstance(value, (list, tuple)):
            raise _Bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Bad
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    raise TypeError(f"unsupported option type {tp!r}")


def parse_options(cls, raw: dict, method: str):
    """Build the options dataclass ``cls`` from a config mapping; one clear line on a bad key or value."""
    raw = dict(raw or {})
    by_key = {key_of(f): f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    for k in raw:
        if k not in by_key:
            raise ConfigError(f"method {method!r} has no option {k!r}.{suggest(k, by_key)} "
                              f"Valid options: {', '.join(sorted(by_key))}")
    values = {}
    for k, v in raw.items():
        f = by_key[k]
        try:
            values[f.name] = _coerce(v, hints[f.name])
        except _Bad:
            raise ConfigError(f"method {method!r} option {k!r} must be {_type_name(hints[f.name])}, got {v!r}") from None
    opts = cls(**values)
    opts.check()
    return opts


def options_dict(opts) -> dict:
    """The options as a config mapping (config keys, lists for tuples)."""
    out = {}
    for f in fields(opts):
        v = getattr(opts, f.name)
        out[key_of(f)] = list(v) if isinstance(v, tuple) else v
    return out


__all__ = ["MethodOptions", "parse_options", "options_dict", "option_keys", "field", "dataclass", "Literal"]
