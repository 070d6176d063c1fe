"""The interface between the trainer and what plugs into it: hooks and their parameter groups.

A low layer: methods implement :class:`Hook`, the trainer (:mod:`prunelab.train.trainer`) calls it.
Neither side imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError

# "Trainer" in the annotations below is prunelab.train.trainer.Trainer (not imported: a lower layer)


@dataclass
class ParamGroup:
    """Parameters a method optimises with their own optimiser (gates, generators, predictors).

    ``schedule``: ``"constant"``, ``"cosine"`` (to 0 over the run) or ``"main"`` (the weights'
    schedule). ``weight_decay`` defaults to 0: decaying gate parameters is rarely intended.
    """

    name: str
    params: list
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    schedule: str = "constant"


class Hook:
    """Base class of training hooks; every method is a no-op by default."""

    def setup(self, trainer: "Trainer") -> None:
        """Called once before optimisers are built (freeze parameters here)."""

    def param_groups(self, trainer: "Trainer") -> list[ParamGroup]:
        return []

    def set_mode(self, trainer: "Trainer", training: bool) -> None:
        """Put modules in train/eval mode. Default: the whole model follows ``training``."""
        trainer.model.train(training)

    def before_forward(self, trainer: "Trainer", batch: "Batch") -> None:
        """Called before each training forward pass (e.g. a generator sets gate values)."""

    def loss_terms(self, trainer: "Trainer", batch: "Batch") -> dict:
        """Extra loss terms (summed into the loss). Returning ``"ce"`` replaces the task loss."""
        return {}

    def after_step(self, trainer: "Trainer", batch: "Batch") -> None:
        """Called after each optimiser step (e.g. clamp gates, update a budget)."""

    def eval_batch(self, trainer: "Trainer", split: str, batch: "Batch") -> None:
        """Called on every batch of the per-epoch evaluations (split ``"test"``, ``"val"``) with its
        logits and per-sample CE, when the hook sets ``wants_eval_batches`` (per-instance statistics)."""

    wants_eval_batches = False

    def end_epoch(self, trainer: "Trainer", epoch: int) -> dict:
        """Called after each epoch's evaluation; returned scalars are logged."""
        return {}

    def should_stop(self, trainer: "Trainer") -> bool:
        """Asked at the end of every epoch (and when a run resumes): True ends training early (e.g. PFS
        stops learning gates once its save rule has kept some). Must follow from the hook's state, so a
        resumed run stops where the uninterrupted one did."""
        return False

    @property
    def state_key(self) -> str:
        """The name this hook's :meth:`state_dict` is saved under in a trainer checkpoint (as
        Lightning's ``Callback.state_key``): by default the class's qualified name.

        A resume gives each hook the state saved under its key, so the order of the hooks does not
        matter, and a checkpoint whose keys differ from the run's is refused. Override it to tell apart
        two hooks of one class by a setting; hooks of one trainer that still share a key get ``#1``,
        ``#2``, ... appended in the order the trainer is given them (:func:`hook_state_keys`).
        """
        return type(self).__qualname__

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def hook_state_keys(hooks) -> list[str]:
    """The checkpoint key of each of ``hooks``: its :attr:`Hook.state_key`, with ``#1``, ``#2``, ...
    appended, in order, to keys that several hooks share (so each hook's state has its own entry)."""
    keys = [h.state_key for h in hooks]
    counts = {k: keys.count(k) for k in keys}
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
        out.append(k if counts[k] == 1 else f"{k}#{seen[k]}")
    if len(set(out)) != len(out):  # a hook's own key looks like a numbered one: states would overwrite
        raise ConfigError(f"hook state keys {out} are not unique; give the hooks distinct state_key values")
    return out


@dataclass
class Batch:
    """One training batch and what the forward pass produced."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    logits: torch.Tensor | None = None
    ce_per_sample: torch.Tensor | None = None
