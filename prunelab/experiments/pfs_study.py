"""PFS supplement study: structures learned from random weights vs pre-training checkpoints (Fig.
S1/S2), accuracy vs expansion rate (Fig. S3), vs pruning ratio (Fig. S4) and vs density target r
(Fig. S5); aggregated into ``results/pfs_<scale>.json`` (the study format of
:mod:`prunelab.analysis.structures`).

For every seed the full network is pre-trained while weight snapshots are kept at chosen epochs
(epoch 0 = the random initialisation). Gates are learned on each snapshot's frozen weights (45k/5k
split, BN in train mode), and the network is pruned to 50 % MACs of the unexpanded network; the
per-layer channel counts are the structure. The sweeps learn gates on random weights, prune, and train
the pruned widths from scratch.

Scales (docs/decisions.md §3.7, P8, P9):

* ``paper``: ResNet-56 with shortcut B and counted pooling (P5), 5 seeds, 160-epoch pre-training with
  checkpoints {0,1,2,5,10,20,40,80,120,160}, 10-epoch gate learning (the best saved gates), Scratch-B:
  E = int(160 / (1 - R*)) epochs with x0.1 at int(0.5 E) and int(0.75 E); the full model on its own
  recipe (160 epochs, x0.1 at 80 and 120); 5 runs per sweep point. Needs a GPU. The VGG-16 panel is the
  ``vgg16_pfs`` config (tested at ci scale).
* ``cpu``: ResNet-20 on full CIFAR-10, 3 seeds, each pre-trained 10 epochs (one-cycle, the recipe that
  reaches ~85 % in 15) with checkpoints {0 (random), 1 (early), 5 (middle), 10 (final)}; gates learned
  until the save rule keeps some (density <= r) or for at most 4 epochs; sweeps over pruning ratios
  {0.3, 0.5, 0.7}, expansion rates {1, 1.5} and density targets {0.3, 0.5, 0.7, 0.9} with 2 runs each
  and 2 epochs of training from scratch (the whole study about 3 hours of CPU here; two processes can
  share it: ``prunelab experiment pfs --scale cpu`` twice, then ``--collect``).
* ``ci``: 2 seeds, a few hundred images, one epoch per phase: mechanics only.
"""

from __future__ import annotations

from pathlib import Path

from .. import models
from ..config import deep_merge, load_config
from .runner import Runner, Study, SubRun, register_study

SETTINGS = {
    "ci": {"model": "resnet20", "kwargs": {}, "seeds": (0, 1), "epochs": (0, 1, 2), "pretrain_epochs": 2,
           "gate_epochs": 2, "stop_when_saved": True, "ratios": (0.5,), "rates": (1.0, 1.5), "densities": (0.5, 0.7),
           "runs": 1, "scratch_epochs": 1},
    "cpu": {"model": "resnet20", "kwargs": {}, "seeds": (0, 1, 2), "epochs": (0, 1, 5, 10), "pretrain_epochs": 10,
            "gate_epochs": 4, "stop_when_saved": True, "ratios": (0.3, 0.5, 0.7), "rates": (1.0, 1.5),
            "densities": (0.3, 0.5, 0.7, 0.9), "runs": 2, "scratch_epochs": 2},
    "paper": {"model": "resnet56", "kwargs": {"shortcut": "B"}, "seeds": (0, 1, 2, 3, 4),
              "epochs": (0, 1, 2, 5, 10, 20, 40, 80, 120, 160), "pretrain_epochs": 160, "gate_epochs": 10,
              "stop_when_saved": False, "ratios": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), "rates": (0.75, 1.0, 1.25, 1.5, 2.0),
              "densities": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "runs": 5, "scratch_epochs": None},
}
PARTS = ("structures", "sweeps", "density")


def _pretrain_overrides(s: dict, scale: str, seed: int) -> dict:
    over = {"model": {"name": s["model"], "kwargs": dict(s["kwargs"])},
            "train": {"seed": seed, "epochs": s["pretrain_epochs"], "keep_epochs": list(s["epochs"])}}
    if scale == "paper":
        over["schedule"] = {"milestones": [s["pretrain_epochs"] // 2, 3 * s["pretrain_epochs"] // 4]}
    return over


def _gate_overrides(s: dict, seed: int, init_from: Path) -> dict:
    return {"model": {"name": s["model"], "kwargs": dict(s["kwargs"])}, "train": {"seed": seed},
            "method": {"stop_when_saved": s["stop_when_saved"]},
            "stages": {"pretrain": {"init_from": str(init_from)}, "learn": {"train": {"epochs": s["gate_epochs"]}},
                       "finetune": {"enabled": False}}}


def _scratch_epochs(s: dict, ratio: float) -> int:
    # Scratch-B: int(160 / (1 - R)) epochs at paper scale, from the *target* ratio (P6)
    return s["scratch_epochs"] or int(160 / (1 - ratio))


def scratch_schedule(scale: str, ratio: float) -> dict:
    """The fine-tuning stage's overrides for training a pruned network from scratch: at ``paper`` scale
    Scratch-B, E = int(160 / (1 - R*)) epochs with the lr x0.1 at int(0.5 E) and int(0.75 E) (the
    official train_pruned.py); otherwise the scale's short schedule."""
    s = SETTINGS[scale]
    e = _scratch_epochs(s, ratio)
    over = {"train": {"epochs": e}}
    if scale == "paper":
        over["schedule"] = {"name": "multistep", "warmup": 0, "milestones": [int(0.5 * e), int(0.75 * e)]}
    return over


def full_model_overrides(scale: str, run_i: int) -> dict:
    """The unpruned model's own recipe (the red dotted line of Fig. S3-S5): at ``paper`` scale 160 epochs,
    SGD lr 0.1 (momentum 0.9, no Nesterov), weight decay 1e-4 on all parameters, x0.1 at 80 and 120, no
    label smoothing (Scratch-B at R* = 0); otherwise the scale's short schedule."""
    s = SETTINGS[scale]
    over = {"model": {"name": s["model"], "kwargs": dict(s["kwargs"])},
            "train": {"seed": 100 + run_i, "epochs": _scratch_epochs(s, 0.0)}}
    if scale == "paper":
        over = deep_merge(over, {"train": {"label_smoothing": 0.0},
                                 "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                           "weight_decay": 1.0e-4, "decay_norm_and_bias": True},
                                 "schedule": {"name": "multistep", "warmup": 0, "milestones": [80, 120]}})
    return over


@register_study("pfs")
class PFSStudy(Study):
    """The PFS study as a plan: per seed a pre-training run with snapshots and gate learning on each
    snapshot; the sweeps' pruned runs trained from scratch and the full model's runs."""

    parts = PARTS

    def subruns(self, scale: str, parts: tuple) -> list[SubRun]:
        s = SETTINGS[scale]
        prog = {"train": {"progress": False}}
        subs = []
        if "structures" in parts:
            for seed in s["seeds"]:
                pname = f"pretrain-s{seed}"
                subs.append(SubRun(pname, "train", lambda deps, seed=seed: load_config(
                    s["model"], scale, overrides=deep_merge(prog, _pretrain_overrides(s, scale, seed))),
                    part="structures", label=f"seed {seed}"))
                for epoch in s["epochs"]:
                    subs.append(SubRun(
                        f"gates-s{seed}-e{epoch}", "pipeline",
                        lambda deps, seed=seed, epoch=epoch, pname=pname: load_config("resnet20_pfs", scale, overrides=deep_merge(
                            prog, _gate_overrides(s, seed, deps.dir(pname) / f"epoch_{epoch}.pt"))),
                        needs=(pname,), part="structures", label=f"structure seed {seed} epoch {epoch}"))
        if "sweeps" in parts or "density" in parts:
            for run_i in range(s["runs"]):
                for rate, ratio, density, name in _sweep_points(s, parts, run_i):
                    subs.append(SubRun(name, "pipeline", lambda deps, a=(rate, ratio, density, run_i): _sweep_config(
                        scale, *a), part="sweeps" if abs(density - (1 - ratio)) < 1e-9 else "density",
                        label=f"sweep rate {rate} ratio {ratio} density {density:g} run {run_i}"))
                subs.append(SubRun(f"full-run{run_i}", "train", lambda deps, run_i=run_i: load_config(
                    s["model"], scale, overrides=deep_merge(prog, full_model_overrides(scale, run_i))),
                    part="sweeps", label=f"full run {run_i}"))
        return subs

    def aggregate(self, scale: str, parts: tuple, records: dict, out: Path) -> dict:
        s = SETTINGS[scale]
        spec = models.describe(models.create(s["model"], **s["kwargs"]))
        layers = [t.name for t in spec.select("mid")]
        study = {"study": "pfs", "scale": scale, "model": s["model"], "layers": layers,
                 "full_widths": [spec.tensor(n).channels for n in layers], "seeds": list(s["seeds"]),
                 "model_kwargs": dict(s["kwargs"]), "epochs": list(s["epochs"]), "structures": [],
                 "pretrain_acc": {}, "gate_learning": [], "settings": dict(s)}
        if "structures" in parts:
            for seed in s["seeds"]:
                pre = records.get(f"pretrain-s{seed}")
                if pre is None:
                    continue
                study["pretrain_acc"][str(seed)] = {str(r["epoch"]): r.get("test_acc") for r in pre["metrics"]}
                for epoch in s["epochs"]:
                    g = records.get(f"gates-s{seed}-e{epoch}")
                    if g is None:
                        continue
                    res, counts = g["result"], g["widths"]
                    rep = res["budget_report"]
                    learn = [m for m in g["metrics"] if m.get("stage") == "learn"]
                    study["structures"].append({
                        "seed": seed, "epoch": epoch, "widths": [counts[n] for n in layers], "macs": rep["achieved"],
                        "reduction": 1 - rep["achieved_keep"], "density": rep.get("density_target"),
                        "gates_from": rep.get("gates_from"), "zero_score_kept": rep.get("zero_score_kept"),
                        "nonzero_gates": rep.get("nonzero_gates"), "source_test_acc": res.get("dense_test_acc"),
                        "gate_epochs": len(learn), "final_density": learn[-1].get("gate_density") if learn else None,
                    })
                    study["gate_learning"].append({"seed": seed, "epoch": epoch, "metrics": learn})
        if "sweeps" in parts or "density" in parts:
            sweeps = {"expansion": [], "pruning_ratio": [], "density": [], "full": []}
            for run_i in range(s["runs"]):
                for rate, ratio, density, name in _sweep_points(s, parts, run_i):
                    rec = records.get(name)
                    if rec is None:
                        continue
                    row = _sweep_row(rec, rate, ratio, density, run_i)
                    default = abs(density - (1 - ratio)) < 1e-9
                    if rate == 1.0 and default and "sweeps" in parts:
                        sweeps["pruning_ratio"].append(row)
                    if ratio == 0.5 and default and "sweeps" in parts:
                        sweeps["expansion"].append(row)
                    if rate == 1.0 and ratio == 0.5 and "density" in parts:
                        sweeps["density"].append(row)
                full = records.get(f"full-run{run_i}")
                if full is not None:
                    sweeps["full"].append({"run": run_i, "acc": full["result"]["final"]["test_acc"]})
            study["sweeps"] = {k: sweeps[k] for k in ("expansion", "pruning_ratio", "density")}
            accs = [r["acc"] for r in sweeps["full"]]
            study["full_acc"] = sum(accs) / len(accs) if accs else None
            study["full_runs"] = sweeps["full"]
        return study


def _sweep_points(s: dict, parts: tuple, run_i: int) -> list[tuple]:
    """``(rate, ratio, density, sub-run name)`` of the sweep points of run ``run_i``."""
    points = []
    if "sweeps" in parts:
        points += [(1.0, r, 1 - r) for r in s["ratios"]] + [(rate, 0.5, 0.5) for rate in s["rates"] if rate != 1.0]
    if "density" in parts:
        points += [(1.0, 0.5, d) for d in s["densities"] if not ("sweeps" in parts and abs(d - 0.5) < 1e-9
                                                                  and 0.5 in s["ratios"])]
    out = []
    for rate, ratio, density in points:
        default = abs(density - (1 - ratio)) < 1e-9  # r = 1 - R*: the S3/S4 runs
        name = (f"sweep-rate{rate}-ratio{ratio}-run{run_i}" if default
                else f"sweep-rate{rate}-ratio{ratio}-density{density}-run{run_i}")
        out.append((rate, ratio, density, name))
    return out


def _sweep_config(scale: str, rate: float, ratio: float, density: float, run_i: int):
    s = SETTINGS[scale]
    width = int(round(16 * rate)) if s["model"].startswith("resnet") else rate
    return load_config("resnet20_pfs", scale, overrides=deep_merge({"train": {"progress": False}}, {
        "model": {"name": s["model"], "kwargs": {**s["kwargs"], "width": width}}, "train": {"seed": 100 + run_i},
        "method": {"density_target": density}, "budget": {"reduction": ratio},
        "stages": {"finetune": scratch_schedule(scale, ratio)}}))


def _sweep_row(rec: dict, rate: float, ratio: float, density: float, run_i: int) -> dict:
    res = rec["result"]
    # the config keeps 1 - R* as computed (the finished runs were made with it); the row reads 0.3, not 0.30000000000000004
    row = {"rate": rate, "ratio": ratio, "density": round(density, 9), "run": run_i, "acc": res["final_test_acc"],
           "macs": res["budget_report"]["achieved"], "reduction": 1 - res["budget_report"]["achieved_keep"],
           "gates_from": res["budget_report"].get("gates_from"), "widths": rec["widths"]}
    # how far the gates got towards r decides what the sweep over r measures: record the density reached
    learn = [m for m in rec["metrics"] if m.get("stage") == "learn"]
    row["gate_epochs"] = len(learn)
    row["final_density"] = learn[-1].get("gate_density") if learn else None
    return row


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False,
        executor=None, shard=None) -> dict:
    """Run (or continue) the PFS study at ``scale`` on the study runner (:mod:`.runner`); returns and
    writes the aggregated results. ``collect``: train nothing, aggregate the finished sub-runs and list
    the missing ones."""
    return Runner("pfs", scale, out, parts=parts, results=results, collect=collect, quiet=quiet, executor=executor,
                  shard=shard).run()
