"""Every method's cached results on one scale of cost: the points of the method-comparison notebook
(``notebooks/06_compare_methods.ipynb``), with MACs (and V where the model defines it) recounted by the
package's counter from each network's kept widths, and the accuracy drop against the dense network the
run started from; published points come from :mod:`prunelab.published`, labelled so.

Nothing here reads files: the studies' results dicts are passed in.
"""

from __future__ import annotations

import numpy as np

from ..counting import count


def _cost(spec, widths: dict) -> dict:
    c = count(spec, widths={n: int(round(w)) for n, w in widths.items()})
    d = count(spec)
    return {"macs": float(c.macs), "macs_keep": float(c.macs) / float(d.macs), "volume": float(c.volume),
            "v_factor": float(d.volume) / float(c.volume)}


def _group(rows: list[dict], key) -> list[dict]:
    """Mean ± std (and n) of accuracy and cost over the rows sharing ``key(row)``."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for _, rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs], dtype=np.float64)
        base = dict(rs[0])
        base.update({"n": len(rs), "accuracy": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1
                     else 0.0, "macs": float(np.mean([r["macs"] for r in rs])),
                     "macs_keep": float(np.mean([r["macs_keep"] for r in rs])),
                     "drop": float(np.mean([r["drop"] for r in rs]))})
        if all("v_factor" in r for r in rs):
            base["v_factor"] = float(np.mean([r["v_factor"] for r in rs]))
        out.append(base)
    return out


def _tag(rows: list[dict], study: str) -> None:
    """Name the study of the rows added since the last tag."""
    for r in rows:
        r.setdefault("study", study)


def points(results: dict, spec_of) -> list[dict]:
    """One point per method setting (mean over its seeds or runs) from the cached results.

    ``results``: ``{study name: results dict}`` (any subset of quickstart, pfs, manidp, ddnp, bar; and
    ``ddnp_rank``: the DDNP study's ``rank`` part where it lies in a results file of its own,
    :func:`prunelab.experiments.results_with_part`);
    ``spec_of(model, kwargs)``: the spec of a model. Each point: method, setting, model, scale, n,
    accuracy (fraction, mean) and its std, dense accuracy, drop (dense - pruned, points of a fraction),
    MACs, MACs keep ratio, and for BAR's WRN the V-factor; ``stage`` says where the accuracy was measured,
    ``study`` which results it comes from.
    """
    rows: list[dict] = []
    r20 = spec_of("resnet20", {})
    q = results.get("quickstart")
    if q:
        dense = q["dense"]["final"]["test_acc"]
        s = q["l1"]["structure"]
        rows.append({"method": "l1", "setting": "50 % MACs", "model": "resnet20", "scale": q["scale"],
                     "accuracy": q["l1"]["final_test_acc"], "dense": dense, "stage": "fine-tuned 8 epochs",
                     **_cost(r20, {n: len(a) for n, a in s["alive"].items()})})
        for row in (q.get("latency") or {}).get("rows", []):
            rows.append({"method": "l1", "setting": row["label"], "model": "resnet20", "scale": q["scale"],
                         "accuracy": row["final_test_acc"], "dense": dense, "stage": "fine-tuned 8 epochs",
                         **_cost(r20, row["widths"])})
    _tag(rows, "quickstart")
    p = results.get("pfs")
    if p:
        for row in p["sweeps"].get("pruning_ratio", []):
            w = row["widths"] if isinstance(row["widths"], dict) else dict(zip(p["layers"], row["widths"]))
            rows.append({"method": "PFS (scratch)", "setting": f"{100 * row['ratio']:.0f} % MACs removed",
                         "model": "resnet20", "scale": p["scale"], "accuracy": row["acc"], "dense": p.get("full_acc"),
                         "stage": "trained from scratch (short)", **_cost(r20, w)})
    _tag(rows, "pfs")
    m = results.get("manidp")
    if m:
        # every sub-run of the study (each seed, and the matched static controls); older results files
        # hold one record per variant only
        runs = m.get("runs") or [{**rec, "variant": v, "kind": "dynamic"} for v, rec in m["variants"].items()]
        names = {"with_sim": ("ManiDP (dynamic)", "with L_sim"), "without_sim": ("ManiDP (dynamic)", "without L_sim"),
                 "static": ("ManiDP's static mask", "same widths as ManiDP"),
                 "l1": ("l1", "ManiDP's mean MACs, same schedule")}
        for rec in runs:
            method, setting = names.get(rec["variant"], (f"ManiDP {rec['variant']}", rec["variant"]))
            macs = rec.get("mean_macs") or rec["pruned_cost"]["mixed"]["macs"]
            rows.append({"method": method, "setting": setting, "model": m["model"], "scale": m["scale"],
                         "accuracy": rec["final_test_acc"], "dense": rec["dense_test_acc"],
                         "stage": ("dynamic, mean MACs over the test set" if rec.get("kind") == "dynamic"
                                   else "static, trained on ManiDP's protocol"), "seed": rec.get("seed"),
                         "macs": float(macs), "macs_keep": float(macs) / float(m["dense_macs"])})
    _tag(rows, "manidp")
    d = results.get("ddnp")
    if d:
        spec = spec_of(d["model"], {})
        for run in d["runs"].values():
            ft = run.get("finetuned_test_acc")
            if ft is None and run["setting"] not in ("full",):
                continue  # settings without fine-tuning are not comparable with fine-tuned points
            rows.append({"method": "DDNP" if run["setting"] == "full" else f"DDNP {run['setting']}",
                         "setting": f"p = {run['p']:g}", "model": d["model"], "scale": d["scale"],
                         "accuracy": ft if ft is not None else run["extracted_test_acc"], "dense": run["dense_test_acc"],
                         "stage": "fine-tuned (short)" if ft is not None else "extracted", "seed": run["seed"],
                         **_cost(spec, dict(zip(d["layers"], run["widths"])))})
        for run in d.get("compare", {}).values():
            label = {"l1": "l1", "pfs": "PFS (pretrained gates)"}[run["method"]]
            rows.append({"method": label, "setting": "50 % MACs, DDNP's schedule", "model": d["model"],
                         "scale": d["scale"], "accuracy": run["finetuned_test_acc"], "dense": run["dense_test_acc"],
                         "stage": "fine-tuned (short)", "seed": run["seed"],
                         **_cost(spec, dict(zip(d["layers"], run["widths"])))})
    _tag(rows, "ddnp")
    # the equal-budget ranking (DDNP, l1, slimming, PFS, HRank, CHIP at 50 % MACs, one longer fine-tune)
    dr = results.get("ddnp_rank") or d
    if dr and dr.get("rank"):
        from .ddnp import RANK_LABELS

        spec = spec_of(dr["model"], {})
        epochs = (dr.get("scale_settings") or {}).get("rank_finetune_epochs")
        for run in dr["rank"].values():
            rows.append({"method": RANK_LABELS.get(run["method"], run["method"]),
                         "setting": f"50 % MACs, {epochs or 'the config'}-epoch fine-tune (rank)",
                         "model": dr["model"], "scale": dr["scale"], "accuracy": run["finetuned_test_acc"],
                         "dense": run["dense_test_acc"], "stage": f"fine-tuned {epochs or ''} epochs".replace("  ", " "),
                         "seed": run["seed"], **_cost(spec, dict(zip(dr["layers"], run["widths"])))})
    _tag(rows, "ddnp")
    b = results.get("bar")
    if b:
        for run in b["runs"]:
            s = run["structure"]
            spec = spec_of(s["model"], s.get("model_kwargs", {}))
            rows.append({"method": "BAR", "setting": f"PF {run['pf']}", "model": f"{s['model']} k=1",
                         "scale": b["scale"], "accuracy": run["accuracy"], "dense": b["teacher"]["accuracy"],
                         "stage": "fine-tuned (short)", **_cost(spec, {n: len(a) for n, a in s["alive"].items()})})
        for run in b.get("flop_runs", []):  # BAR (F-trained): budget on FLOPs
            s = run["structure"]
            spec = spec_of(s["model"], s.get("model_kwargs", {}))
            rows.append({"method": "BAR (F-trained)", "setting": f"F-factor {run['pf']}", "model": f"{s['model']} k=1",
                         "scale": b["scale"], "accuracy": run["accuracy"], "dense": b["teacher"]["accuracy"],
                         "stage": "fine-tuned (short)", **_cost(spec, {n: len(a) for n, a in s["alive"].items()})})
        for run in b.get("baselines", []):
            if "alive" not in run:
                continue
            first = b["runs"][0]["structure"]
            spec = spec_of(first["model"], first.get("model_kwargs", {}))
            alive = run["alive"]
            widths = {n: (len(a) if isinstance(a, list) else int(a)) for n, a in alive.items()}
            rows.append({"method": run["method"], "setting": f"PF {run['pf']}", "model": f"{first['model']} k=1",
                         "scale": b["scale"], "accuracy": run["accuracy"], "dense": b["teacher"]["accuracy"],
                         "stage": "iterative prune + retrain", **_cost(spec, widths)})
    _tag(rows, "bar")
    for r in rows:
        r["drop"] = (r["dense"] - r["accuracy"]) if r.get("dense") is not None else float("nan")
    return _group(rows, lambda r: (r["method"], r["setting"], r["model"]))


def published_points() -> list[dict]:
    """Published CIFAR-10 points: ManiDP's Table 4 (ResNet-20/32/56, accuracy drop against each paper's
    baseline, FLOPs reduction) and BAR's supplement §6.1 (WRN, accuracy against the V-factor)."""
    from .. import published

    out = []
    t = published.load("manidp_cifar10")
    for depth, g in t.groupby("depth"):
        base = g[g.method == "Baseline"]["error"].iloc[0]
        for _, r in g[g.method != "Baseline"].iterrows():
            out.append({"method": r["method"], "model": f"resnet{depth}", "scale": "published",
                        "accuracy": 1 - r["error"] / 100, "drop": (r["error"] - base) / 100,
                        "macs_keep": 1 - r["flops_reduction"], "source": r["source"]})
    b = published.load("bar_results")
    for _, r in b[b.dataset == "CIFAR-10"].iterrows():
        out.append({"method": r["method"], "model": "bar_wrn k=12", "scale": "published", "accuracy": r["accuracy"],
                    "v_factor": r["v_factor"], "source": r["source"]})
    return out
