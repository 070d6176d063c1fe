"""PFS supplement study: structures learned from random weights vs pre-training checkpoints (Fig.
S1/S2), accuracy vs expansion rate (Fig. S3) and vs pruning ratio (Fig. S4); aggregated into
``results/pfs_<scale>.json`` (the study format of :mod:`prunelab.analysis.structures`).

For every seed the full network is pre-trained while weight snapshots are kept at chosen epochs
(epoch 0 = the random initialisation). Gates are learned on each snapshot's frozen weights (45k/5k
split, BN in train mode), and the network is pruned to 50 % MACs of the unexpanded network; the
per-layer channel counts are the structure. The sweeps learn gates on random weights, prune, and train
the pruned widths from scratch.

Scales (docs/decisions.md §3.7, P8):

* ``paper``: ResNet-56, 5 seeds, 160-epoch pre-training with checkpoints {0,1,2,5,10,20,40,80,120,160},
  10-epoch gate learning, Scratch-B training (int(160 / (1 - R)) epochs), 5 runs per sweep point.
* ``cpu``: ResNet-20 on full CIFAR-10, 3 seeds, 4-epoch one-cycle pre-training with checkpoints
  {0, 1, 2, 4}, one epoch of gate learning; sweeps over pruning ratios {0.3, 0.5, 0.7} and expansion
  rates {1, 1.5} with 2 runs each and 2 epochs of scratch training (the whole study ~1.5 h on one core).
* ``ci``: 2 seeds, a few hundred images, one epoch per phase: mechanics only.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import models
from ..config import deep_merge, load_config
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from ..workflows import run_pipeline, train
from . import open_study, write_results

SETTINGS = {
    "ci": {"model": "resnet20", "seeds": (0, 1), "epochs": (0, 1, 2), "pretrain_epochs": 2, "ratios": (0.5,),
           "rates": (1.0, 1.5), "runs": 1, "scratch_epochs": 1},
    "cpu": {"model": "resnet20", "seeds": (0, 1, 2), "epochs": (0, 1, 2, 4), "pretrain_epochs": 4,
            "ratios": (0.3, 0.5, 0.7), "rates": (1.0, 1.5), "runs": 2, "scratch_epochs": 2},
    "paper": {"model": "resnet56", "seeds": (0, 1, 2, 3, 4), "epochs": (0, 1, 2, 5, 10, 20, 40, 80, 120, 160),
              "pretrain_epochs": 160, "ratios": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), "rates": (0.75, 1.0, 1.25, 1.5, 2.0),
              "runs": 5, "scratch_epochs": None},
}
PARTS = ("structures", "sweeps")


def _pretrain_overrides(s: dict, scale: str, seed: int) -> dict:
    over = {"model": {"name": s["model"]}, "train": {"seed": seed, "epochs": s["pretrain_epochs"],
                                                     "keep_epochs": list(s["epochs"])}}
    if scale == "paper":
        over["schedule"] = {"milestones": [s["pretrain_epochs"] // 2, 3 * s["pretrain_epochs"] // 4]}
    return over


def _gate_overrides(s: dict, seed: int, init_from: Path) -> dict:
    return {"model": {"name": s["model"]}, "train": {"seed": seed},
            "stages": {"pretrain": {"init_from": str(init_from)}, "finetune": {"enabled": False}}}


def _scratch_epochs(s: dict, ratio: float) -> int:
    # Scratch-B: int(160 / (1 - R)) epochs at paper scale, from the *target* ratio (P6)
    return s["scratch_epochs"] or int(160 / (1 - ratio))


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False) -> dict:
    """Run (or continue) the PFS study at ``scale``; returns and writes the aggregated results.
    ``collect``: train nothing, aggregate the finished sub-runs and list the missing ones."""
    s = SETTINGS[scale]
    out, results_file, parts, runs = open_study("pfs", scale, out, results, parts, PARTS, collect=collect,
                                                quiet=quiet)
    prog = runs.progress_override
    t0 = time.time()
    spec = models.describe(models.create(s["model"]))
    layers = [t.name for t in spec.select("mid")]
    study = {"study": "pfs", "scale": scale, "model": s["model"], "layers": layers,
             "full_widths": [spec.tensor(n).channels for n in layers], "seeds": list(s["seeds"]),
             "epochs": list(s["epochs"]), "structures": [], "pretrain_acc": {}, "gate_learning": [],
             "command": f"prunelab experiment pfs --scale {scale} --out {out}", "settings": dict(s)}
    # structures from random weights and from pre-training checkpoints -----------------------------
    if "structures" in parts:
        for seed in s["seeds"]:
            pcfg = load_config(s["model"], scale, overrides=deep_merge(prog, _pretrain_overrides(s, scale, seed)))
            pdir = runs.get(f"pretrain-s{seed}", lambda d: train(pcfg, d, resume=True, quiet=quiet), f"seed {seed}")
            if pdir is None:
                continue
            accs = {str(r["epoch"]): r.get("test_acc") for r in read_metrics(pdir)}
            study["pretrain_acc"][str(seed)] = accs
            for epoch in s["epochs"]:
                gcfg = load_config("resnet20_pfs", scale,
                                   overrides=deep_merge(prog, _gate_overrides(s, seed, pdir / f"epoch_{epoch}.pt")))
                gdir = runs.get(f"gates-s{seed}-e{epoch}", lambda d: run_pipeline(gcfg, d, resume=True, quiet=quiet),
                                f"structure seed {seed} epoch {epoch}")
                if gdir is None:
                    continue
                res = read_json(gdir / "result.json")
                st = Structure.load(gdir / "structure.json")
                counts = st.counts()
                rep = res["budget_report"]
                study["structures"].append({
                    "seed": seed, "epoch": epoch, "widths": [counts[n] for n in layers], "macs": rep["achieved"],
                    "reduction": 1 - rep["achieved_keep"], "density": rep.get("density_target"),
                    "gates_from": rep.get("gates_from"), "zero_score_kept": rep.get("zero_score_kept"),
                    "nonzero_gates": rep.get("nonzero_gates"), "source_test_acc": res.get("dense_test_acc"),
                })
                study["gate_learning"].append({"seed": seed, "epoch": epoch,
                                               "metrics": [m for m in read_metrics(gdir) if m.get("stage") == "learn"]})
                runs.say(f"seed {seed} epoch {epoch}: widths {study['structures'][-1]['widths']}")
    # accuracy sweeps: expansion rate (S3) and pruning ratio (S4) ----------------------------------
    if "sweeps" in parts:
        sweeps = {"expansion": [], "pruning_ratio": [], "full": []}
        points = [(1.0, r) for r in s["ratios"]] + [(rate, 0.5) for rate in s["rates"] if rate != 1.0]
        for run_i in range(s["runs"]):
            for rate, ratio in points:
                width = int(round(16 * rate)) if s["model"].startswith("resnet") else rate
                cfg = load_config("resnet20_pfs", scale, overrides=deep_merge(prog, {
                    "model": {"name": s["model"], "kwargs": {"width": width}}, "train": {"seed": 100 + run_i},
                    "method": {"density_target": 1 - ratio}, "budget": {"reduction": ratio},
                    "stages": {"finetune": {"train": {"epochs": _scratch_epochs(s, ratio)}}}}))
                d = runs.get(f"sweep-rate{rate}-ratio{ratio}-run{run_i}",
                             lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                             f"sweep rate {rate} ratio {ratio} run {run_i}")
                if d is None:
                    continue
                res = read_json(d / "result.json")
                row = {"rate": rate, "ratio": ratio, "run": run_i, "acc": res["final_test_acc"],
                       "macs": res["budget_report"]["achieved"], "reduction": 1 - res["budget_report"]["achieved_keep"],
                       "widths": Structure.load(d / "structure.json").counts()}
                if rate == 1.0:
                    sweeps["pruning_ratio"].append(row)
                if ratio == 0.5:
                    sweeps["expansion"].append(row)
                runs.say(f"sweep rate {rate} ratio {ratio} run {run_i}: {100 * row['acc']:.2f}%")
            fcfg = load_config(s["model"], scale, overrides=deep_merge(prog, {
                "model": {"name": s["model"]}, "train": {"seed": 100 + run_i, "epochs": _scratch_epochs(s, 0.5)}}))
            fdir = runs.get(f"full-run{run_i}", lambda d: train(fcfg, d, resume=True, quiet=quiet), f"full run {run_i}")
            if fdir is None:
                continue
            sweeps["full"].append({"run": run_i, "acc": read_json(fdir / "result.json")["final"]["test_acc"]})
        study["sweeps"] = {"expansion": sweeps["expansion"], "pruning_ratio": sweeps["pruning_ratio"]}
        accs = [r["acc"] for r in sweeps["full"]]
        study["full_acc"] = sum(accs) / len(accs) if accs else None
        study["full_runs"] = sweeps["full"]
    study["parts"] = list(parts)
    study["complete"], study["missing"] = not runs.missing and set(parts) == set(PARTS), runs.missing
    study["wall_time_s"] = time.time() - t0
    study["created"] = time.strftime("%Y-%m-%d %H:%M")
    written = write_results(results_file, study, runs.say)
    runs.say(f"results written to {written}")
    return study
