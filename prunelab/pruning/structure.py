"""A pruned network's structure: the alive channels of each gated tensor, as a small JSON plan.

>>> s = Structure.from_counts(spec, {"layer1.0.mid": 8})      # first 8 channels alive
>>> s.cost(spec).macs                                           # counted with prunelab.counting
>>> s.save("plan.json"); Structure.load("plan.json")

Tensors a structure does not name are fully alive. A structure carries the model's registry name and
arguments, so a plan plus a state dict rebuild the compact model (:func:`prunelab.pruning.load_compact`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..counting import Cost, count
from ..errors import CheckpointError
from ..models.spec import ModelSpec
from ..utils import atomic_write_text, dumps_json, to_jsonable

FORMAT = "prunelab-structure-1"


@dataclass
class Structure:
    """Alive channel indices per gated tensor of one model.

    Attributes:
        model, model_kwargs: registry name and arguments of the dense model.
        alive: ``{tensor name: sorted int array of alive channel indices}``.
        channels: ``{tensor name: full width}`` (checked against the model's spec).
        meta: free-form provenance (method, budget target and achieved value, ...).
    """

    model: str
    model_kwargs: dict
    alive: dict[str, np.ndarray]
    channels: dict[str, int]
    meta: dict = field(default_factory=dict)

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def _make(cls, spec: ModelSpec, alive: dict, model_kwargs=None, meta=None) -> "Structure":
        alive = {n: np.unique(np.asarray(v, dtype=np.int64)) for n, v in alive.items()}
        return cls(spec.model, dict(model_kwargs or {}), alive, {n: spec.tensor(n).channels for n in alive},
                   dict(meta or {}))

    @classmethod
    def full(cls, spec: ModelSpec, names=None, **kw) -> "Structure":
        names = spec.names if names is None else names
        return cls._make(spec, {n: np.arange(spec.tensor(n).channels) for n in names}, **kw)

    @classmethod
    def from_counts(cls, spec: ModelSpec, counts: dict, **kw) -> "Structure":
        """Each named tensor keeps its first ``count`` channels."""
        return cls._make(spec, {n: np.arange(int(c)) for n, c in counts.items()}, **kw)

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
        """Raise a one-line error if this structure does not belong to ``spec``'s model."""
        if spec.model != self.model:
            raise CheckpointError(f"structure is for model {self.model!r}, not {spec.model!r}")
        for n, c in self.channels.items():
            if n not in spec:
                raise CheckpointError(f"structure names tensor {n!r}, which {spec.model} does not have")
            if spec.tensor(n).channels != c:
                raise CheckpointError(f"structure gives {n} {c} channels, {spec.model} has {spec.tensor(n).channels} "
                                      f"(built with other arguments?)")
            a = self.alive[n]
            if a.size and (a.min() < 0 or a.max() >= c):
                raise CheckpointError(f"structure has channel indices of {n} outside [0, {c})")
        return self

    def cost(self, model_or_spec, **kw) -> Cost:
        """Counted costs (see :func:`prunelab.counting.count` for the keyword flags)."""
        return count(model_or_spec, self, **kw)

    def empty_tensors(self) -> list[str]:
        return [n for n, v in self.alive.items() if len(v) == 0]

    def with_alive(self, updates: dict) -> "Structure":
        alive = {**self.alive, **{n: np.unique(np.asarray(v, dtype=np.int64)) for n, v in updates.items()}}
        return Structure(self.model, dict(self.model_kwargs), alive, dict(self.channels), dict(self.meta))

    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "kind": "static", "model": self.model, "model_kwargs": self.model_kwargs,
                "channels": self.channels, "alive": {n: v.tolist() for n, v in self.alive.items()},
                "counts": self.counts(), "meta": to_jsonable(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "Structure":
        if d.get("format") != FORMAT:
            raise CheckpointError(f"not a prunelab structure plan (format {d.get('format')!r}, expected {FORMAT!r})")
        if not isinstance(d.get("model"), str) or not isinstance(d.get("alive"), dict) \
                or not isinstance(d.get("channels"), dict) or set(d["alive"]) != set(d["channels"]):
            raise CheckpointError("structure plan is damaged: it needs model, and alive/channels for the same tensors")
        try:
            return cls(d["model"], dict(d.get("model_kwargs") or {}),
                       {n: np.asarray(v, dtype=np.int64).reshape(-1) for n, v in d["alive"].items()},
                       {n: int(c) for n, c in d["channels"].items()}, dict(d.get("meta") or {}))
        except (TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"structure plan is damaged ({type(e).__name__}: {str(e)[:80]})") from None

    def save(self, path) -> None:
        atomic_write_text(path, dumps_json(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path) -> "Structure":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"structure plan {path} does not exist")
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            return cls.from_dict(d)
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
    out = structure.with_alive(updates)
    for n in updates:
        out.channels[n] = spec.tensor(n).channels
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
