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
  B18; about 4 hours of CPU here, two processes can share it: ``prunelab experiment bar --scale cpu
  --workers 2``, or that command without ``--workers`` twice, one thread each; then ``--collect``).
* ``ci``: one block per stage, 200 training images, one or two epochs per phase, one sensitivity
  draw at PF 2: mechanics only.

The iterative baselines (supplement §3.2) start from the trained teacher and remove 50 % of every
gated tensor per step (the contributors of each residual trunk share one mask, L6), retraining after
each step with BAR's fine-tuning optimiser, which gives V-factors 2, 4, 8, 16 and F ~ V^2. They run
distilled from the teacher like BAR (the comparison) and, for Random, without distillation (a second row).
Their shrink rules are the named entries of :data:`prunelab.workflows.iterative.SHRINK_RULES` (``random``;
``wm``: the L1 score of :mod:`prunelab.methods.l1`; ``vq`` and ``id``: the block middles chosen and the
next layer rewritten as :mod:`prunelab.methods.vq` and :mod:`prunelab.methods.interp_decomp` do, the
other tensors halved by WM's rule, docs/decisions.md L29).

The study is a plan for the study runner (:mod:`.runner`): ``teacher`` (dense training); ``bar-v<PF>``
(pipelines warm-started from and distilled from ``teacher/model.pt``; PF 4 and 8, the factors the claims
compare with the baselines, come first, so an interrupted cpu study has the comparison before the
rest of the sweep); the baseline chains ``random-kd``, ``random`` (and at paper scale ``wm-kd``,
``wm``), each one ``iterative`` sub-run of four steps (``<chain>/step<k>``); the remaining ``bar-v<PF>``;
"BAR (F-trained)" ``bar-f<F>`` (part ``flops``: the same BAR with its budget on FLOPs, F-factors 4, 16, 64,
256; rows under ``flop_runs``); the sensitivity draws ``sensitivity-v<PF>-<i>``. A session can end on a fresh machine with ``runs/``
gone; only the results file is committed: the runner takes every sub-run it no longer has from the
committed results when its fingerprint (config, method code, options and the teacher's fingerprint)
matches, and the results are aggregated from the sub-runs' records alone. The results also keep the
teacher's weights fingerprint (``teacher.weights_sha256``) and each row's ``config_sha256`` (its resolved
config without paths and progress bars).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import models
from ..analysis.bar import active_neurons, regular_vs_mixed
from ..config import deep_merge, load_config
from ..counting import count
from ..errors import ConfigError
from ..pruning.structure import Structure
from .runner import Deps, Runner, Study, SubRun, default_record, register_study

PRUNING_FACTORS = (2, 4, 8, 16)
# "BAR (F-trained)" (supplement §6.1, Figs. 6 and 8): BAR with its budget on FLOPs instead of activation volume,
# at these FLOP factors (the iterative baselines' F ~ V^2 of V factors 2..16)
FLOP_FACTORS = (4, 16, 64, 256)
# baselines: (shrink rule, distilled from the teacher like BAR); the undistilled rows are kept as a
# second reading of the comparison (supplement §3.2 does not say whether its baselines distil)
SETTINGS = {
    "ci": {"sensitivity_runs": 1, "sensitivity_factors": (2,), "baseline_epochs": 1, "flop_factors": (4,),
           "budgetless_factors": (4,), "ib_probes": 2,
           "baselines": (("random", True), ("random", False)), "warm_start": True},
    "cpu": {"sensitivity_runs": 3, "sensitivity_factors": (4, 8), "baseline_epochs": 3, "flop_factors": FLOP_FACTORS,
            "budgetless_factors": PRUNING_FACTORS, "ib_probes": 4,
            # WM (the l1 criterion, its own row), VQ and ID (next-layer reconstruction, L29), distilled like BAR
            # (issue 30); added after the committed results
            "baselines": (("random", True), ("random", False), ("wm", True), ("vq", True), ("id", True)),
            "warm_start": True},
    "paper": {"sensitivity_runs": 10, "sensitivity_factors": PRUNING_FACTORS, "baseline_epochs": 50,
              "flop_factors": FLOP_FACTORS, "budgetless_factors": PRUNING_FACTORS, "ib_probes": 6,
              "baselines": (("random", True), ("random", False), ("wm", True), ("wm", False), ("vq", True), ("id", True)),
              "warm_start": False},
}
PARTS = ("teacher", "bar", "baselines", "flops", "morphnet", "ib", "sensitivity")
# IB's bisection over kl_weight (L30): each probe multiplies the weight by this factor while every probe so
# far prunes too little (divides while every one prunes too much), then halves the bracket in log space
IB_STEP = 10.0
# the factors the claims compare against the baselines: planned before the baselines
FIRST_FACTORS = (4, 8)
# the configs' progress bars (not part of any fingerprint): off, the runner's tasks run quietly
PROGRESS = {"train": {"progress": False}}

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


def config_fingerprint(cfg, **extra) -> str:
    """sha256 of a sub-run's resolved config, without what does not change its numbers: the paths of the
    teacher and warm-start weights (the teacher's identity is its weights fingerprint, recorded beside)
    and whether progress bars show. ``extra``: what else defines the sub-run (a baseline's shrink rule).
    Recorded in every row as ``config_sha256`` (the runner's own reuse goes by its fingerprints)."""
    d = cfg.to_dict()
    d["train"].pop("progress", None)
    d.get("method", {}).pop("teacher", None)
    d.get("stages", {}).get("pretrain", {}).pop("init_from", None)
    return hashlib.sha256(json.dumps({**d, **extra}, sort_keys=True, default=str).encode()).hexdigest()


BASELINE_NAMES = {"random": "Random", "wm": "WM", "vq": "VQ", "id": "ID"}  # the supplement's row names


def baseline_label(kind: str, kd: bool) -> str:
    """Row label of an iterative baseline: "Random" / "WM" / "VQ" / "ID", with or without distillation."""
    return BASELINE_NAMES[kind] + (" + KD" if kd else " (no KD)")


def baseline_subrun(kind: str, kd: bool) -> str:
    """Sub-run folder of an iterative baseline chain: ``random-kd``, ``random``, ``wm-kd``, ``vq-kd``, ..."""
    return kind + ("-kd" if kd else "")


# ---------------------------------------------------------------------------------------------------
# configs and options of the sub-runs (built from the teacher's folder only: ``deps.dir``)


def teacher_config(scale: str):
    return load_config("bar_wrn_teacher", scale, overrides=PROGRESS)


def _teacher_weights(deps: Deps) -> Path:
    return deps.dir("teacher") / "model.pt"


def _warm(scale: str, deps: Deps) -> dict:
    return {"stages": {"pretrain": {"init_from": str(_teacher_weights(deps))}}} if SETTINGS[scale]["warm_start"] else {}


def bar_config(scale: str, deps: Deps, pf: int, extra: dict | None = None, metric: str = "volume"):
    """BAR at pruning factor ``pf`` of ``metric`` (``volume``, the tuned runs; ``flops``, "BAR (F-trained)"),
    distilled from (and, where the scale says so, warm-started from) the teacher; ``extra``: further
    overrides (a sensitivity draw). The F-trained runs share every other setting with the volume runs."""
    over = deep_merge(PROGRESS, {"budget": {"metric": metric, "factor": pf},
                                 "method": {"teacher": str(_teacher_weights(deps))}})
    return load_config("bar_wrn_bar", scale, overrides=deep_merge(deep_merge(over, _warm(scale, deps)), extra or {}))


def baseline_config(scale: str):
    """The retraining config of an iterative baseline: BAR's fine-tuning optimiser (Adam 1e-3, x0.1 for
    the last epoch), whatever recipe trained the teacher."""
    epochs = SETTINGS[scale]["baseline_epochs"]
    return load_config("bar_wrn_teacher", scale, overrides=deep_merge(PROGRESS, {
        "train": {"epochs": epochs}, "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 5.0e-4},
        "schedule": {"name": "multistep", "warmup": 0, "milestones": [max(1, epochs - 1)], "gamma": 0.1}}))


def baseline_options(kind: str, kd: bool, deps: Deps) -> dict:
    """The ``iterative`` task options of a baseline chain (:func:`prunelab.workflows.iterative.run_iterative`):
    shrink rule ``kind`` for one step per pruning factor from the teacher's weights; with ``kd`` every
    retraining distils from the teacher with BAR's T and alpha, as BAR's own phases do."""
    name = baseline_subrun(kind, kd)
    opts = {"shrink": kind, "steps": len(PRUNING_FACTORS), "seed": 0, "init_from": str(_teacher_weights(deps)),
            "stage": name, "stage_names": [f"{name}{pf}" for pf in PRUNING_FACTORS]}
    if kd:
        from ..methods import create

        o = create("bar").options
        opts.update({"teacher": str(_teacher_weights(deps)), "kd_temperature": o.kd_temperature,
                     "kd_alpha": o.kd_alpha})
    return opts


def budgetless_config(method: str, scale: str, deps: Deps, pf: int, extra: dict | None = None):
    """IB or MorphNet (``bar_wrn_ib`` / ``bar_wrn_morphnet``) at V-factor ``pf`` in BAR's protocol: warm-started
    from the teacher where the scale says so (as BAR), fine-tuned distilled from the teacher with BAR's T and
    alpha (``stages.finetune.kd``), so that only the pruning method differs from BAR's runs."""
    from ..methods import create

    o = create("bar").options
    kd = {"teacher": str(_teacher_weights(deps)), "temperature": o.kd_temperature, "alpha": o.kd_alpha}
    over = deep_merge(PROGRESS, {"budget": {"metric": "volume", "factor": pf}, "stages": {"finetune": {"kd": kd}}})
    return load_config(f"bar_wrn_{method}", scale, overrides=deep_merge(deep_merge(over, _warm(scale, deps)), extra or {}))


def v_factor_of(rec: dict, spec) -> float:
    """The V-factor (V0 / V, recounted) of a finished pipeline from its record's widths."""
    return float(count(spec).volume) / float(count(spec, widths=rec["widths"]).volume)


def next_kl_weight(history: list[tuple[float, float]], target: float, start: float, step: float = IB_STEP) -> float:
    """The next ``kl_weight`` of IB's bisection (L30) from the probes so far, ``[(kl_weight, V-factor), ...]``:
    ``start`` first; while every probe pruned less than ``target`` (more), the largest (smallest) weight times
    (over) ``step``; once the target is bracketed, the geometric mean of the tightest bracket (a larger weight
    prunes more)."""
    if not history:
        return float(start)
    below = [w for w, f in history if f < target]
    above = [w for w, f in history if f >= target]
    if not above:
        return float(max(below) * step)
    if not below:
        return float(min(above) / step)
    hi = min(above)
    lower = [w for w in below if w < hi]
    if not lower:  # not monotone: every weight that pruned too little is larger than one that pruned enough
        return float(hi / step)
    return float(np.sqrt(max(lower) * hi))


def best_probe(history: list[tuple[float, float]], target: float) -> float:
    """The weight of the probe whose V-factor is nearest ``target`` in log scale (ties: the smaller weight)."""
    return min(history, key=lambda h: (abs(np.log(h[1] / target)), h[0]))[0]


def _ib_history(scale: str, deps: Deps, pf: int, upto: int) -> list[tuple[float, float]]:
    cfg = teacher_config(scale)
    spec = models.describe(models.create(cfg.model.name, **cfg.model.kwargs))
    out = []
    for j in range(upto):
        w = _ib_weight(scale, deps, pf, j)
        out.append((w, v_factor_of(deps.record(f"ib-v{pf}-probe{j}"), spec)))
    return out


def _ib_weight(scale: str, deps: Deps, pf: int, i: int) -> float:
    """kl_weight of IB's probe ``i`` at V-factor ``pf`` (from the probes before it)."""
    start = float(load_config("bar_wrn_ib", scale).method["kl_weight"])
    return next_kl_weight(_ib_history(scale, deps, pf, i), pf, start)


def ib_probe_config(scale: str, deps: Deps, pf: int, i: int):
    """Probe ``i`` of IB's bisection at ``pf``: the learn stage and the hard prune only (no fine-tuning)."""
    return budgetless_config("ib", scale, deps, pf, {"method": {"kl_weight": _ib_weight(scale, deps, pf, i)},
                                                      "stages": {"finetune": {"enabled": False}}})


def ib_final_config(scale: str, deps: Deps, pf: int):
    """IB at ``pf`` with the probes' best kl_weight, fine-tuned (the row of the comparison)."""
    history = _ib_history(scale, deps, pf, SETTINGS[scale]["ib_probes"])
    return budgetless_config("ib", scale, deps, pf, {"method": {"kl_weight": best_probe(history, pf)}})


def sensitivity_draws(scale: str) -> list[tuple]:
    """``(pf, i, hyper-parameters, overrides)`` of every sensitivity run at ``scale``; each budget's draws
    come from their own generator (``[2019, pf]``), so they do not depend on the other budgets'."""
    out = []
    for pf in SETTINGS[scale]["sensitivity_factors"]:
        rng = np.random.default_rng([2019, pf])
        base = load_config("bar_wrn_bar", scale, overrides={"budget": {"factor": pf}})
        for i in range(SETTINGS[scale]["sensitivity_runs"]):
            hp = sample_hyperparameters(base, rng)
            # the same optimiser draws apply to the fine-tuning stage
            over = {"train": {"seed": i + 1},
                    "stages": {"finetune": {"optim": {"lr": hp["optim.lr"], "weight_decay": hp["optim.weight_decay"]}}}}
            for key, v in hp.items():  # "method.lambda" -> {"method": {"lambda": v}}
                section, name = key.split(".")
                over = deep_merge(over, {section: {name: v}})
            out.append((pf, i, hp, over))
    return out


def _bar_factors(parts: tuple) -> tuple[tuple, tuple]:
    """The BAR factors planned before the baselines and those planned after them."""
    if "bar" not in parts:
        return (), ()
    first = tuple(pf for pf in FIRST_FACTORS if pf in PRUNING_FACTORS)
    return first, tuple(pf for pf in PRUNING_FACTORS if pf not in first)


# ---------------------------------------------------------------------------------------------------
# records (what is kept of a finished sub-run)


def teacher_record(run_dir: Path) -> dict:
    """:func:`~.runner.default_record` of the teacher with its weights fingerprint (``weights_sha256``)."""
    from ..train.trainer import weights_fingerprint

    return {**default_record(run_dir), "weights_sha256": weights_fingerprint(Path(run_dir) / "model.pt")}


def pipeline_record(run_dir: Path) -> dict:
    """The record of a finished BAR run: its ``result.json``, structure, metrics and the BAR trace
    (cost, bound, barrier and L_HC against the step) thinned to at most 400 points."""
    from ..runfiles import read_metrics
    from ..utils import read_json

    run_dir = Path(run_dir)
    trace = None
    tp = run_dir / "arrays" / "bar_trace.npy"
    if tp.exists():
        t = np.load(tp)
        keep = np.unique(np.linspace(0, len(t) - 1, min(len(t), 400)).astype(int))
        trace = {k: t[keep, j].tolist() for j, k in enumerate(("step", "cost", "bound", "barrier", "l_hc"))}
    return {"result": read_json(run_dir / "result.json"),
            "structure": Structure.load(run_dir / "structure.json").to_dict(), "trace": trace,
            "metrics": read_metrics(run_dir)}


def baseline_record(run_dir: Path) -> dict:
    """The record of a finished baseline chain: its ``result.json`` and, per step, the structure, test
    accuracy before and after retraining and metrics (:func:`prunelab.workflows.iterative.read_steps`)."""
    from ..utils import read_json
    from ..workflows.iterative import read_steps

    return {"result": read_json(Path(run_dir) / "result.json"),
            "steps": [{**r, "structure": r["structure"].to_dict()} for r in read_steps(run_dir)]}


# ---------------------------------------------------------------------------------------------------
# rows (made from records only)


def bar_row(rec: dict, spec, extra: dict) -> dict:
    """The row of one BAR run (a tuned budget or a sensitivity draw) from its :func:`pipeline_record`."""
    res = rec["result"]
    structure = Structure.from_dict(rec["structure"])
    full, pruned = count(spec), count(spec, structure)
    rep = res.get("budget_report", {})
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
        "trace": rec["trace"], "metrics": rec["metrics"], "wall_time_s": res.get("wall_time_s"),
    }


def baseline_rows(rec: dict, kind: str, kd: bool, spec, config_sha: str) -> list[dict]:
    """One row per finished step (pruning factor) of a baseline chain, from its :func:`baseline_record`."""
    full = count(spec)
    rows = []
    for step, pf in zip(rec["steps"], PRUNING_FACTORS):
        structure = Structure.from_dict(step["structure"])
        c = count(spec, structure)
        rows.append({"method": baseline_label(kind, kd), "subrun": baseline_subrun(kind, kd),
                     "config_sha256": config_sha, "kind": kind, "kd": kd, "pf": pf,
                     "v_factor": full.volume / c.volume, "f_factor": full.macs / c.macs, "accuracy": step["accuracy"],
                     "accuracy_before_finetune": step["accuracy_before_finetune"],
                     "alive": structure.counts(), "structure": structure.to_dict(), "metrics": step["metrics"]})
    return rows


# ---------------------------------------------------------------------------------------------------
# the study


@register_study("bar")
class BARStudy(Study):
    """The BAR study as a plan: the teacher, BAR at every pruning factor, the iterative baselines and the
    sensitivity draws; everything after the teacher starts from (or distils from) its weights."""

    parts = PARTS

    def subruns(self, scale: str, parts: tuple) -> list[SubRun]:
        # the teacher is planned whatever the parts: every other sub-run starts from it
        subs = [SubRun("teacher", "train", lambda deps: teacher_config(scale), part="teacher", label="teacher",
                       summarize=teacher_record)]
        first, rest = _bar_factors(parts)

        def bar(pf):
            return SubRun(f"bar-v{pf}", "pipeline", lambda deps: bar_config(scale, deps, pf), needs=("teacher",),
                          part="bar", label=f"BAR PF {pf}", summarize=pipeline_record)

        subs += [bar(pf) for pf in first]
        if "baselines" in parts:
            for kind, kd in SETTINGS[scale]["baselines"]:
                subs.append(SubRun(baseline_subrun(kind, kd), "iterative", lambda deps: baseline_config(scale),
                                   options=lambda deps, kind=kind, kd=kd: baseline_options(kind, kd, deps),
                                   needs=("teacher",), part="baselines", label=f"{baseline_label(kind, kd)} baseline",
                                   summarize=baseline_record))
        subs += [bar(pf) for pf in rest]
        if "morphnet" in parts:  # MorphNet reaches each budget by its own width expansion (L20)
            for pf in SETTINGS[scale]["budgetless_factors"]:
                subs.append(SubRun(f"morphnet-v{pf}", "pipeline",
                                   lambda deps, pf=pf: budgetless_config("morphnet", scale, deps, pf),
                                   needs=("teacher",), part="morphnet", label=f"MorphNet PF {pf}",
                                   summarize=pipeline_record))
        if "ib" in parts:  # IB has no budget: probes bisect kl_weight, then the best one is fine-tuned (L30)
            from .runner import stage_epochs

            n = SETTINGS[scale]["ib_probes"]
            nowhere = Deps(Path("runs"), {})  # only for the epochs --plan shows before a probe's config exists
            for pf in SETTINGS[scale]["budgetless_factors"]:
                probes = tuple(f"ib-v{pf}-probe{i}" for i in range(n))
                probe_epochs = stage_epochs(ib_probe_config(scale, nowhere, pf, 0), "pipeline")
                for i in range(n):
                    subs.append(SubRun(probes[i], "pipeline", lambda deps, pf=pf, i=i: ib_probe_config(scale, deps, pf, i),
                                       needs=("teacher",) + probes[:i], inputs=("teacher",), part="ib",
                                       label=f"IB PF {pf} probe {i + 1}/{n}", epochs=probe_epochs))
                subs.append(SubRun(f"ib-v{pf}", "pipeline", lambda deps, pf=pf: ib_final_config(scale, deps, pf),
                                   needs=("teacher",) + probes, inputs=("teacher",), part="ib", label=f"IB PF {pf}",
                                   summarize=pipeline_record,
                                   epochs=stage_epochs(budgetless_config("ib", scale, nowhere, pf), "pipeline")))
        if "flops" in parts:
            for ff in SETTINGS[scale]["flop_factors"]:
                subs.append(SubRun(f"bar-f{ff}", "pipeline", lambda deps, ff=ff: bar_config(scale, deps, ff, metric="flops"),
                                   needs=("teacher",), part="flops", label=f"BAR (F-trained) F-factor {ff}",
                                   summarize=pipeline_record))
        if "sensitivity" in parts:
            for pf, i, _, over in sensitivity_draws(scale):
                subs.append(SubRun(f"sensitivity-v{pf}-{i}", "pipeline",
                                   lambda deps, pf=pf, over=over: bar_config(scale, deps, pf, over), needs=("teacher",),
                                   part="sensitivity", label=f"sensitivity PF {pf} run {i + 1}",
                                   summarize=pipeline_record))
        return subs

    def aggregate(self, scale: str, parts: tuple, records: dict, out: Path) -> dict:
        teacher = records.get("teacher")
        if teacher is None:
            raise ConfigError(f"the teacher sub-run {Path(out) / 'teacher'} has not finished and the committed "
                              f"results hold no record of it: nothing to aggregate (run the study without --collect "
                              f"to train it)")
        deps = Deps(Path(out), {})  # configs are rebuilt for the rows' settings; only paths come from deps
        tcfg = teacher_config(scale)
        spec = models.describe(models.create(tcfg.model.name, **tcfg.model.kwargs))
        dense = count(spec)
        bar_runs, baselines, sensitivity, flop_runs = [], [], [], []
        if "baselines" in parts:
            for kind, kd in SETTINGS[scale]["baselines"]:
                rec = records.get(baseline_subrun(kind, kd))
                if rec is not None:
                    baselines += baseline_rows(rec, kind, kd, spec,
                                               config_fingerprint(baseline_config(scale), shrink=kind, kd=kd))
        if "bar" in parts:
            for pf in PRUNING_FACTORS:
                rec = records.get(f"bar-v{pf}")
                if rec is not None:
                    cfg = bar_config(scale, deps, pf)
                    bar_runs.append(bar_row(rec, spec, {
                        "method": "BAR", "subrun": f"bar-v{pf}", "config_sha256": config_fingerprint(cfg), "pf": pf,
                        "budget": "volume", "hyperparameters": cfg.method}))
        for method, label in (("morphnet", "MorphNet"), ("ib", "IB")):
            if method not in parts:
                continue
            for pf in SETTINGS[scale]["budgetless_factors"]:
                rec = records.get(f"{method}-v{pf}")
                if rec is None:
                    continue
                row = bar_row(rec, spec, {"method": label, "subrun": f"{method}-v{pf}", "pf": pf, "kind": method,
                                          "kd": True, "budget": "volume"})
                if method == "ib":  # the bisection behind the row: every probe's weight and V-factor
                    row["probes"] = [{"kl_weight": w, "v_factor": f} for w, f in _ib_history(
                        scale, Deps(Path(out), records), pf, SETTINGS[scale]["ib_probes"])]
                    row["hyperparameters"] = {"kl_weight": best_probe([(p["kl_weight"], p["v_factor"])
                                                                        for p in row["probes"]], pf)}
                baselines.append(row)
        if "flops" in parts:
            for ff in SETTINGS[scale]["flop_factors"]:
                rec = records.get(f"bar-f{ff}")
                if rec is not None:
                    cfg = bar_config(scale, deps, ff, metric="flops")
                    flop_runs.append(bar_row(rec, spec, {
                        "method": "BAR (F-trained)", "subrun": f"bar-f{ff}", "config_sha256": config_fingerprint(cfg),
                        "pf": ff, "budget": "flops", "hyperparameters": cfg.method}))
        if "sensitivity" in parts:
            for pf, i, hp, over in sensitivity_draws(scale):
                name = f"sensitivity-v{pf}-{i}"
                rec = records.get(name)
                if rec is not None:
                    sha = config_fingerprint(bar_config(scale, deps, pf, over))
                    sensitivity.append(bar_row(rec, spec, {"method": "BAR", "subrun": name, "config_sha256": sha,
                                                           "pf": pf, "run": i + 1, "hyperparameters": hp}))
            # the tuned runs count as run 0 of the sensitivity analysis
            factors = set(SETTINGS[scale]["sensitivity_factors"])
            sensitivity = [{**r, "run": 0, "hyperparameters": "tuned"} for r in bar_runs if r["pf"] in factors] + sensitivity
        res = teacher["result"]
        # the keys in the order of the results files made before the runner (the runner fills in the
        # ones marked None)
        return {
            "study": "bar", "scale": scale, "created": None, "command": None,
            "model": {"name": tcfg.model.name, **tcfg.model.kwargs},
            "dense": {"volume": dense.volume, "macs": dense.macs, "flops": dense.flops,
                      "gated_tensors": len(spec.tensors), "gates": sum(t.channels for t in spec.tensors)},
            "teacher": {"accuracy": res["final"]["test_acc"], "epochs": res["epochs"],
                        "weights_sha256": teacher["weights_sha256"], "metrics": teacher["metrics"]},
            "reused_subruns": [],
            "full_active_neurons": active_neurons(spec).to_dict("records"),
            "runs": bar_runs, "baselines": baselines, "sensitivity": sensitivity, "flop_runs": flop_runs,
            "data_source": res.get("data_source"), "wall_time_s": None,
            "parts": list(parts), "complete": False, "missing": [],
        }


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False,
        executor=None, shard=None) -> dict:
    """Run (or continue) the BAR study at ``scale`` on the study runner (:mod:`.runner`); writes
    ``results/bar_<scale>.json``. ``collect``: train nothing, aggregate the finished sub-runs (and those
    the committed results hold) and list the missing ones."""
    return Runner("bar", scale, out, parts=parts, results=results, collect=collect, quiet=quiet, executor=executor,
                  shard=shard).run()


__all__ = ["run", "BARStudy", "PARTS", "PRUNING_FACTORS", "SETTINGS", "SENSITIVITY", "SENSITIVITY_WIDTHS",
           "sample_hyperparameters", "config_fingerprint", "baseline_label", "baseline_subrun", "bar_config",
           "baseline_config", "baseline_options", "sensitivity_draws", "FLOP_FACTORS", "budgetless_config",
           "next_kl_weight", "best_probe", "ib_probe_config", "ib_final_config", "v_factor_of", "teacher_record", "pipeline_record",
           "baseline_record", "bar_row", "baseline_rows"]
