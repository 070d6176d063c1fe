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


def claims(study: dict, arrays, spec) -> list[dict]:
    """The notebook's claims, each with its numbers and whether it holds, recomputed from the arrays.

    ``study`` is the results JSON, ``arrays`` the NPZ (``<variant>/<name>`` keys), ``spec`` the model's.
    """
    layers = study["layers"]
    out = []
    with_sim, without = "with_sim", "without_sim"

    def per_layer_pearson(variant):
        sim = arrays[f"{variant}/similarity_end"]
        return np.array([agreement(sim[j, 0], sim[j, 1])["pearson"] for j in range(len(layers))])

    pw, po = per_layer_pearson(with_sim), per_layer_pearson(without)

    def per_layer_loss(variant):
        sim = arrays[f"{variant}/similarity_end"]
        return np.array([agreement(sim[j, 0], sim[j, 1])["loss"] for j in range(len(layers))])

    lw, lo = per_layer_loss(with_sim), per_layer_loss(without)
    out.append({"claim": "with L_sim, R^l and T^l are closer than without (mean over layers of mean (R - T)^2, lower "
                         "is closer)", "with": float(lw.mean()), "without": float(lo.mean()),
                "layers_better": int(np.sum(lw < lo)), "layers": len(layers), "holds": bool(lw.mean() < lo.mean())})
    out.append({"claim": "with L_sim, R^l and T^l agree more than without (mean Pearson r over layers)",
                "with": float(np.nanmean(pw)), "without": float(np.nanmean(po)),
                "layers_better": int(np.sum(pw > po)), "layers": len(layers),
                "holds": bool(np.nanmean(pw) > np.nanmean(po))})
    out.append({"claim": "with L_sim, R^l and T^l agree more than without in most layers",
                "layers_better": int(np.sum(pw > po)), "layers": len(layers),
                "holds": bool(np.sum(pw > po) > len(layers) / 2)})
    lam = lambda_by_complexity(arrays[f"{with_sim}/weights_mean"], arrays[f"{with_sim}/reference_ce"])
    out.append({"claim": "complex instances (top quartile of the pretrained CE) get a lower mean lambda/lambda' "
                         "than simple ones (bottom quartile)", "complex": lam["complex"]["mean"],
                "simple": lam["simple"]["mean"], "n": lam["complex"]["n"],
                "holds": bool(lam["complex"]["mean"] < lam["simple"]["mean"])})
    macs = per_instance_macs(spec, arrays[f"{with_sim}/test_kept"], layers)
    dense_ce = arrays.get("dense_test_ce")
    rho = spearman(macs, dense_ce[arrays[f"{with_sim}/test_index"]]) if dense_ce is not None else float("nan")
    out.append({"claim": "per-instance MACs vary across test images", "min": float(macs.min()),
                "max": float(macs.max()), "std": float(macs.std()), "cv": float(macs.std() / macs.mean()),
                "holds": bool(macs.std() / macs.mean() > 0.01)})
    out.append({"claim": "per-instance MACs correlate positively with the pretrained network's loss on the image "
                         "(Spearman)", "spearman": rho, "holds": bool(rho > 0)})
    kept = np.asarray(arrays[f"{with_sim}/test_kept"], dtype=np.float64)
    ratios = kept.mean(0) / np.array([spec.tensor(n).channels for n in layers])
    implied = implied_reduction(spec, layers, ratios)
    actual = 1 - macs.mean() / count(spec).macs
    out.append({"claim": "the mean test MACs reduction is within 3 points of what the logged per-layer kept ratios "
                         "imply", "actual": float(actual), "implied": implied,
                "nominal_r_star": implied_reduction(spec, layers, study["hyperparameters"].get("remain", 0.6)),
                "holds": bool(abs(actual - implied) <= 0.03)})
    v = study["variants"][with_sim]
    out.append({"claim": "accuracy of the dynamic network against the dense checkpoint (reported, not a test)",
                "dynamic": v["final_test_acc"], "dense": v["dense_test_acc"], "holds": None})
    return out
