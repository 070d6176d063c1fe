"""ManiDP analyses (supplement 000): similarity matrices, lambda(x_i) by instance complexity, the
distribution and ranking of per-instance costs, and the claims of the notebook, recomputed from the
per-instance arrays a study keeps (``results/manidp_<scale>.npz``).

Nothing here imports the method: a gated network's per-instance gates expose ``last_descriptor`` (the
pooled pre-mask feature) and ``last_saliency`` (the un-thresholded saliency) after a forward pass.
"""

from __future__ import annotations

import numpy as np

from ..counting import count


def cosine_similarity(v: np.ndarray) -> np.ndarray:
    """Cosine similarity of the rows of ``v`` (an all-zero row gives zeros)."""
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.maximum(n, 1e-12)
    return v @ v.T


def similarity_matrices(gated, x, layers=None) -> dict:
    """``{layer: (R, T)}`` of a ManiDP-style gated network on the batch ``x`` (eval mode): R^l from
    the pooled pre-mask features, T^l from the un-thresholded saliencies (supplement §2)."""
    import torch

    was = gated.training
    gated.eval()
    keep = {n: getattr(g, "keep_descriptor", None) for n, g in gated.items()}
    for _, g in gated.items():
        if hasattr(g, "keep_descriptor"):
            g.keep_descriptor = True  # the pooled features are needed here even if training skipped them
    try:
        with torch.no_grad():
            gated(x)
        out = {}
        for name, g in gated.items():
            if layers is not None and name not in layers:
                continue
            out[name] = (cosine_similarity(g.last_descriptor.cpu().numpy()),
                         cosine_similarity(g.last_saliency.cpu().numpy()))
        return out
    finally:
        gated.train(was)
        for n, g in gated.items():
            if keep[n] is not None:
                g.keep_descriptor = keep[n]


def agreement(r: np.ndarray, t: np.ndarray) -> dict:
    """How alike R and T are: the Pearson r of their off-diagonal entries, and mean (R - T)^2 (the
    similarity loss of that layer)."""
    r, t = np.asarray(r, dtype=np.float64), np.asarray(t, dtype=np.float64)
    iu = np.triu_indices(r.shape[0], 1)
    a, b = r[iu], t[iu]
    pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {"pearson": pearson, "loss": float(((r - t) ** 2).mean())}


def complexity_groups(reference_ce: np.ndarray, q: float = 0.25) -> dict:
    """Training-set indices of the complex (top ``q`` of the pretrained network's CE) and simple
    (bottom ``q``) instances."""
    ce = np.asarray(reference_ce, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(ce))
    lo, hi = np.quantile(ce[valid], [q, 1 - q])
    return {"complex": valid[ce[valid] >= hi], "simple": valid[ce[valid] <= lo], "thresholds": (float(lo), float(hi))}


def lambda_by_complexity(weights_mean: np.ndarray, reference_ce: np.ndarray, q: float = 0.25) -> dict:
    """Mean lambda(x_i)/lambda' over training of the complex and the simple instances (per instance
    first, then over the group), with the group sizes."""
    g = complexity_groups(reference_ce, q)
    w = np.asarray(weights_mean, dtype=np.float64)
    out = {}
    for k in ("complex", "simple"):
        v = w[g[k]]
        v = v[~np.isnan(v)]
        out[k] = {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}
    out["ce_thresholds"] = g["thresholds"]
    return out


def per_instance_macs(spec, kept: np.ndarray, layers: list[str]) -> np.ndarray:
    """MACs of every instance's sub-network from its kept-channel counts (instances x layers)."""
    kept = np.asarray(kept)
    return np.asarray(count(spec, widths={n: kept[:, j].astype(np.int64) for j, n in enumerate(layers)}).macs,
                      dtype=np.float64)


def cost_ranking(macs: np.ndarray) -> np.ndarray:
    """Instance positions ordered by their sub-network's MACs, cheapest first (ties: by position)."""
    macs = np.asarray(macs)
    return np.lexsort((np.arange(len(macs)), macs))


def implied_reduction(spec, layers: list[str], keep_ratios) -> float:
    """The MACs reduction of one network whose layers keep ``keep_ratios`` of their channels (a number
    for all, or one per layer): what a remain rate implies when every instance keeps the same widths."""
    ratios = np.broadcast_to(np.asarray(keep_ratios, dtype=np.float64), (len(layers),))
    widths = {n: float(r * spec.tensor(n).channels) for n, r in zip(layers, ratios)}
    c = count(spec, widths={n: np.float64(w) for n, w in widths.items()})
    return 1 - float(c.macs) / float(count(spec).macs)


def pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(np.asarray(a)))
    rb = np.argsort(np.argsort(np.asarray(b)))
    return pearson(ra, rb)


def full_matrix(tri: np.ndarray) -> np.ndarray:
    """Symmetric (..., B, B) matrices with a unit diagonal from their off-diagonal upper triangles
    (..., B(B-1)/2), as the study stores R^l and T^l; full matrices are returned as they are."""
    tri = np.asarray(tri, dtype=np.float32)
    if tri.ndim >= 2 and tri.shape[-1] == tri.shape[-2] and tri.ndim >= 3:
        return tri
    m = tri.shape[-1]
    b = int(round((1 + np.sqrt(1 + 8 * m)) / 2))
    if b * (b - 1) // 2 != m:
        raise ValueError(f"{m} entries are not the upper triangle of a square matrix")
    out = np.ones(tri.shape[:-1] + (b, b), dtype=np.float32)
    iu = np.triu_indices(b, 1)
    out[..., iu[0], iu[1]] = tri
    out[..., iu[1], iu[0]] = tri
    return out


def similarity(arrays, prefix: str) -> np.ndarray:
    """(layers, 2 [R, T], B, B) float32 matrices of run ``prefix`` at the end of training."""
    return full_matrix(arrays[f"{prefix}/similarity_end"])


def kept_sets(arrays, prefix: str, channels: list[int]) -> np.ndarray:
    """(images, sum of channels) booleans: the kept channels of a sample of test images (layers in order)."""
    packed = arrays[f"{prefix}/test_masks_packed"]
    return np.unpackbits(packed, axis=1, count=int(sum(channels))).astype(bool)


def layer_jaccard(alive: np.ndarray, channels: list[int]) -> np.ndarray:
    """Per layer, the mean pairwise Jaccard similarity of the kept sets of different images."""
    from ..utils import mean_pairwise_jaccard

    bounds = np.cumsum([0] + list(channels))
    return np.array([mean_pairwise_jaccard(alive[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])])


def runs_of(study: dict, variant: str) -> list[dict]:
    """The study's sub-run records of ``variant`` (``with_sim``, ``without_sim``, ``static``, ``l1``)."""
    return [r for r in study.get("runs", []) if r.get("variant") == variant]


def _acc_macs(runs: list[dict]) -> dict:
    acc = np.array([r["final_test_acc"] for r in runs], dtype=np.float64)
    macs = np.array([r["mean_macs"] for r in runs], dtype=np.float64)
    return {"acc": acc.tolist(), "acc_mean": float(acc.mean()), "acc_std": float(acc.std(ddof=1)) if len(acc) > 1
            else None, "macs_mean": float(macs.mean()), "n": len(runs)}


def _compare(study, claim_id, text, other: str, macs_tol: float = 0.01) -> dict:
    dyn, oth = runs_of(study, "with_sim"), runs_of(study, other)
    c = {"id": claim_id, "claim": text}
    if not dyn or not oth:
        return {**c, "holds": None, "missing": [v for v, r in (("with_sim", dyn), (other, oth)) if not r]}
    a, b = _acc_macs(dyn), _acc_macs(oth)
    gap = abs(a["macs_mean"] - b["macs_mean"]) / a["macs_mean"]
    return {**c, "dynamic": a, other: b, "macs_gap": gap,
            "holds": bool(a["acc_mean"] >= b["acc_mean"] and gap <= macs_tol)}


def claims(study: dict, arrays, spec) -> list[dict]:
    """The notebook's claims, each a dict with a stable ``id``, its numbers and whether it holds
    (``holds``: True/False, or None with ``missing`` when the sub-runs it needs are not in the results),
    recomputed from the per-instance arrays and the sub-runs' records.

    ``study`` is the results JSON, ``arrays`` the NPZ (``<prefix>/<name>`` keys: ``with_sim`` and
    ``without_sim`` for seed 0, ``with_sim-s1`` ...), ``spec`` the model's.
    """
    layers, channels = study["layers"], study["channels"]
    out = [
        _compare(study, "dynamic_beats_static", "ManiDP (with L_sim) reaches at least the static mask's mean final "
                 "accuracy, at mean MACs within 1 % of each other", "static"),
        _compare(study, "dynamic_vs_l1", "ManiDP (with L_sim) reaches at least l1's mean final accuracy at equal "
                 "MACs (within 1 %) and epochs", "l1"),
    ]
    dyn = [r for r in runs_of(study, "with_sim") if f"{r.get('prefix')}/test_kept" in arrays] or (
        [{"prefix": "with_sim", "seed": 0}] if "with_sim/test_kept" in arrays else [])
    jac, rho = [], []
    dense_ce = arrays["dense_test_ce"] if "dense_test_ce" in arrays else None
    for r in dyn:
        p = r["prefix"]
        if f"{p}/test_masks_packed" in arrays:
            jac.append(float(layer_jaccard(kept_sets(arrays, p, channels), channels).mean()))
        if dense_ce is not None:
            macs = per_instance_macs(spec, arrays[f"{p}/test_kept"], layers)
            rho.append(spearman(macs, dense_ce[arrays[f"{p}/test_index"]]))
    out.append({"id": "masks_differ", "claim": "the kept-channel sets of different test images differ: mean pairwise "
                "Jaccard similarity, averaged over layers, below 0.8", "per_run": jac,
                "mean": float(np.mean(jac)) if jac else None,
                "holds": bool(np.mean(jac) < 0.8) if jac else None, **({} if jac else {"missing": ["kept-set arrays"]})})
    out.append({"id": "cost_tracks_difficulty", "claim": "per-image MACs rank like the pretrained network's loss on the "
                "image: Spearman correlation above 0.2", "per_run": rho, "mean": float(np.mean(rho)) if rho else None,
                "holds": bool(np.mean(rho) > 0.2) if rho else None, **({} if rho else {"missing": ["dense_test_ce"]})})
    if "with_sim/similarity_end" in arrays and "without_sim/similarity_end" in arrays:
        sw, so = similarity(arrays, "with_sim"), similarity(arrays, "without_sim")
        lw = np.array([agreement(sw[j, 0], sw[j, 1])["loss"] for j in range(len(layers))])
        lo = np.array([agreement(so[j, 0], so[j, 1])["loss"] for j in range(len(layers))])
        pw = np.array([agreement(sw[j, 0], sw[j, 1])["pearson"] for j in range(len(layers))])
        po = np.array([agreement(so[j, 0], so[j, 1])["pearson"] for j in range(len(layers))])
        out.append({"id": "lsim_aligns", "claim": "with L_sim, mean (R - T)^2 is lower than without in most layers",
                    "with": float(lw.mean()), "without": float(lo.mean()), "layers_better": int(np.sum(lw < lo)),
                    "layers": len(layers), "holds": bool(np.sum(lw < lo) > len(layers) / 2)})
        out.append({"id": "lsim_pearson", "claim": "with L_sim, R^l and T^l agree more than without (mean Pearson r "
                    "of the off-diagonal entries over layers; reported)", "with": float(np.nanmean(pw)),
                    "without": float(np.nanmean(po)), "layers_better": int(np.sum(pw > po)), "layers": len(layers),
                    "holds": None})
    if "with_sim/weights_mean" in arrays:
        lam = lambda_by_complexity(arrays["with_sim/weights_mean"], arrays["with_sim/reference_ce"])
        out.append({"id": "lambda_by_complexity", "claim": "complex instances (top quartile of the pretrained CE) get "
                    "a lower mean lambda/lambda' than simple ones (bottom quartile); partly by construction: "
                    "lambda(x_i) is computed from the current CE, which tracks the pretrained CE",
                    "complex": lam["complex"]["mean"], "simple": lam["simple"]["mean"], "n": lam["complex"]["n"],
                    "holds": bool(lam["complex"]["mean"] < lam["simple"]["mean"])})
    if dyn:
        kept = np.asarray(arrays[f"{dyn[0]['prefix']}/test_kept"], dtype=np.float64)
        ratio = float(np.mean(kept.mean(0) / np.asarray(channels, dtype=np.float64)))
        r_star = float(study["hyperparameters"].get("remain", 0.6))
        out.append({"id": "kept_ratio_at_target", "claim": "the mean kept ratio over layers at test time is within 5 "
                    "points of the nominal remain rate r*", "kept_ratio": ratio, "r_star": r_star,
                    "holds": bool(abs(ratio - r_star) <= 0.05)})
    v = study["variants"].get("with_sim")
    if v:
        out.append({"id": "accuracy", "claim": "accuracy of the dynamic network against the dense checkpoint "
                    "(reported, not a test)", "dynamic": v["final_test_acc"], "dense": v["dense_test_acc"],
                    "holds": None})
    return out
