"""Learning-rate multipliers as pure functions of the global step (applied every step)."""

from __future__ import annotations

import math
from typing import Callable


def lr_multiplier(name: str, total_steps: int, steps_per_epoch: int, *, warmup: float = 0.0,
                  warmup_start: float = 0.0, milestones=(), step_size: int = 30, gamma: float = 0.1,
                  final_factor: float = 0.0) -> Callable[[int], float]:
    """Return ``f(step) -> multiplier of the peak lr``.

    ``warmup`` is a fraction of ``total_steps`` when below 1, else a number of epochs; the ramp is
    linear from ``warmup_start``. ``milestones`` and ``step_size`` are in epochs.

    * ``constant``: 1 after warm-up.
    * ``cosine``: half-cosine from 1 to ``final_factor`` over the steps after warm-up.
    * ``onecycle``: linear decay from 1 to ``final_factor`` after warm-up (with the default 15%
      warm-up this is the one-cycle recipe of ``shared/design/measured.md``).
    * ``multistep``: x ``gamma`` at each milestone epoch. ``step``: x ``gamma`` every ``step_size`` epochs.
    """
    total = max(1, int(total_steps))
    w = int(round(warmup * total)) if warmup < 1 else int(round(warmup * steps_per_epoch))
    w = min(w, total - 1) if total > 1 else 0
    ms = sorted(int(m * steps_per_epoch) for m in milestones)
    ss = max(1, int(step_size * steps_per_epoch))

    def decay(step: int) -> float:
        t = (step - w) / max(1, total - w)
        t = min(max(t, 0.0), 1.0)
        if name == "constant":
            return 1.0
        if name == "cosine":
            return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if name == "onecycle":
            return final_factor + (1 - final_factor) * (1 - t)
        if name == "multistep":
            return gamma ** sum(step >= m for m in ms)
        if name == "step":
            return gamma ** (step // ss)
        raise ValueError(f"unknown schedule {name!r}")

    def f(step: int) -> float:
        if step < w:
            return warmup_start + (1 - warmup_start) * (step + 1) / w
        return decay(step)

    return f
