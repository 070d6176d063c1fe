"""DDNP supplement study (001): the searches behind Fig. A1 (a)-(e), the widths of the searched
architectures, and an equal-budget comparison with ``l1`` and PFS; aggregated into
``results/ddnp_<scale>.json`` (per-epoch search logs, per-layer widths and the accuracies at every
stage boundary of every run: the raw material of the notebook's figures and claims).

Every setting is searched with several seeds (the generators' initialisation and the Gumbel noise; at
``cpu`` 3 for every setting but the output functions, which get 1; 3 everywhere at ``paper``) from one
pretrained checkpoint, on a seeded 5 % split of the training set (2,500 images, frozen backbone, BN in
eval mode), then extracted; the settings whose panel needs it are fine-tuned (all the same schedule).

* ``lambda``: Fig. A1 (a, b), the full method at several lambda;
* ``rho``: Fig. A1 (c), rho = 0, 1, 5 (rho = 1 is the full method);
* ``variants``: Fig. A1 (d), Fix S, Fix k, Channel-wise-ks against the full method;
* ``inputs``: Fig. A1 (e), learnable against fixed generator inputs;
* ``outputs``: the output functions |s| and s^2 (main-paper Fig. 4; recorded, no claim), one seed;
* ``compare``: ``l1`` and PFS at 50 % MACs from the same checkpoint, fine-tuned the same way as DDNP.

Scales:

* ``paper``: ResNet-56 from a 200-epoch checkpoint (G3), p = 0.48, 200 search epochs, 205 fine-tuning
  epochs (§2.6). Needs a GPU.
* ``cpu``: ResNet-20 from the 30-epoch checkpoint (87 %; the ``dense`` sub-run, or a link to
  ``runs/resnet20-30ep``), the ``resnet20_ddnp`` config: p = 0.5, 40 search epochs at generator lr
  3e-3 (400 iterations; R settles by about epoch 20), test accuracy of the masked network on 2,500 test
  images every 2 epochs, held-out accuracy on 1,000 images of the other 95 %; 2 fine-tuning epochs
  (one-cycle, peak lr 0.05) for
  ``full``, ``rho=0``, ``fix_s``, ``fix_k``, ``channelwise`` and the comparison (docs/decisions.md D14).
  Two processes can share the work (``prunelab experiment ddnp --scale cpu`` twice, one thread each;
  then ``--collect``).
* ``ci``: a few hundred images, a few epochs: mechanics only.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import models
from ..config import deep_merge, load_config
from ..counting import block_ops_ratio, count
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from ..workflows import run_pipeline, train
from . import open_study, write_results

PARTS = ("dense", "lambda", "rho", "variants", "inputs", "outputs", "compare")

SCALES = {
    "ci": {"model": "resnet20", "seeds": (0,), "variant_seeds": (0,), "compare_seeds": (0,), "lambdas": (0.05, 4.0), "rhos": (0.0, 1.0, 5.0),
           "output_seeds": (0,), "finetune_epochs": 1, "search": {}, "dense_epochs": None},
    "cpu": {"model": "resnet20", "seeds": (0, 1, 2), "variant_seeds": (0, 1, 2), "compare_seeds": (0, 1, 2), "lambdas": (0.05, 0.5, 4.0), "rhos": (0.0, 1.0, 5.0),
            "output_seeds": (0,), "finetune_epochs": 2, "dense_epochs": 30, "search": {}},
    "paper": {"model": "resnet56", "seeds": (0, 1, 2), "variant_seeds": (0, 1, 2), "compare_seeds": (0, 1, 2), "lambdas": (0.5, 2.0, 4.0, 8.0), "rhos": (0.0, 0.5, 1.0, 2.0, 5.0),
              "output_seeds": (0, 1, 2), "finetune_epochs": None, "search": {}, "dense_epochs": None},
}


def settings(scale: str) -> dict:
    """``{setting: {"part", "method" (option overrides), "seeds", "finetune"}}`` of the study at ``scale``."""
    s = SCALES[scale]
    out = {"full": {"part": ("lambda", "rho", "variants", "inputs"), "method": {}, "seeds": s["seeds"], "finetune": True}}
    for lam in s["lambdas"]:
        if lam != 4.0:
            out[f"lambda={lam:g}"] = {"part": ("lambda",), "method": {"lambda": lam}, "seeds": s["seeds"], "finetune": False}
    for rho in s["rhos"]:
        if rho != 1.0:
            out[f"rho={rho:g}"] = {"part": ("rho",), "method": {"rho": rho}, "seeds": s["seeds"], "finetune": rho == 0}
    for v in ("fix_s", "fix_k", "channelwise"):
        out[v] = {"part": ("variants",), "method": {"variant": v}, "seeds": s["variant_seeds"], "finetune": True}
    out["learnable_input"] = {"part": ("inputs",), "method": {"learnable_input": True}, "seeds": s["variant_seeds"],
                              "finetune": False}
    for f in ("abs", "square"):
        out[f"score={f}"] = {"part": ("outputs",), "method": {"score_function": f}, "seeds": s["output_seeds"],
                             "finetune": False}
    return out


def _finetune(s: dict, enabled: bool) -> dict:
    if not enabled:
        return {"enabled": False}
    if s["finetune_epochs"] is None:  # the config's own (paper) schedule
        return {}
    return {"train": {"epochs": s["finetune_epochs"]}, "optim": {"lr": 0.05},
            "schedule": {"name": "onecycle", "warmup": 0.15}}


def _epochs(run: Path) -> list[dict]:
    """The search log of one run, epoch by epoch: the trainer's loss terms and accuracies merged with
    the method's R, k, abar and widths (from its state in ``learn.pt``)."""
    import torch

    state = torch.load(run / "learn.pt", map_location="cpu", weights_only=True).get("method_state", {})
    metrics = {m["epoch"]: m for m in read_metrics(run) if m.get("stage") == "learn"}
    rows = []
    for rec in state.get("log", []):
        m = metrics.get(rec["epoch"], {})
        row = {"epoch": rec["epoch"], "ce": m.get("ce"), "resource": m.get("resource"), "alignment": m.get("alignment"),
               "loss": m.get("train_loss"), "R_soft": rec.get("R_soft"), "R_hard": rec["R_hard"],
               "k": [round(v, 5) for v in rec["k"]], "abar": [round(v, 5) for v in rec.get("abar", [])],
               "widths": rec["widths"], "test_acc": rec.get("test_acc"), "val_acc": rec.get("val_acc")}
        rows.append(row)
    return rows


def summarize_run(run: Path, spec, layers: list[str]) -> dict:
    """The record of one finished DDNP run directory: accuracies at every stage boundary, the extracted
    widths, their costs (counted again from the structure), and the per-epoch search log."""
    res = read_json(run / "result.json")
    counts = Structure.load(run / "structure.json").counts()
    widths = {n: counts[n] for n in layers}
    rep = res["budget_report"]
    return {"dense_test_acc": res["dense_test_acc"], "masked_test_acc": res["pruned_test_acc_before_finetune"],
            "extracted_test_acc": res.get("extracted_test_acc"),
            "finetuned_test_acc": res["final_test_acc"] if "finetune" in _done(run) else None,
            "widths": [widths[n] for n in layers], "macs": float(count(spec, widths=widths).macs),
            "R_hard": block_ops_ratio(spec, widths), "R_soft_last": rep.get("R_soft_last_epoch"), "p": rep["p"],
            "selection": rep.get("selection"), "epochs": _epochs(run), "wall_time_s": res.get("wall_time_s")}


def _done(run: Path) -> list:
    return read_json(run / "pipeline.json").get("done", [])


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False) -> dict:
    """Run (or continue) the DDNP study at ``scale``; writes ``results/ddnp_<scale>.json``."""
    s = SCALES[scale]
    out, results_file, parts, runs = open_study("ddnp", scale, out, results, parts, PARTS, collect=collect,
                                                quiet=quiet)
    prog = runs.progress_override
    t0 = time.time()
    spec = models.describe(models.create(s["model"]))
    layers = [t.name for t in spec.select("mid")]
    dense_over = {"model": {"name": s["model"]}}
    if s["dense_epochs"]:
        dense_over["train"] = {"epochs": s["dense_epochs"]}
    dcfg = load_config("resnet20" if s["model"] == "resnet20" else s["model"], scale,
                       overrides=deep_merge(prog, dense_over))
    dense_dir = runs.get("dense", lambda d: train(dcfg, d, resume=True, quiet=quiet), "dense checkpoint")
    table = settings(scale)
    study = {"study": "ddnp", "scale": scale, "model": s["model"], "layers": layers,
             "channels": [spec.tensor(n).channels for n in layers], "dense_macs": float(count(spec).macs),
             "command": f"prunelab experiment ddnp --scale {scale} --out {out}", "parts": list(parts),
             "settings": {k: {**v, "part": list(v["part"]), "seeds": list(v["seeds"])} for k, v in table.items()},
             "scale_settings": {k: v for k, v in s.items() if k != "search"}, "search_overrides": s["search"],
             "runs": {}, "compare": {}}
    if dense_dir is not None:
        dense = read_json(dense_dir / "result.json")
        study["dense"] = {"test_acc": dense["final"]["test_acc"], "epochs": dense["epochs"],
                          "checkpoint": str(dense_dir / "model.pt")}
        init = {"stages": {"pretrain": {"init_from": str(dense_dir / "model.pt")}}}
        wanted = [(name, st) for name, st in table.items() if set(st["part"]) & set(parts)]
        for seed in s["seeds"]:  # seed-major: every setting gets its first seed before any gets its third
            for name, st in wanted:
                if seed not in st["seeds"]:
                    continue
                cfg = load_config("resnet20_ddnp", scale, overrides=deep_merge(deep_merge(prog, s["search"]), deep_merge(
                    init, {"model": {"name": s["model"]}, "method": st["method"], "train": {"seed": seed},
                           "stages": {"finetune": _finetune(s, st["finetune"])}})))
                d = runs.get(f"{name}-s{seed}", lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                             f"DDNP {name} seed {seed}")
                if d is None:
                    continue
                rec = summarize_run(d, spec, layers)
                study["p"] = rec["p"]
                study["runs"][f"{name}/s{seed}"] = {"setting": name, "seed": seed, "options": st["method"], **rec}
                acc = rec["finetuned_test_acc"] or rec["extracted_test_acc"]
                runs.say(f"DDNP {name} seed {seed}: R {rec['R_hard']:.3f} (p {rec['p']}), "
                         f"{rec['macs'] / 1e6:.2f} M MACs, test accuracy {100 * acc:.2f}%")
        if "compare" in parts:
            for seed in s["compare_seeds"]:
                for method, config, extra in (("l1", "resnet20_l1", {}),
                                              ("pfs", "resnet20_pfs", {"stages": {"finetune": {"reinit": False,
                                                                                               "data": {"holdout": 0}}}})):
                    cfg = load_config(config, scale, overrides=deep_merge(prog, deep_merge(deep_merge(init, extra), {
                        "model": {"name": s["model"]}, "train": {"seed": seed},
                        "budget": {"metric": "macs", "keep": 0.5, "reduction": None},
                        "stages": {"finetune": _finetune(s, True)}})))
                    d = runs.get(f"compare-{method}-s{seed}", lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True,
                                                                                              quiet=quiet),
                                 f"{method} seed {seed}")
                    if d is None:
                        continue
                    res = read_json(d / "result.json")
                    counts = Structure.load(d / "structure.json").counts()
                    widths = {n: counts[n] for n in layers}
                    study["compare"][f"{method}/s{seed}"] = {
                        "method": method, "seed": seed, "dense_test_acc": res["dense_test_acc"],
                        "pruned_test_acc": res["pruned_test_acc_before_finetune"],
                        "finetuned_test_acc": res["final_test_acc"], "widths": [widths[n] for n in layers],
                        "macs": float(count(spec, widths=widths).macs), "R_hard": block_ops_ratio(spec, widths),
                        "rule": res["budget_report"].get("rule")}
                    runs.say(f"{method} seed {seed}: {100 * res['final_test_acc']:.2f}%")
    study["missing"], study["busy"] = runs.missing, runs.busy
    expected = sum(len(st["seeds"]) for st in table.values() if set(st["part"]) & set(parts))
    study["complete"] = (not runs.missing and set(parts) == set(PARTS) and len(study["runs"]) == expected
                         and len(study["compare"]) == 2 * len(s["compare_seeds"]))
    study["wall_time_s"] = time.time() - t0
    study["created"] = time.strftime("%Y-%m-%d %H:%M")
    written = write_results(results_file, study, runs.say)
    runs.say(f"results written to {written}")
    return study


def finetune_schedule(scale: str) -> dict:
    """The fine-tuning overrides every fine-tuned run of the study shares (DDNP, l1 and PFS alike)."""
    return _finetune(SCALES[scale], True)


__all__ = ["run", "settings", "summarize_run", "finetune_schedule", "PARTS", "SCALES"]
