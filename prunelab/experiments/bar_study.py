"""BAR supplement study: teacher, BAR at four volume budgets, the iterative random (and WM)
baselines, and the sensitivity analysis; aggregated into ``results/bar_<scale>.json``.

Scales (say what was run; docs/decisions.md §4.8, §6.4):

* ``paper``: BAR's WRN (k = 12), teacher 80+10 epochs, BAR 80 / 40 / 10 epochs, baselines
  40+10 per step, 10 sensitivity runs per budget. Needs a GPU.
* ``cpu``: the same network at k = 1 (16/32/64 channels, every conv output gated: 28 tensors, 1,024
  gates, V0 = 274,432), full CIFAR-10, batch 128; teacher 10 epochs of one-cycle SGD; BAR 3 (pruning)
  + 4 (fine-tune) epochs, **warm-started from the teacher's weights** (the supplement's Mio-TCD
  protocol; on CIFAR the paper starts from random weights, but with every feature map multiplied by
  Hard Concrete noise a randomly initialised WRN learned nearly nothing in 6 epochs: measured 11-18 %
  train accuracy); lambda 1e-4, Adam on log alpha at lr 2e-2 (so gates can cross the threshold within
  the short phase); kept maps keep their frozen gate value after hard pruning (B9); baselines with and
  without distillation, 3 epochs per step; 3 sensitivity draws at PF 4 and 8 (docs/decisions.md §4.8,
  B18; about 4 hours of CPU here, two processes can share it: ``prunelab experiment bar --scale cpu``
  twice, then ``--collect``).
* ``ci``: one block per stage, 200 training images, one or two epochs per phase, one sensitivity
  draw at PF 2: mechanics only.

The iterative baselines (supplement §3.2) start from the trained teacher and remove 50 % of every
gated tensor per step (the contributors of each residual trunk share one mask, L6), retraining after
each step with BAR's fine-tuning optimiser, which gives V-factors 2, 4, 8, 16 and F ~ V^2. They run
distilled from the teacher like BAR (the comparison) and without distillation (a second row).

A session can end on a fresh machine with ``runs/`` gone; only the results file is committed. So each
row records its sub-run (``subrun``) and config fingerprint (``config_sha256``), the results record the
teacher's weights fingerprint, and a rerun retrains the teacher (deterministic: same weights) and then
takes every sub-run it no longer has from the earlier results file when teacher, config and study code
all match (:class:`EarlierRows`; listed under ``reused_subruns``). Interrupted studies are committed as
``results/bar_<scale>.partial.json`` and continued that way.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .. import models
from ..analysis.bar import active_neurons, regular_vs_mixed
from ..config import deep_merge, load_config
from ..counting import count
from ..errors import ConfigError, RunDirBusyError
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..train.trainer import weights_fingerprint
from ..utils import read_json
from ..workflows import SubRuns, iterative_prune, run_pipeline, train
from . import open_study, provenance, write_results

PRUNING_FACTORS = (2, 4, 8, 16)
# baselines: (shrink rule, distilled from the teacher like BAR); the undistilled rows are kept as a
# second reading of the comparison (supplement §3.2 does not say whether its baselines distil)
SETTINGS = {
    "ci": {"sensitivity_runs": 1, "sensitivity_factors": (2,), "baseline_epochs": 1,
           "baselines": (("random", True), ("random", False)), "warm_start": True},
    "cpu": {"sensitivity_runs": 3, "sensitivity_factors": (4, 8), "baseline_epochs": 3,
            "baselines": (("random", True), ("random", False)), "warm_start": True},
    "paper": {"sensitivity_runs": 10, "sensitivity_factors": PRUNING_FACTORS, "baseline_epochs": 50,
              "baselines": (("random", True), ("random", False), ("wm", True), ("wm", False)), "warm_start": False},
}
PARTS = ("teacher", "bar", "baselines", "sensitivity")

# B18: the seven hyper-parameters the sensitivity analysis draws uniformly around their tuned values,
# with the supplement's interval widths (1e-5, 0.2 or 1.0 "depending on the scale of the parameter",
# supp §8). Which seven it drew is not stated [unverified]: these are BAR's tunable constants whose
# scale matches one of the three widths and stays valid over the whole interval.
SENSITIVITY = {
    "method.lambda": 1e-5,  # tuned 1e-5 (paper), 1e-4 (cpu): U(tuned - 5e-6, tuned + 5e-6)
    "method.margin": 1e-5,  # 1e-4 -> U(9.5e-5, 1.05e-4)
    "optim.lr": 1e-5,  # Adam 1e-3 -> U(9.95e-4, 1.005e-3)
    "optim.weight_decay": 1e-5,  # 5e-4 -> U(4.95e-4, 5.05e-4)
    "method.kd_alpha": 0.2,  # 0.9 -> U(0.8, 1.0)
    "method.d": 1.0,  # 10 -> U(9.5, 10.5)
    "method.kd_temperature": 1.0,  # 4 -> U(3.5, 4.5)
}
SENSITIVITY_WIDTHS = (1e-5, 0.2, 1.0)  # the only widths the supplement gives


def sample_hyperparameters(base, rng: np.random.Generator) -> dict:
    """One draw of the sensitivity hyper-parameters around the tuned config ``base``."""
    from ..methods import create

    method = {**create("bar").config(), **base.method}
    out = {}
    for key, width in SENSITIVITY.items():
        section, name = key.split(".")
        v0 = float(method[name] if section == "method" else getattr(getattr(base, section), name))
        if v0 - width / 2 < 0 or (name in ("kd_alpha", "margin") and v0 + width / 2 > 1):
            raise ConfigError(f"sensitivity interval of {key} ({v0:g} +- {width / 2:g}) leaves its valid range; "
                              f"change the tuned value or the width in bar_study.SENSITIVITY")
        out[key] = float(rng.uniform(v0 - width / 2, v0 + width / 2))
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
        "accuracy_learned": res.get("learned_test_acc"),
        "end_of_phase_factor": rep.get("end_of_phase_factor"), "trimmed_channels": rep.get("trimmed_channels", []),
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


def baseline_label(kind: str, kd: bool) -> str:
    """Row label of an iterative baseline: "Random" / "WM", with or without distillation."""
    return ("Random" if kind == "random" else "WM") + (" + KD" if kd else " (no KD)")


def _baseline_config(scale: str, runs: SubRuns):
    """The retraining config of an iterative baseline: BAR's fine-tuning optimiser (Adam 1e-3, x0.1 for
    the last epoch), whatever recipe trained the teacher."""
    epochs = SETTINGS[scale]["baseline_epochs"]
    return load_config("bar_wrn_teacher", scale, overrides=deep_merge(runs.progress_override, {
        "train": {"epochs": epochs}, "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 5.0e-4},
        "schedule": {"name": "multistep", "warmup": 0, "milestones": [max(1, epochs - 1)], "gamma": 0.1}}))


def baseline_subrun(kind: str, kd: bool) -> str:
    """Sub-run folder of an iterative baseline chain: ``random-kd``, ``random``, ``wm-kd``, ``wm``."""
    return kind + ("-kd" if kd else "")


def _baseline(kind: str, kd: bool, scale: str, runs: SubRuns, teacher_path: Path) -> list[dict]:
    """Iterative random / weight-magnitude pruning from the teacher (supplement §3.2); with ``kd`` every
    retraining distils from the teacher with BAR's T and alpha, as BAR's own phases do."""
    from ..methods import create
    from ..train.distill import Distillation
    from ..train.trainer import load_weights

    cfg = _baseline_config(scale, runs)
    hooks = []
    if kd:
        o = create("bar").options
        teacher = models.create(cfg.model.name, **cfg.model.kwargs)
        load_weights(teacher, teacher_path)
        hooks = [Distillation(teacher, o.kd_temperature, o.kd_alpha)]
    name = baseline_subrun(kind, kd)
    steps = iterative_prune(cfg, runs.path(name), init_from=teacher_path, steps=len(PRUNING_FACTORS),
                            shrink=_shrink(kind), stage=name, collect=runs.collect, hooks=hooks,
                            stage_names=[f"{name}{pf}" for pf in PRUNING_FACTORS],
                            say=lambda *a: None)
    runs.missing += [f"{name} PF {pf}" for pf in PRUNING_FACTORS[len(steps):]]
    spec = models.describe(models.create(cfg.model.name, **cfg.model.kwargs))
    full = count(spec)
    rows = []
    for row, pf in zip(steps, PRUNING_FACTORS):
        c = count(spec, row["structure"])
        rows.append({"method": baseline_label(kind, kd), "subrun": name,
                     "config_sha256": config_fingerprint(cfg, shrink=kind, kd=kd), "kind": kind, "kd": kd, "pf": pf,
                     "v_factor": full.volume / c.volume,
                     "f_factor": full.macs / c.macs, "accuracy": row["accuracy"],
                     "accuracy_before_finetune": row["accuracy_before_finetune"],
                     "alive": row["structure"].counts(), "structure": row["structure"].to_dict(),
                     "metrics": row["metrics"]})
        runs.say(f"{name} PF {pf}: V x{rows[-1]['v_factor']:.2f}, F x{rows[-1]['f_factor']:.1f}, "
                 f"accuracy {100 * rows[-1]['accuracy']:.2f}%")
    return rows


def config_fingerprint(cfg, **extra) -> str:
    """sha256 of a sub-run's resolved config, without what does not change its numbers: the paths of the
    teacher and warm-start weights (the teacher's identity is its weights fingerprint, recorded beside)
    and whether progress bars show. ``extra``: what else defines the sub-run (a baseline's shrink rule)."""
    d = cfg.to_dict()
    d["train"].pop("progress", None)
    d.get("method", {}).pop("teacher", None)
    d.get("stages", {}).get("pretrain", {}).pop("init_from", None)
    return hashlib.sha256(json.dumps({**d, **extra}, sort_keys=True, default=str).encode()).hexdigest()


class EarlierRows:
    """Rows of finished sub-runs in the study's earlier results file (complete or ``.partial.json``),
    usable in place of a sub-run that is not on this machine: a session can end on a fresh machine
    with ``runs/`` gone, and only the small results file is committed.

    A row is reused only when the earlier file was made by the same study code (its code fingerprint)
    from a teacher with the same weights (the teacher is retrained first, deterministically: same
    config, same machine type, same fingerprint) and the sub-run's config fingerprint matches; anything
    else is trained again. Reused rows keep the commit that made them (``made_at_commit``).
    """

    def __init__(self, results_file: Path, scale: str, teacher_sha: str, say=print):
        self.rows: dict[str, list[dict]] = {}
        self.used: list[str] = []
        code_hash = provenance("bar", scale)["code_hash"]
        for f in (results_file, results_file.with_name(results_file.stem + ".partial.json")):
            try:
                old = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if old.get("scale") != scale:
                continue
            if old.get("teacher", {}).get("weights_sha256") != teacher_sha:
                if old.get("teacher", {}).get("weights_sha256"):
                    say(f"{f.name}: made with other teacher weights; its sub-runs are not reused")
                continue
            if old.get("code_hash") != code_hash:
                say(f"{f.name}: made by other study code (commit {old.get('commit')}); its sub-runs are not reused")
                continue
            sens = [r for r in old.get("sensitivity", []) if r.get("run") != 0]  # run 0 repeats a BAR row
            for row in old.get("runs", []) + old.get("baselines", []) + sens:
                if row.get("subrun") and row.get("config_sha256"):
                    row = {**row, "made_at_commit": row.get("made_at_commit") or old.get("commit")}
                    self.rows.setdefault((f.name, row["subrun"]), []).append(row)

    def get(self, runs: SubRuns, name: str, config_sha: str, n: int = 1) -> list[dict] | None:
        """The ``n`` earlier rows of sub-run ``name`` if it is not finished under ``runs`` and they match."""
        if runs.done(name):
            return None
        for (fname, sub), rows in self.rows.items():
            if sub == name and len(rows) == n and all(r["config_sha256"] == config_sha for r in rows):
                if name in self.used:  # asked again (the study's early pass over PF 4 and 8): said already
                    return rows
                self.used.append(name)
                runs.say(f"{name}: not under {runs.root}; its result is reused from {fname} "
                         f"(commit {rows[0]['made_at_commit']}: same teacher weights, config and study code)")
                return rows
        return None


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
    teacher_sha = weights_fingerprint(tdir / "model.pt")
    earlier = EarlierRows(results_file, scale, teacher_sha, runs.say)
    bar_runs, baselines, sensitivity = [], [], []

    # BAR at each volume budget --------------------------------------------------------------------
    def bar_config(pf, extra=None):
        over = deep_merge(prog, {"budget": {"factor": pf}, "method": {"teacher": str(tdir / "model.pt")}})
        return load_config("bar_wrn_bar", scale, overrides=deep_merge(deep_merge(over, _warm(scale, tdir)), extra or {}))

    def bar_run(pf):
        """(run dir or None, earlier rows or None, config) of BAR at ``pf``: trained here unless reused."""
        cfg = bar_config(pf)
        reused = earlier.get(runs, f"bar-v{pf}", config_fingerprint(cfg))
        if reused:
            return None, reused, cfg
        d = runs.get(f"bar-v{pf}", lambda d: run_pipeline(cfg, d, resume=True, quiet=quiet), f"BAR PF {pf}")
        return d, None, cfg

    # the factors the claims compare against the baseline (4, 8) run first, then the baseline, so an
    # interrupted cpu study has the comparison before the rest of the sweep
    if "bar" in parts and not collect:
        for pf in (4, 8):
            if pf in PRUNING_FACTORS:
                bar_run(pf)
    if "baselines" in parts:
        for kind, kd in SETTINGS[scale]["baselines"]:
            reused = earlier.get(runs, baseline_subrun(kind, kd), config_fingerprint(
                _baseline_config(scale, runs), shrink=kind, kd=kd), n=len(PRUNING_FACTORS))
            if reused:
                baselines += reused
                continue
            try:
                baselines += _baseline(kind, kd, scale, runs, tdir / "model.pt")
            except RunDirBusyError:  # a chain of steps: another process of this study is on it, take the next one
                label = f"{baseline_label(kind, kd)} baseline"
                runs.missing.append(label)
                runs.busy.append(label)
                runs.say(f"{label}: being run by another process; skipped here")
    if "bar" in parts:
        for pf in PRUNING_FACTORS:
            d, reused, cfg = bar_run(pf)
            if reused:
                bar_runs += reused
            elif d is not None:
                bar_runs.append(_summarize_pipeline(d, spec, {
                    "method": "BAR", "subrun": f"bar-v{pf}", "config_sha256": config_fingerprint(cfg), "pf": pf,
                    "budget": "volume", "hyperparameters": cfg.method}))
            else:
                continue
            runs.say(f"BAR PF {pf}: V x{bar_runs[-1]['v_factor']:.2f} (target {pf}), "
                     f"F x{bar_runs[-1]['f_factor']:.1f}, accuracy {100 * bar_runs[-1]['accuracy']:.2f}%")
    # sensitivity ----------------------------------------------------------------------------------
    if "sensitivity" in parts:
        for pf in SETTINGS[scale]["sensitivity_factors"]:
            rng = np.random.default_rng([2019, pf])  # a budget's draws do not depend on the other budgets'
            base = load_config("bar_wrn_bar", scale, overrides={"budget": {"factor": pf}})
            for i in range(SETTINGS[scale]["sensitivity_runs"]):
                hp = sample_hyperparameters(base, rng)
                over = {"train": {"seed": i + 1},
                        "stages": {"finetune": {"optim": {"lr": hp["optim.lr"],
                                                          "weight_decay": hp["optim.weight_decay"]}}}}
                for key, v in hp.items():  # "method.lambda" -> {"method": {"lambda": v}}
                    section, name = key.split(".")
                    over = deep_merge(over, {section: {name: v}})
                # the same optimiser draws apply to the fine-tuning stage (above)
                cfg = bar_config(pf, over)
                name, sha = f"sensitivity-v{pf}-{i}", config_fingerprint(cfg)
                reused = earlier.get(runs, name, sha)
                if reused:
                    sensitivity += reused
                    continue
                d = runs.get(name, lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                             f"sensitivity PF {pf} run {i + 1}")
                if d is not None:
                    sensitivity.append(_summarize_pipeline(d, spec, {"method": "BAR", "subrun": name,
                                                                     "config_sha256": sha, "pf": pf, "run": i + 1,
                                                                     "hyperparameters": hp}))
        # the tuned runs count as run 0 of the sensitivity analysis
        factors = set(SETTINGS[scale]["sensitivity_factors"])
        sensitivity = [{**r, "run": 0, "hyperparameters": "tuned"} for r in bar_runs if r["pf"] in factors] + sensitivity
    results = {
        "study": "bar", "scale": scale, "created": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"prunelab experiment bar --scale {scale} --out {out}",
        "model": {"name": tcfg.model.name, **tcfg.model.kwargs},
        "dense": {"volume": count(spec).volume, "macs": count(spec).macs, "flops": count(spec).flops,
                  "gated_tensors": len(spec.tensors), "gates": sum(t.channels for t in spec.tensors)},
        "teacher": {"accuracy": teacher["final"]["test_acc"], "epochs": teacher["epochs"],
                    "weights_sha256": teacher_sha, "metrics": read_metrics(tdir)},
        "reused_subruns": earlier.used,
        "full_active_neurons": active_neurons(spec).to_dict("records"),
        "runs": bar_runs, "baselines": baselines, "sensitivity": sensitivity,
        "data_source": teacher.get("data_source"), "wall_time_s": time.time() - t0,
        "parts": list(parts), "complete": not runs.missing and set(parts) == set(PARTS), "missing": runs.missing,
    }
    written = write_results(results_file, results, runs.say)
    runs.say(f"results written to {written}")
    return results
