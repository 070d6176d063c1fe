"""BAR supplement study: teacher, BAR at four volume budgets, the iterative random (and WM)
baselines, and the sensitivity analysis; aggregated into ``results/bar_<scale>.json``.

Scales (say what was run; docs/decisions.md §4.8, §6.4):

* ``paper``: BAR's WRN (k = 12), teacher 80+10 epochs, BAR 80 / 40 / 10 epochs, baselines
  40+10 per step, 10 sensitivity runs per budget. Needs a GPU.
* ``cpu``: the same network at k = 1 (16/32/64 channels, every conv output gated: 28 tensors, 1,024
  gates, V0 = 274,432), full CIFAR-10, batch 128; teacher 10 epochs; BAR 3 (pruning) + 2 (fine-tune)
  epochs, **warm-started from the teacher's weights** (the supplement's Mio-TCD protocol; on CIFAR the
  paper starts from random weights, but with every feature map multiplied by Hard Concrete noise a
  randomly initialised WRN learned nearly nothing in 6 epochs: measured 11-18 % train accuracy);
  lambda 1e-4, Adam on log alpha at lr 2e-2 (so gates can cross the threshold within the short phase);
  baselines 2 epochs per step; no extra sensitivity draws (the tuned run only: the whole cpu sweep has
  to fit in about an hour on 2 cores, and one BAR run takes ~15 min there). A first protocol with 6 + 3
  epochs and gate lr 1e-2 reached 60.7 % at PF 8 (V x8.3) but took ~50 min per budget.
* ``ci``: one block per stage, 200 training images, one or two epochs per phase, no extra
  sensitivity draws: mechanics only.

The iterative baselines (supplement §3.2) start from the trained teacher and remove 50 % of every
gated tensor per step (the contributors of each residual trunk share one mask, L6), retraining after
each step, which gives V-factors 2, 4, 8, 16 and F ~ V^2.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import models
from ..analysis.bar import active_neurons, regular_vs_mixed
from ..config import deep_merge, load_config
from ..counting import count
from ..errors import ConfigError
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from ..workflows import SubRuns, iterative_prune, run_pipeline, train
from . import open_study, write_results

PRUNING_FACTORS = (2, 4, 8, 16)
SETTINGS = {
    "ci": {"sensitivity_runs": 0, "baseline_epochs": 1, "baselines": ("random",), "warm_start": True},
    "cpu": {"sensitivity_runs": 0, "baseline_epochs": 2, "baselines": ("random",), "warm_start": True},
    "paper": {"sensitivity_runs": 10, "baseline_epochs": 50, "baselines": ("random", "wm"), "warm_start": False},
}
PARTS = ("teacher", "bar", "baselines", "sensitivity")

# B18: the seven hyper-parameters the sensitivity analysis draws around their tuned values
# [unverified: the supplement names no parameters, only interval widths of 1e-5, 0.2 or 1.0]
SENSITIVITY = {
    "method.lambda": ("relative", 0.5),  # U(0.5, 1.5) x tuned
    "method.margin": ("relative", 0.5),
    "method.d": ("absolute", 1.0),  # U(9.5, 10.5)
    "method.b0_factor": ("absolute", 0.01),  # U(1.005, 1.015): b0 must stay above V0
    "method.kd_temperature": ("absolute", 1.0),  # U(3.5, 4.5)
    "method.kd_alpha": ("absolute", 0.2),  # U(0.8, 1.0)
    "optim.lr": ("relative", 0.5),
}


def sample_hyperparameters(base, rng: np.random.Generator) -> dict:
    """One draw of the sensitivity hyper-parameters around the tuned config ``base``."""
    from ..methods import create

    method = {**create("bar").config(), **base.method}
    out = {}
    for key, (kind, width) in SENSITIVITY.items():
        section, name = key.split(".")
        v0 = float(method[name] if section == "method" else getattr(getattr(base, section), name))
        v = v0 * rng.uniform(1 - width, 1 + width) if kind == "relative" else rng.uniform(v0 - width / 2, v0 + width / 2)
        if name == "kd_alpha":
            v = min(v, 1.0)
        out[key] = float(v)
    return out


def _summarize_pipeline(run_dir: Path, spec, extra: dict) -> dict:
    res = read_json(run_dir / "result.json")
    structure = Structure.load(run_dir / "structure.json")
    full, pruned = count(spec), count(spec, structure)
    rep = res.get("budget_report", {})
    trace = None
    tp = run_dir / "arrays" / "bar_trace.npy"
    if tp.exists():
        t = np.load(tp)
        keep = np.unique(np.linspace(0, len(t) - 1, min(len(t), 400)).astype(int))
        trace = {"step": t[keep, 0], "cost": t[keep, 1], "bound": t[keep, 2], "barrier": t[keep, 3],
                 "l_hc": t[keep, 4]}
    return {
        **extra,
        "v_factor": full.volume / pruned.volume, "f_factor": full.macs / pruned.macs,
        "volume": pruned.volume, "flops": pruned.flops, "accuracy": res["final_test_acc"],
        "accuracy_before_finetune": res["pruned_test_acc_before_finetune"],
        "budget_met": rep.get("budget_met"), "removed_branches": rep.get("removed_branches", []),
        "revived_channels": rep.get("revived_channels", []), "barrier_overshoots": rep.get("barrier_overshoots"),
        "alive": structure.counts(), "structure": structure.to_dict(), "regular_vs_mixed": regular_vs_mixed(spec, structure),
        "trace": trace, "metrics": read_metrics(run_dir), "wall_time_s": res.get("wall_time_s"),
    }


def _halve(structure: Structure, spec, scores: dict, rng: np.random.Generator) -> Structure:
    """Keep half of the alive channels of every gated tensor; trunk contributors share one mask."""
    new = {}
    trunk_of = {n: tid for tid, members in spec.trunks().items() for n in members}
    groups: dict = {}
    for t in spec.tensors:
        groups.setdefault(trunk_of.get(t.name, t.name), []).append(t.name)
    for key, members in groups.items():
        alive = structure.alive[members[0]]
        n = max(1, len(alive) // 2)
        if scores is None:
            keep = rng.choice(alive, n, replace=False)
        else:
            s = np.sum([scores[m][alive] for m in members], axis=0)
            keep = alive[np.lexsort((alive, -s))[:n]]
        for m in members:
            new[m] = np.sort(keep)
    return structure.with_alive(new)


def _l1_scores(model, spec) -> dict:
    return {t.name: model.get_submodule(t.conv).weight.detach().abs().flatten(1).sum(1).double().numpy()
            for t in spec.tensors}


def _shrink(kind: str):
    """Halve every gated tensor: at random, or keeping the largest-L1 filters (WM)."""
    def shrink(structure, spec, dense, rng):
        return _halve(structure, spec, None if kind == "random" else _l1_scores(dense, spec), rng)

    return shrink


def _baseline(kind: str, scale: str, runs: SubRuns, teacher_path: Path) -> list[dict]:
    """Iterative random / weight-magnitude pruning from the teacher (supplement §3.2)."""
    epochs = SETTINGS[scale]["baseline_epochs"]
    cfg = load_config("bar_wrn_teacher", scale, overrides=deep_merge(runs.progress_override, {
        "train": {"epochs": epochs}, "schedule": {"milestones": [max(1, epochs - 1)]}}))
    steps = iterative_prune(cfg, runs.path(kind), init_from=teacher_path, steps=len(PRUNING_FACTORS),
                            shrink=_shrink(kind), stage=kind, collect=runs.collect,
                            stage_names=[f"{kind}{pf}" for pf in PRUNING_FACTORS],
                            say=lambda *a: None)
    runs.missing += [f"{kind} PF {pf}" for pf in PRUNING_FACTORS[len(steps):]]
    spec = models.describe(models.create(cfg.model.name, **cfg.model.kwargs))
    full = count(spec)
    rows = []
    for row, pf in zip(steps, PRUNING_FACTORS):
        c = count(spec, row["structure"])
        rows.append({"method": "Random" if kind == "random" else "WM", "pf": pf, "v_factor": full.volume / c.volume,
                     "f_factor": full.macs / c.macs, "accuracy": row["accuracy"],
                     "accuracy_before_finetune": row["accuracy_before_finetune"],
                     "alive": row["structure"].counts(), "metrics": row["metrics"]})
        runs.say(f"{kind} PF {pf}: V x{rows[-1]['v_factor']:.2f}, F x{rows[-1]['f_factor']:.1f}, "
                 f"accuracy {100 * rows[-1]['accuracy']:.2f}%")
    return rows


def _warm(scale: str, tdir: Path) -> dict:
    return {"stages": {"pretrain": {"init_from": str(tdir / "model.pt")}}} if SETTINGS[scale]["warm_start"] else {}


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False) -> dict:
    """Run (or continue) the BAR study at ``scale``; returns and writes the aggregated results.
    ``collect``: train nothing, aggregate the finished sub-runs and list the missing ones."""
    out, results_file, parts, runs = open_study("bar", scale, out, results, parts, PARTS, collect=collect,
                                                quiet=quiet)
    t0 = time.time()
    prog = runs.progress_override
    # teacher --------------------------------------------------------------------------------------
    tcfg = load_config("bar_wrn_teacher", scale, overrides=prog)
    tdir = runs.get("teacher", lambda d: train(tcfg, d, resume=True, quiet=quiet))
    if tdir is None:
        raise ConfigError(f"--collect: the teacher run {runs.path('teacher')} has not finished; nothing to aggregate")
    teacher = read_json(tdir / "result.json")
    runs.say(f"teacher: {100 * teacher['final']['test_acc']:.2f}% test accuracy")
    spec = models.describe(models.create(tcfg.model.name, **tcfg.model.kwargs))
    bar_runs, baselines, sensitivity = [], [], []

    # BAR at each volume budget --------------------------------------------------------------------
    def bar_config(pf, extra=None):
        over = deep_merge(prog, {"budget": {"factor": pf}, "method": {"teacher": str(tdir / "model.pt")}})
        return load_config("bar_wrn_bar", scale, overrides=deep_merge(deep_merge(over, _warm(scale, tdir)), extra or {}))

    def bar_run(pf):
        cfg = bar_config(pf)
        return runs.get(f"bar-v{pf}", lambda d: run_pipeline(cfg, d, resume=True, quiet=quiet), f"BAR PF {pf}"), cfg

    # the factors the claims compare against the baseline (4, 8) run first, then the baseline, so an
    # interrupted cpu study has the comparison before the rest of the sweep
    if "bar" in parts and not collect:
        for pf in (4, 8):
            if pf in PRUNING_FACTORS:
                bar_run(pf)
    if "baselines" in parts:
        for kind in SETTINGS[scale]["baselines"]:
            baselines += _baseline(kind, scale, runs, tdir / "model.pt")
    if "bar" in parts:
        for pf in PRUNING_FACTORS:
            d, cfg = bar_run(pf)
            if d is None:
                continue
            bar_runs.append(_summarize_pipeline(d, spec, {"method": "BAR", "pf": pf, "budget": "volume",
                                                          "hyperparameters": cfg.method}))
            runs.say(f"BAR PF {pf}: V x{bar_runs[-1]['v_factor']:.2f} (target {pf}), "
                     f"F x{bar_runs[-1]['f_factor']:.1f}, accuracy {100 * bar_runs[-1]['accuracy']:.2f}%")
    # sensitivity ----------------------------------------------------------------------------------
    if "sensitivity" in parts:
        rng = np.random.default_rng(2019)
        for pf in PRUNING_FACTORS:
            base = load_config("bar_wrn_bar", scale, overrides={"budget": {"factor": pf}})
            for i in range(SETTINGS[scale]["sensitivity_runs"]):
                hp = sample_hyperparameters(base, rng)
                over = {"train": {"seed": i + 1}, "stages": {"finetune": {"optim": {"lr": hp["optim.lr"]}}}}
                for key, v in hp.items():  # "method.lambda" -> {"method": {"lambda": v}}
                    section, name = key.split(".")
                    over = deep_merge(over, {section: {name: v}})
                # the same hyper-parameters apply to the fine-tuning stage's learning rate (above)
                cfg = bar_config(pf, over)
                d = runs.get(f"sensitivity-v{pf}-{i}", lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                             f"sensitivity PF {pf} run {i + 1}")
                if d is not None:
                    sensitivity.append(_summarize_pipeline(d, spec, {"method": "BAR", "pf": pf, "run": i + 1,
                                                                     "hyperparameters": hp}))
        # the tuned runs count as run 0 of the sensitivity analysis
        sensitivity = [{**r, "run": 0, "hyperparameters": "tuned"} for r in bar_runs] + sensitivity
    results = {
        "study": "bar", "scale": scale, "created": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"prunelab experiment bar --scale {scale} --out {out}",
        "model": {"name": tcfg.model.name, **tcfg.model.kwargs},
        "dense": {"volume": count(spec).volume, "macs": count(spec).macs, "flops": count(spec).flops,
                  "gated_tensors": len(spec.tensors), "gates": sum(t.channels for t in spec.tensors)},
        "teacher": {"accuracy": teacher["final"]["test_acc"], "epochs": teacher["epochs"],
                    "metrics": read_metrics(tdir)},
        "full_active_neurons": active_neurons(spec).to_dict("records"),
        "runs": bar_runs, "baselines": baselines, "sensitivity": sensitivity,
        "data_source": teacher.get("data_source"), "wall_time_s": time.time() - t0,
        "parts": list(parts), "complete": not runs.missing and set(parts) == set(PARTS), "missing": runs.missing,
    }
    written = write_results(results_file, results, runs.say)
    runs.say(f"results written to {written}")
    return results
