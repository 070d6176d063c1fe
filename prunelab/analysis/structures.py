"""Structure-similarity analysis for PFS (supplement 002, Fig. S1/S2; docs/decisions.md §3.7, P7).

Pure functions over a *study*: the JSON-able dict a PFS structure study writes. Its fields used here::

    {"scale": "cpu", "model": "resnet20",
     "layers": [...],                 # names of the gated layers, in order
     "full_widths": [...],            # unpruned width of each gated layer
     "seeds": [0, 1, ...], "epochs": [0, 1, 2, ...],   # checkpoint epochs; 0 = random init
     "structures": [{"seed": 0, "epoch": 0, "widths": [...], ...}, ...]}

A structure from epoch 0 (the random initialisation) is called *random*; one from an epoch >= 1 is
*pretrained*. Structures are compared by Pearson r between their per-layer vectors: raw channel
counts (``kind="counts"``) or keep ratios, counts / full widths (``kind="ratio"``) [unverified; P7].
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from ..counting import count

RANDOM_EPOCH = 0
KINDS = ("counts", "ratio")

# Names of the summary quantities, in the order they are reported.
QUANTITIES = (
    "random_vs_random",
    "pretrained_vs_pretrained_across_seeds",
    "random_vs_pretrained_same_seed",
    "random_vs_pretrained_all_seeds",
    "pretrained_vs_pretrained_same_seed",
    "neighbour_checkpoints",
    "distant_checkpoints",
)


def structure_label(seed: int, epoch: int) -> str:
    """Tick label of one structure: ``"s<seed>/random"`` for epoch 0, else ``"s<seed>/e<epoch>"``."""
    return f"s{int(seed)}/random" if int(epoch) == RANDOM_EPOCH else f"s{int(seed)}/e{int(epoch)}"


def _structures_by_key(study: dict) -> dict[tuple[int, int], dict]:
    """Index the study's structures by (seed, epoch); a duplicate key is an error, not a silent overwrite."""
    index: dict[tuple[int, int], dict] = {}
    for s in study["structures"]:
        key = (int(s["seed"]), int(s["epoch"]))
        if key in index:
            raise ValueError(f"study has two structures for seed {key[0]}, epoch {key[1]}")
        index[key] = s
    return index


def selected_keys(study: dict, seeds=None, epochs=None) -> list[tuple[int, int]]:
    """The (seed, epoch) pairs present in ``study``, ordered seed-major then by epoch.

    ``seeds``/``epochs`` default to the study's lists (their order is kept). Combinations the study
    has no structure for (e.g. a failed run) are left out rather than filled in.
    """
    index = _structures_by_key(study)
    seeds = study["seeds"] if seeds is None else seeds
    epochs = study["epochs"] if epochs is None else epochs
    return [(int(s), int(e)) for s in seeds for e in epochs if (int(s), int(e)) in index]


def structure_matrix(study: dict, seeds=None, epochs=None, kind: str = "counts"):
    """Per-layer structure vectors as rows of a matrix, with their labels.

    Args:
        study: the study dict (module docstring).
        seeds, epochs: which structures to take; default all, in the study's order. Rows are
            ordered seed-major, then by epoch.
        kind: ``"counts"`` (channels kept per layer) or ``"ratio"`` (channels kept / full width).

    Returns:
        ``(X, labels)``: ``X`` of shape (n_structures, n_layers), float; ``labels`` like
        ``["s0/random", "s0/e1", ...]`` (:func:`structure_label`).

    Raises:
        ValueError: unknown ``kind``, no structure selected, or a widths vector of the wrong length.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    index = _structures_by_key(study)
    keys = selected_keys(study, seeds, epochs)
    if not keys:
        raise ValueError(f"no structure in the study for seeds={seeds!r}, epochs={epochs!r}")
    full = np.asarray(study["full_widths"], dtype=float)
    rows = []
    for key in keys:
        widths = np.asarray(index[key]["widths"], dtype=float)
        if widths.shape != full.shape:
            raise ValueError(f"structure {structure_label(*key)} has {widths.size} widths, "
                             f"the study has {full.size} gated layers")
        rows.append(widths / full if kind == "ratio" else widths)
    return np.vstack(rows), [structure_label(*key) for key in keys]


def correlation_matrix(X) -> np.ndarray:
    """Pearson correlation between the rows of ``X`` (n_rows, n_features), vectorised.

    Equals ``np.corrcoef(X)`` where that is defined. A row with zero variance (e.g. a structure that
    keeps every layer at the same ratio, under ``kind="ratio"``) or with a non-finite entry has no
    defined Pearson r: its row and column are NaN, never a silent 0 or 1, so callers must skip them
    with nan-aware reductions (docs/decisions.md P7, §3.9 item 10). The diagonal is 1 for every row, since a
    structure is trivially identical to itself.

    "Zero variance" allows for float rounding: a row counts as constant when its centred norm is at
    most 1e-12 times its largest absolute value times sqrt(n_features).
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_rows, n_features), got shape {X.shape}")
    n, d = X.shape
    finite = np.all(np.isfinite(X), axis=1)
    Xf = np.where(finite[:, None], X, 0.0)  # keep NaNs out of the matrix product; masked below
    centred = Xf - Xf.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    scale = np.abs(Xf).max(axis=1, initial=0.0) * math.sqrt(max(d, 1))
    defined = finite & (norms > 1e-12 * scale) & (norms > 0)
    unit = np.zeros_like(centred)
    unit[defined] = centred[defined] / norms[defined, None]
    corr = np.clip(unit @ unit.T, -1.0, 1.0)  # rounding can push |r| a hair above 1
    corr[~defined, :] = np.nan
    corr[:, ~defined] = np.nan
    corr[np.diag_indices(n)] = 1.0
    return corr


def _nan_mean(values: list[float]) -> tuple[float, int, int]:
    """Mean of the finite values, how many were used, how many were NaN (skipped); no warnings."""
    arr = np.asarray(values, dtype=float)
    ok = np.isfinite(arr)
    mean = float(arr[ok].mean()) if ok.any() else float("nan")
    return mean, int(ok.sum()), int((~ok).sum())


def _pair_groups(keys: list[tuple[int, int]]) -> dict[str, list[tuple[int, int]]]:
    """Row-index pairs belonging to each summary quantity (see :func:`summarize`)."""
    groups: dict[str, list[tuple[int, int]]] = {q: [] for q in QUANTITIES}
    for i, j in combinations(range(len(keys)), 2):
        (si, ei), (sj, ej) = keys[i], keys[j]
        ri, rj = ei == RANDOM_EPOCH, ej == RANDOM_EPOCH
        if ri and rj and si != sj:
            groups["random_vs_random"].append((i, j))
        elif not ri and not rj and si != sj:
            groups["pretrained_vs_pretrained_across_seeds"].append((i, j))
        elif ri != rj:
            groups["random_vs_pretrained_all_seeds"].append((i, j))
            if si == sj:
                groups["random_vs_pretrained_same_seed"].append((i, j))
        elif not ri and not rj and si == sj:
            groups["pretrained_vs_pretrained_same_seed"].append((i, j))
    position = {key: i for i, key in enumerate(keys)}
    for seed in dict.fromkeys(s for s, _ in keys):
        pretrained = sorted(e for s, e in keys if s == seed and e != RANDOM_EPOCH)
        rows = [position[(seed, e)] for e in pretrained]
        groups["neighbour_checkpoints"] += list(zip(rows[:-1], rows[1:]))
        # With only two checkpoints "first vs last" is itself a neighbour pair, which would make
        # claim (3) compare a number with itself; such seeds contribute no distant pair.
        if len(rows) >= 3:
            groups["distant_checkpoints"].append((rows[0], rows[-1]))
    return groups


def summarize(study: dict, kind: str = "counts", seeds=None) -> dict:
    """The mean correlations the supplement's claims rest on (supp 002, Fig. S1/S2).

    Correlations are computed over all structures of the study (:func:`structure_matrix` with
    ``kind``, then :func:`correlation_matrix`); each quantity is the nan-aware mean over its pairs:

    - ``random_vs_random``: random structures of different seeds.
    - ``pretrained_vs_pretrained_across_seeds``: pretrained structures of different seeds.
    - ``random_vs_pretrained_same_seed``: each seed's random structure vs that seed's pretrained ones.
    - ``random_vs_pretrained_all_seeds``: each random structure vs every pretrained one (any seed).
    - ``pretrained_vs_pretrained_same_seed``: every pair of pretrained checkpoints of one seed.
    - ``neighbour_checkpoints``: consecutive pretrained checkpoints (epochs >= 1, in increasing
      order among those the seed has) of the same seed.
    - ``distant_checkpoints``: first vs last pretrained checkpoint of the same seed, for seeds with
      at least 3 pretrained checkpoints (with 2, first vs last is a neighbour pair).

    A quantity with no defined pair is NaN.

    Returns:
        dict with ``kind``, ``n_structures``, ``labels``, one float per quantity above, and
        ``n_pairs`` / ``n_nan_pairs_skipped``: per quantity, how many pairs entered the mean and how
        many were skipped because their correlation is undefined (a constant structure, P7).
    """
    X, labels = structure_matrix(study, seeds=seeds, kind=kind)
    keys = selected_keys(study, seeds=seeds)
    corr = correlation_matrix(X)
    summary: dict = {"kind": kind, "n_structures": len(labels), "labels": labels,
                     "n_pairs": {}, "n_nan_pairs_skipped": {}}
    for name, pairs in _pair_groups(keys).items():
        mean, used, skipped = _nan_mean([corr[i, j] for i, j in pairs])
        summary[name] = mean
        summary["n_pairs"][name] = used
        summary["n_nan_pairs_skipped"][name] = skipped
    return summary


def _claim(lhs: float, rhs: float, lhs_less: bool, statement: str) -> dict:
    """One claim entry; undefined means (NaN) make it not hold and ``evaluated`` False."""
    evaluated = bool(np.isfinite(lhs) and np.isfinite(rhs))
    holds = evaluated and (lhs < rhs if lhs_less else lhs > rhs)
    return {"holds": bool(holds), "evaluated": evaluated, "lhs": float(lhs), "rhs": float(rhs),
            "statement": statement}


def claims(summary: dict) -> dict:
    """Check the supplement's claims (docs/decisions.md §6.3) against a :func:`summarize` result.

    Returns a dict with keys ``"1_random_unlike_pretrained"``, ``"1b_random_unlike_every_pretrained"``,
    ``"2_random_more_diverse"`` and ``"3_near_beats_distant"``; each value is ``{"holds": bool,
    "evaluated": bool, "lhs": float, "rhs": float, "statement": str}``. ``holds`` is the strict
    inequality in ``statement``; ``evaluated`` is False when either side is NaN (no defined pair), and
    then ``holds`` is False.

    The supplement says structures from random weights are *unlike* every pretrained-derived one; it
    does not say which pairs its figure compares (unverified). Claim (1) compares a seed's random
    structure with its pretrained ones against neighbouring checkpoints (like for like, within one run);
    the stricter (1b) against every pair of that seed's pretrained checkpoints, distant ones included.
    Claim (4) (ResNet vs VGG) needs two studies and is not checked here. Claim (2) needs several seeds
    (NaN, not evaluated, within one seed).
    """
    return {
        "1_random_unlike_pretrained": _claim(
            summary["random_vs_pretrained_same_seed"], summary["neighbour_checkpoints"], True,
            "mean r(random, pretrained; same seed) < mean r(neighbouring checkpoints)"),
        "1b_random_unlike_every_pretrained": _claim(
            summary["random_vs_pretrained_same_seed"], summary["pretrained_vs_pretrained_same_seed"], True,
            "mean r(random, pretrained; same seed) < mean r(every pair of pretrained checkpoints; same seed)"),
        "2_random_more_diverse": _claim(
            summary["random_vs_random"], summary["pretrained_vs_pretrained_across_seeds"], True,
            "mean r(random, random; across seeds) < mean r(pretrained, pretrained; across seeds)"),
        "3_near_beats_distant": _claim(
            summary["neighbour_checkpoints"], summary["distant_checkpoints"], False,
            "mean r(neighbouring checkpoints) > mean r(first vs last checkpoint)"),
    }


def claims_per_seed(study: dict) -> list[dict]:
    """Claims (1), (1b) and (3) seed by seed, under both vectorisations (channel counts and keep
    ratios; P7): one row per (seed, kind, claim) with its two numbers and whether it holds."""
    rows = []
    for seed in study["seeds"]:
        if not selected_keys(study, seeds=[seed]):
            continue
        for kind in KINDS:
            summ = summarize(study, kind=kind, seeds=[seed])
            for key, c in claims(summ).items():
                if key.startswith("2_"):
                    continue  # across seeds only
                rows.append({"seed": int(seed), "kind": kind, "claim": key, **c})
    return rows


def density_claims(rows) -> list[dict]:
    """Supplement Fig. S5 ("accuracy is not very sensitive to r; a small r may hurt") on the density
    sweep's runs (``{"density", "acc", ...}`` rows): the spread of the per-density mean accuracies, and
    whether the smallest r is the least accurate."""
    by = {}
    for r in rows:
        by.setdefault(float(r["density"]), []).append(float(r["acc"]))
    if len(by) < 2:
        return []
    means = {d: float(np.mean(v)) for d, v in sorted(by.items())}
    stds = [float(np.std(v, ddof=1)) for v in by.values() if len(v) > 1]
    spread = max(means.values()) - min(means.values())
    smallest = min(means)
    return [{"claim": "accuracy is not very sensitive to r: the per-r mean accuracies span at most 2 points",
             "means": means, "spread": spread, "run_std_max": max(stds) if stds else None,
             "holds": bool(spread <= 0.02)},
            {"claim": "the smallest r is the least accurate (a small r may hurt; reported, not a test)",
             "smallest_r": smallest, "means": means, "holds": None if len(by) < 3 else
             bool(means[smallest] == min(means.values()))}]


def _by(rows, key):
    by: dict = {}
    for r in rows:
        by.setdefault(float(r[key]), []).append(float(r["acc"]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) for k, v in sorted(by.items())}


def pruning_ratio_claims(rows, full_acc=None, keep_of_full: float = 0.9) -> list[dict]:
    """Supplement Fig. S4 ("accuracy degrades gracefully as R* grows, with no collapse") on the
    pruning-ratio sweep's runs (``{"ratio", "acc", ...}`` rows, each trained from scratch on the same
    schedule as the full model whose mean accuracy is ``full_acc``):

    1. the mean accuracy falls as R* grows: the largest R*'s mean is below the smallest's;
    2. no collapse: the largest R*'s mean accuracy is at least ``keep_of_full`` (0.9) of the full
       model's (the threshold is ours: the supplement gives no number).

    Each entry carries the per-R* means, sample stds and run counts it was decided on."""
    by = _by(rows, "ratio")
    if len(by) < 2:
        return []
    lo, hi = min(by), max(by)
    out = [{"claim": "mean accuracy falls as the pruning ratio R* grows (largest vs smallest R*)",
            "per_ratio": by, "holds": bool(by[hi][0] < by[lo][0])}]
    if full_acc is not None:
        out.append({"claim": f"no collapse: at the largest R* the mean accuracy keeps >= {keep_of_full:g} of the full model's",
                    "per_ratio": by, "full_acc": float(full_acc), "ratio_of_full": by[hi][0] / float(full_acc),
                    "holds": bool(by[hi][0] >= keep_of_full * float(full_acc))})
    return out


# -- any structure: per-layer costs and the likeness of two structures (the explorer notebook) -----


def layer_costs(spec, widths: dict | None = None) -> list[dict]:
    """Per gated tensor of ``spec`` at ``widths`` (``{tensor: kept channels}``; missing: full): its
    channels kept, the MACs of the conv producing it and their share of the network's MACs, and its
    activation volume (H*W*kept) with its share of V. Counted by the package's counter."""
    c = count(spec, widths={n: w for n, w in (widths or {}).items()})
    total_macs, total_v = float(c.macs), float(c.volume)
    by_writer = {op["name"]: op for op in c.per_op}
    writer_of = {op.writes: op.name for op in spec.ops if op.writes}
    rows = []
    for t in c.per_tensor:
        macs = float(by_writer[writer_of[t["name"]]]["macs"]) if t["name"] in writer_of else 0.0
        rows.append({"name": t["name"], "slot": t["slot"], "channels": t["channels"], "kept": float(t["alive"]),
                     "keep_ratio": float(t["alive"]) / t["channels"], "macs": macs,
                     "macs_share": macs / total_macs if total_macs else 0.0, "volume": float(t["volume"]),
                     "volume_share": float(t["volume"]) / total_v if total_v else 0.0})
    return rows


def structure_similarity(spec, a: dict, b: dict, names=None) -> dict:
    """How alike two structures of one model are: the Pearson r of their per-tensor channel counts and
    of their keep ratios over ``names`` (default: the tensors either prunes), and the mean absolute
    difference of the keep ratios. NaN where a vector is constant."""
    names = list(names or [n for n in spec.names if n in a or n in b])
    full = np.array([spec.tensor(n).channels for n in names], dtype=np.float64)
    va = np.array([a.get(n, spec.tensor(n).channels) for n in names], dtype=np.float64)
    vb = np.array([b.get(n, spec.tensor(n).channels) for n in names], dtype=np.float64)

    def r(x, y):
        return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")

    return {"pearson_counts": r(va, vb), "pearson_keep_ratios": r(va / full, vb / full),
            "mean_abs_keep_ratio_difference": float(np.abs(va / full - vb / full).mean()), "tensors": len(names)}
