"""BAR analysis in closed form: budget schedule, barrier, active neurons, Regular vs Mixed accounting.

References: BAR supp 003 §1 (T(t, d)), §5 (Regular vs Mixed), §7 Fig. 1 (active neurons);
methods.md §4.4–§4.6. Nothing here trains or differentiates; V and FLOP come from
:func:`prunelab.counting.count` (FLOP = 2 × MAC).
"""

from __future__ import annotations

import numpy as np

from ..counting import count

__all__ = ["transition", "budget_bound", "barrier", "barrier_onset", "active_neurons", "section_totals",
           "regular_vs_mixed"]

# Below this hardness the shifted sigmoid is numerically a linear ramp (and 0/0 at d = 0).
_LINEAR_D = 1e-6


def transition(t, d=10.0):
    """Sigmoidal transition T(t, d) = (Sigmoid(d(t − ½)) − δ)/(1 − 2δ), δ = Sigmoid(−d/2) (supp Eq. 1).

    ``t`` (fraction of the pruning phase elapsed) is clipped to [0, 1], so T(0) = 0 and T(1) = 1
    exactly and the bound stays at the budget after the phase. ``d`` sets the hardness: d → 0 is the
    linear ramp T = t (returned as such for d < 1e-6, where the formula is 0/0), d → ∞ a step; the
    supplement uses d = 10 (δ = 0.0066929). Both arguments broadcast.

    Evaluated as (tanh(d(t − ½)/2) + tanh(d/4)) / (2 tanh(d/4)), the same function written with
    Sigmoid(x) = (1 + tanh(x/2))/2, which avoids the cancellation in 1 − 2δ for small d.
    """
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    d = np.asarray(d, dtype=float)
    if np.any(d < 0):
        raise ValueError("transition hardness d must be >= 0")
    d_safe = np.where(d < _LINEAR_D, 1.0, d)  # placeholder where the linear branch is taken
    half = np.tanh(d_safe / 4.0)
    curve = (np.tanh(d_safe * (t - 0.5) / 2.0) + half) / (2.0 * half)
    out = np.where(d < _LINEAR_D, t, curve)
    out = np.clip(out, 0.0, 1.0)  # rounding can leave 1 + 1e-16 at t = 1
    return out[()] if out.ndim == 0 else out


def budget_bound(t, b0, budget, d=10.0):
    """Annealed upper bound b(t) = (1 − T(t, d))·b₀ + T(t, d)·B (methods.md §4.6; B2).

    ``b0`` must exceed the starting V (the package uses 1.01·V₀) or the barrier is infinite at step 0.
    """
    tt = transition(t, d)
    out = (1.0 - tt) * np.asarray(b0, dtype=float) + tt * np.asarray(budget, dtype=float)
    return out[()] if np.ndim(out) == 0 else out


def barrier_onset(budget, margin=1e-4):
    """Where the barrier starts rising: a = B·(1 − margin) (package form of methods.md §4.5; B1).

    The re-implementation uses a = B − 1e-4·b₀ instead; both keep b − a > 0 at t = 1.
    """
    return np.asarray(budget, dtype=float) * (1.0 - margin)


def barrier(v, a, b, cap=1e10):
    """Budget barrier f(V; a, b) of methods.md §4.5 (B1), vectorised and always finite.

    * V ≤ a: 0 (budget comfortably met, the sparsity loss is switched off);
    * a < V < b: (V − a)² / ((b − a)(b − V)) = g(x) with x = (V − a)/(b − a) and g(x) = x²/(1 − x),
      rising to +∞ as V → b;
    * V ≥ b: ``cap`` (the +∞ of the paper, capped so that the loss stays finite).

    Values inside (a, b) are also capped. The form comes only from an unofficial re-implementation
    ([unverified]; B1). Requires b > a everywhere. A NaN volume raises: V is a count, so NaN means
    the counting upstream is broken and must not be hidden behind the cap.
    """
    v = np.asarray(v, dtype=float)
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if np.any(np.isnan(v)):
        raise ValueError("barrier got a NaN volume")
    if np.any(b <= a):
        raise ValueError("barrier needs b > a (b0 must exceed V0 and the margin must be > 0)")
    inside = (v > a) & (v < b)
    gap = np.where(inside, b - v, 1.0)  # placeholder keeps the division finite outside (a, b)
    val = np.where(inside, (v - a) ** 2 / ((b - a) * gap), 0.0)
    val = np.where(v >= b, cap, np.minimum(val, cap))
    return val[()] if val.ndim == 0 else val


# -- active neurons (supp §7 Fig. 1) ---------------------------------------------------------------


def _spec_of(model_or_spec):
    from ..models.registry import describe
    from ..models.spec import ModelSpec

    return model_or_spec if isinstance(model_or_spec, ModelSpec) else describe(model_or_spec)


def active_neurons(spec, structure=None, residual="mixed"):
    """One row per gated tensor with its alive channels and their activation volume.

    Args:
        spec: a :class:`~prunelab.models.spec.ModelSpec` (or a model from :func:`prunelab.models.create`).
        structure: a :class:`~prunelab.pruning.structure.Structure` or ``{tensor: alive indices}``;
            ``None`` is the full network.
        residual: ``"mixed"`` counts each tensor at its own alive width; ``"regular"`` counts a delta
            at the width of the union with its block input (B16), as in :func:`prunelab.counting.count`.

    Returns:
        DataFrame with columns name, slot, stage, block, channels, alive, area, alive_volume
        (= area·alive; the column sums to ``count(...).volume``) and alive_own (the tensor's own
        alive channels, equal to ``alive`` except for regular-accounted deltas; used to detect
        eliminated branches).
    """
    import pandas as pd

    spec = _spec_of(spec)
    cost = count(spec, structure, residual=residual)
    own = cost if residual == "mixed" else count(spec, structure, residual="mixed")
    rows = []
    for row, own_row in zip(cost.per_tensor, own.per_tensor):
        rows.append({"name": row["name"], "slot": row["slot"], "stage": row["stage"], "block": row["block"],
                     "channels": row["channels"], "alive": int(row["alive"]), "area": row["area"],
                     "alive_volume": int(row["volume"]), "alive_own": int(own_row["alive"])})
    return pd.DataFrame(rows)


def _section_name(name: str, stage: int, block: int) -> str:
    # Tensors outside residual blocks (stem, VGG convs) are sections of their own.
    return name if block < 0 else f"stage {stage} block {block}"


def section_totals(df):
    """Active neurons per network section, as in supp §7 Fig. 1.

    Sections: ``stem`` (and any other tensor outside a residual block, under its own name), then one
    ``"stage s block b"`` per residual block grouping its mid, delta and (first block) proj tensors;
    ``s`` and ``b`` are the spec's indices (stages from 1, blocks from 0). Order: network order.

    Args:
        df: output of :func:`active_neurons`.

    Returns:
        DataFrame with columns section, stage, block, channels (full width), alive, alive_volume and
        eliminated — True when the block's ``mid`` or ``delta`` has no alive channel, i.e. its residual
        branch is removed (methods.md §4.4, §4.9; a projection may survive on its own). Uses the
        ``alive_own`` column when present, so regular accounting does not hide a dead delta.
    """
    import pandas as pd

    own_col = "alive_own" if "alive_own" in df.columns else "alive"
    sections: dict[str, dict] = {}
    for r in df.itertuples(index=False):
        key = _section_name(r.name, int(r.stage), int(r.block))
        s = sections.setdefault(key, {"section": key, "stage": int(r.stage), "block": int(r.block), "channels": 0,
                                      "alive": 0, "alive_volume": 0, "eliminated": False})
        s["channels"] += int(r.channels)
        s["alive"] += int(r.alive)
        s["alive_volume"] += int(r.alive_volume)
        if r.slot in ("mid", "delta") and int(getattr(r, own_col)) == 0:
            s["eliminated"] = True
    return pd.DataFrame(list(sections.values()),
                        columns=["section", "stage", "block", "channels", "alive", "alive_volume", "eliminated"])


# -- Regular vs Mixed (supp §5) --------------------------------------------------------------------


def regular_vs_mixed(spec, structure):
    """V and FLOP of one pruned structure counted with a regular ResBlock and with BAR's mixed block.

    Regular: each delta is computed (and counted) at the width of the union of its block input and
    its own alive set (B16); mixed: at its own width (supp §5, methods.md §4.4). FLOP = 2 × MAC.

    Returns:
        dict with v_regular, v_mixed, v_delta, flop_regular, flop_mixed, flop_delta, where the deltas
        are relative to regular, (mixed − regular)/regular, as fractions (−0.43 for the supplement's
        "−43 %"). Mixed ≤ regular always.
    """
    spec = _spec_of(spec)
    reg = count(spec, structure, residual="regular")
    mix = count(spec, structure, residual="mixed")
    v_r, v_m = float(reg.volume), float(mix.volume)
    f_r, f_m = float(reg.flops), float(mix.flops)
    return {"v_regular": v_r, "v_mixed": v_m, "v_delta": (v_m - v_r) / v_r,
            "flop_regular": f_r, "flop_mixed": f_m, "flop_delta": (f_m - f_r) / f_r}
