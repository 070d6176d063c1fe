"""BAR analysis in closed form: active neurons, Regular vs Mixed accounting.

References: BAR supp 003 §5 (Regular vs Mixed), §7 Fig. 1 (active neurons); docs/decisions.md §4.4.
Nothing here trains or differentiates; V and FLOP come from :func:`prunelab.counting.count`
(FLOP = 2 × MAC). The method's own loss pieces (the transition T(t, d), the budget bound and the
barrier) live with the method in :mod:`prunelab.methods.bar`.
"""

from __future__ import annotations


from ..counting import count

__all__ = ["active_neurons", "section_totals", "regular_vs_mixed"]

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
        branch is removed (docs/decisions.md §4.4, §4.9; a projection may survive on its own). Uses the
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
    its own alive set (B16); mixed: at its own width (supp §5, docs/decisions.md §4.4). FLOP = 2 × MAC.

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
