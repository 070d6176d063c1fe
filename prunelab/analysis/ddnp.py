"""DDNP analyses (supplement 001): search curves by setting with their spread over seeds, accuracy at
each stage boundary, the extracted widths, the equal-budget table and the claims, all recomputed from
the raw per-run records of a study (``results/ddnp_<scale>.json``: per-epoch logs, per-layer widths).

Nothing here imports the method; the resource ratio is recounted from the widths with the counter.
"""

from __future__ import annotations

import numpy as np

from ..counting import block_ops_ratio, count


def runs_of(study: dict, setting: str) -> list[dict]:
    """The finished runs of ``setting``, ordered by seed."""
    return sorted((r for r in study["runs"].values() if r["setting"] == setting), key=lambda r: r["seed"])


def sweep_settings(study: dict, parameter: str, full_value: float) -> list[tuple[float, str]]:
    """The settings of a one-parameter sweep (``"lambda"`` or ``"rho"``) that have finished runs, as
    ``(value, setting name)`` pairs sorted by value: every ``"<parameter>=<v>"`` setting and the full
    method, which is the sweep's point at ``full_value`` (its configured value)."""
    prefix = f"{parameter}="
    out = [(float(full_value), "full")] if runs_of(study, "full") else []
    out += [(float(n[len(prefix):]), n) for n in study["settings"] if n.startswith(prefix) and runs_of(study, n)]
    return sorted(out)


def curve(runs: list[dict], key: str, transform=None):
    """``(epochs, values)``: ``values[i, j]`` is ``key`` of run i at the j-th epoch where every run logged
    it (e.g. the test accuracy, measured every few epochs). ``transform(value, run)`` maps each value."""
    if not runs:
        return np.zeros(0), np.zeros((0, 0))
    logged = [{e["epoch"]: e.get(key) for e in r["epochs"] if e.get(key) is not None} for r in runs]
    epochs = sorted(set.intersection(*(set(d) for d in logged)))
    values = np.array([[transform(d[e], r) if transform else d[e] for e in epochs] for d, r in zip(logged, runs)],
                      dtype=np.float64)
    return np.asarray(epochs), values


def resource_curves(runs: list[dict]) -> dict:
    """The "normalised resource loss" both ways (D11): |log(R/p)| and R/p of the eval-mode (hard)
    widths, and the same of the soft training R (the mean over each epoch's steps)."""
    out = {}
    for kind in ("R_hard", "R_soft"):
        out[f"|log({kind}/p)|"] = curve(runs, kind, lambda v, r: abs(np.log(v / r["p"])))
        out[f"{kind}/p"] = curve(runs, kind, lambda v, r: v / r["p"])
    return out


def spread(values) -> dict:
    """Mean, sample std (ddof 1; 0 for one value) and n of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def stage_accuracies(runs: list[dict]) -> dict:
    """Spread over seeds of the test accuracy at each stage boundary: the dense checkpoint, the
    eval-mode masked network at the end of the search, the extracted network, after fine-tuning."""
    keys = ("dense_test_acc", "masked_test_acc", "extracted_test_acc", "finetuned_test_acc")
    return {k: spread([r.get(k) for r in runs]) for k in keys}


def recount(study: dict, run: dict, spec) -> dict:
    """A run's costs recounted from its extracted widths: DDNP's R (pruned blocks' ops, 3 ops per
    BN/ReLU element) and the whole model's MACs and their ratio to the dense model."""
    widths = dict(zip(study["layers"], run["widths"]))
    macs = float(count(spec, widths=widths).macs)
    return {"R": block_ops_ratio(spec, widths), "macs": macs, "macs_ratio": macs / float(count(spec).macs)}


def settings_table(study: dict, spec) -> list[dict]:
    """One row per setting: seeds, final R (recounted) and the accuracies (mean ± std over seeds)."""
    rows = []
    for name in study["settings"]:
        runs = runs_of(study, name)
        if not runs:
            continue
        acc = stage_accuracies(runs)
        rc = [recount(study, r, spec) for r in runs]
        rows.append({"setting": name, "n": len(runs), "R": spread([c["R"] for c in rc]),
                     "macs_ratio": spread([c["macs_ratio"] for c in rc]), **acc})
    return rows


def compare_table(study: dict, spec) -> list[dict]:
    """Equal-budget comparison: DDNP (full method) against ``l1`` and PFS from the same checkpoint with
    the same fine-tuning; MACs recounted from each structure's widths."""
    groups = {"DDNP (p = {:g})".format(study.get("p", float("nan"))): [
        {**r, "pruned_test_acc": r["extracted_test_acc"]} for r in runs_of(study, "full")]}
    for method, label in (("l1", "l1 (weight magnitude), 50 % MACs"), ("pfs", "PFS gates on the pretrained weights, 50 % MACs")):
        groups[label] = sorted((r for r in study.get("compare", {}).values() if r["method"] == method),
                               key=lambda r: r["seed"])
    rows = []
    for label, runs in groups.items():
        if not runs:
            continue
        rc = [recount(study, r, spec) for r in runs]
        rows.append({"method": label, "n": len(runs), "macs": spread([c["macs"] for c in rc]),
                     "macs_ratio": spread([c["macs_ratio"] for c in rc]), "R": spread([c["R"] for c in rc]),
                     "before_finetune": spread([r["pruned_test_acc"] for r in runs]),
                     "finetuned": spread([r["finetuned_test_acc"] for r in runs])})
    return rows


RANK_LABELS = {"ddnp": "DDNP", "l1": "l1", "slimming": "network slimming", "pfs": "PFS (pretrained gates)",
               "hrank": "HRank", "chip": "CHIP"}


def equal_budget(study: dict, spec, a: str = "ddnp", b: str = "l1") -> dict:
    """The ranking comparison (the study's ``rank`` part): per method its n, fine-tuned accuracy (mean ±
    std), MACs ratio (recounted) and mean curve of test accuracy over the fine-tuning epochs; and for the
    pair (a, b), the gap a − b after every fine-tuning epoch (mean ± std over the seeds both finished: the
    same fine-tuning seed pairs them), with a paired t-test on the final accuracies (scipy's
    ``ttest_rel``; p is NaN below 2 pairs). Empty when the results hold no ``rank`` runs."""
    runs = study.get("rank") or {}
    if not runs:
        return {}
    dense = float(count(spec).macs)
    methods: dict = {}
    for r in runs.values():
        methods.setdefault(r["method"], []).append(r)
    table = []
    for m, rs in methods.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        curves = [r["finetune_curve"] for r in rs if r.get("finetune_curve")]
        n_ep = min((len(c) for c in curves), default=0)
        table.append({"method": m, "label": RANK_LABELS.get(m, m), "n": len(rs),
                      "finetuned": spread([r["finetuned_test_acc"] for r in rs]),
                      "before_finetune": spread([r["pruned_test_acc"] for r in rs]),
                      "macs_ratio": spread([r["macs"] / dense for r in rs]),
                      "structures": len({tuple(r["widths"]) for r in rs}),
                      "curve": np.mean([c[:n_ep] for c in curves], 0).tolist() if n_ep else []})
    # the weights every run started from, where recorded: one fingerprint means one checkpoint, also for runs
    # made in different sessions (each of which trained the checkpoint again)
    shas = [r.get("init_weights_sha256") for r in runs.values()]
    out = {"table": table, "pair": (a, b), "checkpoints": sorted({h for h in shas if h}),
           "runs_without_checkpoint_fingerprint": sum(h is None for h in shas)}
    ra = {r["seed"]: r for r in methods.get(a, [])}
    rb = {r["seed"]: r for r in methods.get(b, [])}
    seeds = sorted(set(ra) & set(rb))
    if seeds:
        fa = np.array([ra[s]["finetuned_test_acc"] for s in seeds], dtype=np.float64)
        fb = np.array([rb[s]["finetuned_test_acc"] for s in seeds], dtype=np.float64)
        n_ep = min(min(len(ra[s].get("finetune_curve") or []), len(rb[s].get("finetune_curve") or [])) for s in seeds)
        gaps = np.array([[ra[s]["finetune_curve"][e] - rb[s]["finetune_curve"][e] for e in range(n_ep)]
                         for s in seeds], dtype=np.float64).reshape(len(seeds), n_ep)
        p = float("nan")
        if len(seeds) >= 2 and np.any(fa - fb != 0):
            from scipy.stats import ttest_rel

            p = float(ttest_rel(fa, fb).pvalue)
        out.update({"seeds": seeds, "final_gap": spread(fa - fb), "p_paired_t": p,
                    "gap_curve_mean": gaps.mean(0).tolist() if n_ep else [],
                    "gap_curve_std": (gaps.std(0, ddof=1) if len(seeds) > 1 else np.zeros(n_ep)).tolist() if n_ep else []})
    return out


def equal_budget_claim(study: dict, spec) -> dict | None:
    """Claim ``ddnp_vs_l1_equal_budget`` (issue 29), recomputed from the ``rank`` runs of ``study``
    (:func:`equal_budget`): DDNP is more accurate than ``l1`` when both keep 50 % of the MACs (within 0.01)
    after the long fine-tune, by a paired t-test over seeds (p < 0.05) with a gap that keeps its sign over
    the last 3 fine-tuning epochs, every run having started from the same weights (one recorded
    fingerprint). None when the results hold no seed run by both."""
    eb = equal_budget(study, spec)
    if not eb.get("seeds"):
        return None
    rows = {r["method"]: r for r in eb["table"]}
    equal = all(abs(rows[m]["macs_ratio"]["mean"] - 0.5) <= 0.01 for m in ("ddnp", "l1"))
    last = eb["gap_curve_mean"][-3:]
    return {"id": "ddnp_vs_l1_equal_budget",
            "claim": "DDNP is more accurate than l1 at an equal budget after the long fine-tune (both within "
                     "0.01 of 50 % MACs; paired t-test over seeds p < 0.05; the gap keeps its sign over the "
                     "last 3 fine-tuning epochs)",
            "ddnp": rows["ddnp"]["finetuned"], "l1": rows["l1"]["finetuned"], "gap": eb["final_gap"],
            "p_paired_t": eb["p_paired_t"], "gap_curve": eb["gap_curve_mean"], "equal_budget": equal,
            # runs from two different trainings of the checkpoint do not compare "from the same checkpoint"
            "checkpoints": len(eb["checkpoints"]), "same_checkpoint": len(eb["checkpoints"]) <= 1,
            "holds": bool(equal and len(eb["checkpoints"]) <= 1 and eb["final_gap"]["mean"] > 0
                          and eb["p_paired_t"] < 0.05 and len(last) > 0 and all(g > 0 for g in last))}


def _final_acc(runs, finetuned: bool) -> list:
    return [r["finetuned_test_acc"] if finetuned else r["extracted_test_acc"] for r in runs]


def claims(study: dict, spec) -> list[dict]:
    """The supplement's claims, each with its numbers and whether it holds (recomputed from the runs)."""
    out = []
    p = study.get("p")
    full = runs_of(study, "full")
    # 1. the extracted network's remaining-FLOPs ratio lands within 0.02 of p (the counter on its widths)
    rc = [recount(study, r, spec) for r in full]
    out.append({"claim": "the extracted network's remaining-FLOPs ratio lands within 0.02 of p (recounted from "
                         "its widths, full method, every seed)", "p": p, "R": [c["R"] for c in rc],
                "whole_model_macs_ratio": [c["macs_ratio"] for c in rc],
                "holds": bool(rc) and all(abs(c["R"] - p) <= 0.02 for c in rc)})
    # 2. the smallest lambda does not reach p; a larger one does
    lams = sorted((float(n.split("=")[1]), n) for n in study["settings"] if n.startswith("lambda=") and runs_of(study, n))
    lams = sorted(lams + ([(4.0, "full")] if full else []))
    if len(lams) >= 2:
        finals = {lam: spread([recount(study, r, spec)["R"] for r in runs_of(study, name)]) for lam, name in lams}
        smallest = lams[0][0]
        reached = [lam for lam, _ in lams[1:] if abs(finals[lam]["mean"] - p) <= 0.02]
        out.append({"claim": "the smallest lambda of the sweep does not reach p (final R > p + 0.02) while a larger "
                             "one does (|R - p| <= 0.02)", "p": p,
                    "final_R": {f"{lam:g}": finals[lam]["mean"] for lam, _ in lams},
                    "holds": bool(finals[smallest]["mean"] > p + 0.02 and reached)})
    # 3. rho = 0 gives a lower accuracy than rho = 1, at the same realised budget: a comparison where the
    # rho = 0 networks collapse below p (R recounted from the extracted widths) compares different budgets
    # and cannot support the claim, so it holds only when both land within 0.02 of p
    rho0 = runs_of(study, "rho=0")
    if rho0 and full:
        r0 = spread([recount(study, r, spec)["R"] for r in rho0])
        r1 = spread([recount(study, r, spec)["R"] for r in full])
        equal = bool(p is not None and abs(r0["mean"] - p) <= 0.02 and abs(r1["mean"] - p) <= 0.02)
        for ft in (True, False):
            a0, a1 = spread(_final_acc(rho0, ft)), spread(_final_acc(full, ft))
            if a0["n"] and a1["n"]:
                stage = "after fine-tuning" if ft else "of the extracted network before fine-tuning"
                out.append({"claim": f"rho = 0 gives a lower test accuracy than rho = 1 ({stage}), both at the "
                                     f"budget p (recounted R within 0.02 of p)",
                            "rho=0": a0, "rho=1": a1, "R_rho0": r0, "R_rho1": r1, "p": p, "equal_budget": equal,
                            "holds": bool(equal and a0["mean"] < a1["mean"])})
    # 4. Fix S and Fix k are worse than the full method
    for variant in ("fix_s", "fix_k"):
        vr = runs_of(study, variant)
        if vr and full:
            for ft in (True, False):
                av, af = spread(_final_acc(vr, ft)), spread(_final_acc(full, ft))
                if av["n"] and af["n"]:
                    stage = "after fine-tuning" if ft else "of the extracted network before fine-tuning"
                    name = {"fix_s": "Fix S", "fix_k": "Fix k"}[variant]
                    # a gap inside the seed spread is a tie, not "worse" (n is small at cpu scale)
                    gap, noise = af["mean"] - av["mean"], max(av["std"], af["std"])
                    out.append({"claim": f"{name} is worse than the full method by more than the seed spread "
                                         f"({stage}; spread = the larger sample std)", variant: av, "full": af,
                                "difference": gap, "seed_spread": noise, "holds": bool(gap > noise)})
    # 5b. DDNP beats l1 at an equal budget after the long fine-tune (the rank part), paired over seeds
    c = equal_budget_claim(study, spec)
    if c is not None:
        out.append(c)
    # 5. learnable and fixed inputs differ by less than the seed spread
    lr = runs_of(study, "learnable_input")
    if lr and full:
        al, af = spread(_final_acc(lr, False)), spread(_final_acc(full, False))
        gap, noise = abs(al["mean"] - af["mean"]), max(al["std"], af["std"])
        out.append({"claim": "learnable and fixed generator inputs differ by less than the seed spread (extracted "
                             "network's test accuracy; spread = the larger sample std)", "learnable": al, "fixed": af,
                    "difference": gap, "seed_spread": noise, "holds": bool(gap < noise)})
    return out


def published_table(name: str):
    """A published DDNP table (``ddnp_table_a1`` or ``ddnp_table_a4``) as a DataFrame, labelled published."""
    from .. import published

    df = published.load(name)
    df.attrs["label"] = "published"
    return df
