"""A pruned network's structure: the alive channels of each gated tensor, as a small JSON plan.

>>> s = Structure.from_counts(spec, {"layer1.0.mid": 8})      # first 8 channels alive
>>> s.cost(spec).macs                                           # counted with prunelab.counting
>>> s.save("plan.json"); Structure.load("plan.json")

Tensors a structure does not name are fully alive. A structure carries the model's registry name and
arguments, so a plan plus a state dict rebuild the compact model (:func:`prunelab.pruning.load_compact`).

Every structure is validated where it is built (:meth:`Structure.__post_init__`, whichever constructor
or plan file it comes from): alive channels are whole numbers, each listed once, inside the tensor's
width, and stored sorted. :meth:`Structure.check` adds what needs the model (tensor names, widths);
:func:`~prunelab.pruning.compact.compact` and :func:`~prunelab.counting.count` both call it, so they
accept the same plans and refuse the same ones, with one line naming the tensor and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..counting import Cost, count
from ..errors import CheckpointError, PrunelabError, suggest
from ..models.spec import ModelSpec
from ..utils import atomic_write_text, dumps_json, to_jsonable

FORMAT = "prunelab-structure-1"


# --------------------------------------------------------------------------------------------------
# validation (one place for every structure, built in code or read from a plan file)


def _is_whole(v) -> bool:
    """A Python or numpy integer; bools are refused although ``bool`` subclasses ``int`` (a mask is not
    a channel index)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _whole_count(name: str, value, what: str, *, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or a one-line :class:`CheckpointError` naming the fix."""
    if not _is_whole(value):
        raise CheckpointError(f"{what} of {name!r} must be a whole number, got {value!r} "
                              f"({type(value).__name__}); write it without quotes or decimals")
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise CheckpointError(f"{what} of {name!r} is {value}; give a number {span}")
    return int(value)


def _as_index_array(name: str, values) -> np.ndarray:
    """The alive indices of ``name`` as an int64 array, refusing anything that is not whole numbers."""
    fix = "give the alive channels as whole numbers, e.g. [0, 3, 7]"
    if isinstance(values, (list, tuple)):
        bad = next((v for v in values if not _is_whole(v)), None)
        if bad is not None:
            kind = "a mask value" if isinstance(bad, (bool, np.bool_)) else "not a channel index"
            raise CheckpointError(f"alive channels of {name!r} contain {bad!r} ({type(bad).__name__}, {kind}); {fix}")
        if values and (min(values) < -2**62 or max(values) > 2**62):  # would overflow int64
            raise CheckpointError(f"alive channels of {name!r} contain {max(values, key=abs)}, far outside the "
                                  f"tensor; {fix}")
        return np.asarray(values, dtype=np.int64).reshape(-1)
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__array__"):
        raise CheckpointError(f"alive channels of {name!r} must be a list of channel indices, got "
                              f"{type(values).__name__} {values!r:.40}; {fix}")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise CheckpointError(f"alive channels of {name!r} must be a flat list, got shape {arr.shape}; {fix}")
    if arr.size == 0:  # np.asarray([]) is float64: an empty set has no dtype to get wrong
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise CheckpointError(f"alive channels of {name!r} are booleans (a mask); {fix}, or build the "
                              f"structure with Structure.from_masks")
    if arr.dtype.kind not in "iu":
        raise CheckpointError(f"alive channels of {name!r} are {arr.dtype} values (e.g. {arr[0].item()!r}), not "
                              f"channel indices; {fix}")
    return arr.astype(np.int64)


def _alive_indices(name: str, values, channels: int) -> np.ndarray:
    """Validate one tensor's alive channels against its width ``channels``; return them sorted.

    Whole numbers only, each listed once, each in ``[0, channels)``. An empty set is allowed: it
    removes a residual branch (:func:`clean`), and compaction refuses it where it would disconnect
    the network. Order carries no meaning, so the set is stored sorted (compaction relies on it).
    """
    arr = _as_index_array(name, values)
    if len(arr) > channels:
        raise CheckpointError(f"alive channels of {name!r} list {len(arr)} entries, but {name} has only {channels} "
                              f"channels; list each alive channel once, from 0 to {channels - 1}")
    outside = arr[(arr < 0) | (arr >= channels)]
    if outside.size:
        raise CheckpointError(f"alive channels of {name!r} contain {int(outside[0])}, outside [0, {channels}); "
                              f"use channel indices from 0 to {channels - 1}")
    arr = np.sort(arr)
    repeated = np.unique(arr[1:][arr[1:] == arr[:-1]])
    if repeated.size:
        raise CheckpointError(f"alive channels of {name!r} list channel {', '.join(map(str, repeated[:5]))} more "
                              f"than once; list each alive channel once")
    return arr


def _validated(alive: dict, channels: dict) -> tuple[dict, dict]:
    """``(alive, channels)`` checked and normalised: every alive set by :func:`_alive_indices` against
    its tensor's width, every width a positive whole number."""
    missing = [n for n in alive if n not in channels]
    if missing:
        raise CheckpointError(f"structure gives alive channels of {missing[0]!r} but not its width; give "
                              f"channels for every tensor in alive")
    channels = {n: _whole_count(n, c, "channels", low=1) for n, c in channels.items()}
    return {n: _alive_indices(n, v, channels[n]) for n, v in alive.items()}, channels


@dataclass
class Structure:
    """Alive channel indices per gated tensor of one model.

    Attributes:
        model, model_kwargs: registry name and arguments of the dense model.
        alive: ``{tensor name: sorted int array of alive channel indices}``.
        channels: ``{tensor name: full width}`` (checked against the model's spec).
        meta: free-form provenance (method, budget target and achieved value, ...).

    Raises:
        CheckpointError: (one line) alive channels that are not whole numbers, repeated, outside their
            tensor's width, or a tensor without a width; see :func:`_alive_indices`.
    """

    model: str
    model_kwargs: dict
    alive: dict[str, np.ndarray]
    channels: dict[str, int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.alive, self.channels = _validated(self.alive, self.channels)

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def _make(cls, spec: ModelSpec, alive: dict, model_kwargs=None, meta=None) -> "Structure":
        # no silent casting or de-duplication: a repeated or fractional index is a bug upstream
        return cls(spec.model, dict(model_kwargs or {}), dict(alive), {n: spec.tensor(n).channels for n in alive},
                   dict(meta or {}))

    @classmethod
    def full(cls, spec: ModelSpec, names=None, **kw) -> "Structure":
        names = spec.names if names is None else names
        return cls._make(spec, {n: np.arange(spec.tensor(n).channels) for n in names}, **kw)

    @classmethod
    def from_counts(cls, spec: ModelSpec, counts: dict, **kw) -> "Structure":
        """Each named tensor keeps its first ``count`` channels (a whole number from 0 to its width)."""
        counts = {n: _whole_count(n, c, "count", low=0, high=spec.tensor(n).channels) for n, c in counts.items()}
        return cls._make(spec, {n: np.arange(c) for n, c in counts.items()}, **kw)

    @classmethod
    def from_masks(cls, spec: ModelSpec, masks: dict, **kw) -> "Structure":
        return cls._make(spec, {n: np.flatnonzero(np.asarray(m)) for n, m in masks.items()}, **kw)

    @classmethod
    def from_gates(cls, gated, **kw) -> "Structure":
        """Alive channels of every gate of a :class:`~prunelab.pruning.gates.GatedModel`."""
        masks = {n: g.alive().cpu().numpy() for n, g in gated.items()}
        kw.setdefault("model_kwargs", gated.prunelab_kwargs)
        return cls.from_masks(gated.spec, masks, **kw)

    @classmethod
    def random(cls, spec: ModelSpec, rng: np.random.Generator, slots=None, keep=(0.25, 1.0), min_keep: int = 1,
               prefix: bool = False, **kw) -> "Structure":
        """Random alive sets (keep ratio uniform in ``keep`` per tensor); for tests and the random baseline."""
        alive = {}
        for t in spec.select(slots):
            k = max(min_keep, int(round(rng.uniform(*keep) * t.channels)))
            k = min(k, t.channels)
            alive[t.name] = np.arange(k) if prefix else np.sort(rng.choice(t.channels, k, replace=False))
        return cls._make(spec, alive, **kw)

    # -- queries -----------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {n: int(len(v)) for n, v in self.alive.items()}

    def masks(self) -> dict[str, np.ndarray]:
        out = {}
        for n, v in self.alive.items():
            m = np.zeros(self.channels[n], dtype=bool)
            m[v] = True
            out[n] = m
        return out

    def keep_ratios(self) -> dict[str, float]:
        return {n: len(v) / self.channels[n] for n, v in self.alive.items()}

    def check(self, spec: ModelSpec) -> "Structure":
        """Raise a one-line error if this structure does not belong to ``spec``'s model.

        Checks the model, each tensor's name and width against ``spec``, and (again, since ``alive`` is
        a plain dict that code may have changed since construction) each alive set.
        """
        if spec.model != self.model:
            raise CheckpointError(f"structure is for model {self.model!r}, not {spec.model!r}; use it with "
                                  f"{self.model}")
        for n, c in self.channels.items():
            if n not in spec:
                raise CheckpointError(f"structure names tensor {n!r}, which {spec.model} does not have."
                                      f"{suggest(n, spec.names)} Fix the name or remove the tensor from the plan")
            if spec.tensor(n).channels != c:
                raise CheckpointError(f"structure gives {n} {c} channels, {spec.model} has {spec.tensor(n).channels} "
                                      f"(built with other arguments?); use the model arguments the plan was made with")
        _validated(self.alive, self.channels)
        return self

    def cost(self, model_or_spec, **kw) -> Cost:
        """Counted costs (see :func:`prunelab.counting.count` for the keyword flags)."""
        return count(model_or_spec, self, **kw)

    def empty_tensors(self) -> list[str]:
        return [n for n, v in self.alive.items() if len(v) == 0]

    def with_alive(self, updates: dict, spec: ModelSpec | None = None) -> "Structure":
        """A copy with the alive sets of ``updates`` replaced (validated like any structure); ``spec``
        gives the widths of tensors this structure did not name yet."""
        channels = dict(self.channels)
        for n in updates:
            if n not in channels and spec is not None:
                channels[n] = spec.tensor(n).channels
        return Structure(self.model, dict(self.model_kwargs), {**self.alive, **updates}, channels, dict(self.meta))

    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The plan; ``meta`` gains how to rebuild a model the package does not define (its builder, input
        size and the ``--import``s of this process: :func:`prunelab.models.rebuild_info`)."""
        from ..models.registry import rebuild_info

        meta = {**rebuild_info(self.model), **self.meta}  # a loaded plan keeps what it recorded
        return {"format": FORMAT, "kind": "static", "model": self.model, "model_kwargs": self.model_kwargs,
                "channels": self.channels, "alive": {n: v.tolist() for n, v in self.alive.items()},
                "counts": self.counts(), "meta": to_jsonable(meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "Structure":
        """A structure from a plan's JSON object; every value is validated (no silent casting)."""
        if d.get("format") != FORMAT:
            raise CheckpointError(f"not a prunelab structure plan (format {d.get('format')!r}, expected {FORMAT!r})")
        if not isinstance(d.get("model"), str) or not isinstance(d.get("alive"), dict) \
                or not isinstance(d.get("channels"), dict) or set(d["alive"]) != set(d["channels"]):
            raise CheckpointError("structure plan is damaged: it needs model, and alive/channels for the same tensors")
        try:
            s = cls(d["model"], dict(d.get("model_kwargs") or {}), dict(d["alive"]), dict(d["channels"]),
                    dict(d.get("meta") or {}))
        except (TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"structure plan is damaged ({type(e).__name__}: {str(e)[:80]})") from None
        s._check_counts(d.get("counts"))
        if "model_source" in s.meta or "imports" in s.meta:  # a model from outside the package: rebuild it here
            from ..models.registry import ensure_model

            try:
                ensure_model(s.model, s.meta.get("model_source"), s.meta.get("imports"), where="its model")
            except PrunelabError as e:
                raise CheckpointError(str(e)) from None
        return s

    def _check_counts(self, counts) -> None:
        """A plan's ``counts`` (written for readers, redundant with ``alive``) must agree with ``alive``:
        a plan edited in one place but not the other is ambiguous."""
        if counts is None:
            return
        if not isinstance(counts, dict):
            raise CheckpointError(f"structure plan's counts must map tensors to channel counts, got "
                                  f"{type(counts).__name__}; fix it or delete counts (alive is what counts)")
        for n, c in counts.items():
            if n not in self.alive:
                raise CheckpointError(f"structure plan's counts name tensor {n!r}, which its alive channels do not."
                                      f"{suggest(n, self.alive)} Fix the name or delete that count")
            c = _whole_count(n, c, "count", low=0, high=self.channels[n])
            if c != len(self.alive[n]):
                raise CheckpointError(f"structure plan's count of {n!r} is {c}, but its alive channels list "
                                      f"{len(self.alive[n])}; make them agree (or delete the count)")

    def save(self, path) -> None:
        atomic_write_text(path, dumps_json(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path, spec: ModelSpec | None = None) -> "Structure":
        """Read and validate a plan file (:meth:`from_dict`; with ``spec``, :meth:`check` too); errors
        name the file."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"structure plan {path} does not exist")
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            s = cls.from_dict(d)
            return s if spec is None else s.check(spec)
        except CheckpointError as e:
            raise CheckpointError(f"structure plan {path}: {e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"structure plan {path} is corrupt ({type(e).__name__}: {str(e)[:80]})") from None


def clean(structure: Structure, spec: ModelSpec) -> Structure:
    """Remove dead residual branches (docs/decisions.md §4.9, B10).

    A block whose ``delta`` is empty needs no ``mid`` channels; a block whose ``mid`` is empty has a
    constant delta, which is dropped (set empty). Returns a new structure; ``meta["cleaned"]`` lists
    the removed branches.
    """
    updates, removed = {}, []
    for t in spec.tensors:
        if t.slot != "delta":
            continue
        mid = t.name[: -len("delta")] + "mid"
        if mid not in spec:
            continue
        d_alive = structure.alive.get(t.name)
        m_alive = structure.alive.get(mid)
        d_empty = d_alive is not None and len(d_alive) == 0
        m_empty = m_alive is not None and len(m_alive) == 0
        if d_empty or m_empty:
            updates[t.name] = []
            updates[mid] = []
            removed.append(t.name.rsplit(".", 1)[0])
    out = structure.with_alive(updates, spec)
    out.meta = {**out.meta, "removed_branches": removed}
    return out


def ensure_connected(structure: Structure, spec: ModelSpec, scores: dict | None = None) -> Structure:
    """Revive the best-scored channel where a structure would disconnect the network.

    Residual branches (``mid``/``delta``) may die whole; any other gated tensor (stem, projection,
    plain conv, expansion) keeps at least one channel, and so does every residual trunk (the union of
    its contributors). ``scores``: ``{tensor: (C,) array}``, higher = revived first (default: channel 0).
    Revived channels are listed in ``meta["revived"]``.
    """
    alive = {n: np.asarray(v) for n, v in structure.alive.items()}
    revived = []

    def revive(name):
        s = scores.get(name) if scores else None
        c = int(np.argmax(s)) if s is not None else 0
        alive[name] = np.array([c])
        revived.append(f"{name}[{c}]")

    for t in spec.tensors:
        if t.name in alive and len(alive[t.name]) == 0 and t.slot not in ("mid", "delta", "mid1", "mid2"):
            revive(t.name)
    for members in spec.trunks().values():
        if all(n in alive and len(alive[n]) == 0 for n in members):
            revive(members[0])
    if not revived:
        return structure
    out = structure.with_alive(alive)
    out.meta = {**out.meta, "revived": revived}
    return out
