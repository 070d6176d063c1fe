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
* ``variants``: Fig. A1 (d), Fix S, Fix k, Channel-wise-ks against the full method, and the generators
  trained with Channel-wise-ks's two-term objective (``full_two_term``: the control that separates the
  parameterisation from the objective);
* ``inputs``: Fig. A1 (e), learnable against fixed generator inputs;
* ``outputs``: the output functions |s| and s^2 (main-paper Fig. 4; recorded, no claim), one seed;
* ``compare``: ``l1`` and PFS at 50 % MACs from the same checkpoint, fine-tuned the same way as DDNP.
* ``rank``: the equal-budget comparison long enough to rank (issue 29): DDNP (a full search), ``l1``,
  network slimming, PFS (gates on the pretrained weights), HRank and CHIP, each at 50 % MACs from the same
  checkpoint, every one fine-tuned with the same longer schedule (``rank_finetune_epochs``: 8 at cpu),
  three seeds each (the search's or gate learning's seed and the fine-tuning seed; ``l1``, HRank and CHIP
  score deterministically, so their three runs share one structure and differ in fine-tuning only). Each
  record keeps the test accuracy after every fine-tuning epoch, for the gap-against-epochs curve and the
  paired comparison (:func:`prunelab.analysis.ddnp.equal_budget`).

Scales:

* ``paper``: ResNet-56 from a 200-epoch checkpoint (G3), p = 0.48, 200 search epochs, 205 fine-tuning
  epochs (§2.6). Needs a GPU.
* ``cpu``: ResNet-20 from the 30-epoch checkpoint (87 %; the ``dense`` sub-run, or a link to
  ``runs/resnet20-30ep``), the ``resnet20_ddnp`` config: p = 0.5, 40 search epochs at generator lr
  3e-3 (400 iterations; R settles by about epoch 20), test accuracy of the masked network on 2,500 test
  images every 2 epochs, held-out accuracy on 1,000 images of the other 95 %; 2 fine-tuning epochs
  (one-cycle, peak lr 0.05) for
  ``full``, ``rho=0``, ``fix_s``, ``fix_k``, ``channelwise`` and the comparison (docs/decisions.md D14).
  Two processes can share the work (``prunelab experiment ddnp --scale cpu --workers 2``, or that
  command without ``--workers`` twice, one thread each; then ``--collect``).
* ``ci``: a few hundred images, a few epochs: mechanics only.

The study is a plan for the study runner (:mod:`.runner`): the ``dense`` sub-run, then the search runs
``<setting>-s<seed>`` (seed-major: every setting gets its first seed before any gets its third) and
the comparison runs ``compare-<method>-s<seed>``, all of which start from ``dense/model.pt``. A search
run's record (:func:`search_record`) keeps its ``result.json``, metrics, widths, finished stages and
the method's per-epoch search log; the results are aggregated from the records alone.
"""

from __future__ import annotations

from pathlib import Path

from .. import models
from ..config import deep_merge, load_config
from ..counting import block_ops_ratio, count
from .runner import Runner, Study, SubRun, default_record, register_study

PARTS = ("dense", "lambda", "rho", "variants", "inputs", "outputs", "compare", "rank")

SCALES = {
    "ci": {"model": "resnet20", "seeds": (0,), "variant_seeds": (0,), "compare_seeds": (0,), "rank_seeds": (0,),
           "rank_finetune_epochs": 1, "lambdas": (0.05, 4.0), "rhos": (0.0, 1.0, 5.0),
           "output_seeds": (0,), "finetune_epochs": 1, "search": {}, "dense_epochs": None},
    "cpu": {"model": "resnet20", "seeds": (0, 1, 2), "variant_seeds": (0, 1, 2), "compare_seeds": (0, 1, 2),
            "rank_seeds": (0, 1, 2), "rank_finetune_epochs": 8, "lambdas": (0.05, 0.5, 4.0), "rhos": (0.0, 1.0, 5.0),
            "output_seeds": (0,), "finetune_epochs": 2, "dense_epochs": 30, "search": {}},
    "paper": {"model": "resnet56", "seeds": (0, 1, 2), "variant_seeds": (0, 1, 2), "compare_seeds": (0, 1, 2),
              "rank_seeds": (0, 1, 2), "rank_finetune_epochs": None, "lambdas": (0.5, 2.0, 4.0, 8.0), "rhos": (0.0, 0.5, 1.0, 2.0, 5.0),
              "output_seeds": (0, 1, 2), "finetune_epochs": None, "search": {}, "dense_epochs": None},
}

# the comparison methods: (method, config, extra overrides)
COMPARE = (("l1", "resnet20_l1", {}),
           ("pfs", "resnet20_pfs", {"stages": {"finetune": {"reinit": False, "data": {"holdout": 0}}}}))


# the ranking comparison: (method, config, extra overrides); slimming's sparsity training is its config's
# short learn stage on the pretrained network
RANK = (("ddnp", "resnet20_ddnp", {}),
        ("l1", "resnet20_l1", {}),
        ("slimming", "resnet20_slimming", {}),
        ("pfs", "resnet20_pfs", {"stages": {"finetune": {"reinit": False, "data": {"holdout": 0}}}}),
        ("hrank", "resnet20_hrank", {}),
        ("chip", "resnet20_chip", {}))


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
    # the control of panel (d): the generators trained with Channel-wise-ks's two-term objective (D13), so that
    # the comparison with Channel-wise-ks changes the parameterisation only (issue 29)
    out["full_two_term"] = {"part": ("variants",), "method": {"objective": "two_term"}, "seeds": s["variant_seeds"],
                            "finetune": True}
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


def _search_runs(scale: str, parts: tuple) -> list[tuple]:
    """``(setting, seed, its settings entry)`` of the search runs of ``parts``, seed-major (every setting
    gets its first seed before any gets its third)."""
    s = SCALES[scale]
    wanted = [(name, st) for name, st in settings(scale).items() if set(st["part"]) & set(parts)]
    return [(name, seed, st) for seed in s["seeds"] for name, st in wanted if seed in st["seeds"]]


def _compare_runs(scale: str, parts: tuple) -> list[tuple]:
    """``(method, config, extra overrides, seed)`` of the comparison runs (none without ``compare``)."""
    if "compare" not in parts:
        return []
    return [(method, config, extra, seed) for seed in SCALES[scale]["compare_seeds"] for method, config, extra in COMPARE]


def _rank_runs(scale: str, parts: tuple) -> list[tuple]:
    """``(method, config, extra overrides, seed)`` of the ranking comparison (none without ``rank``)."""
    if "rank" not in parts:
        return []
    # the claim's pair (DDNP, l1) runs over every seed first, then slimming and PFS, then hrank and chip
    # (context rows): a study cut short across sessions has the claim's n first
    groups = (RANK[:2], RANK[2:4], RANK[4:])
    return [(m, c, e, seed) for group in groups for seed in SCALES[scale]["rank_seeds"] for m, c, e in group]


def _rank_finetune(s: dict) -> dict:
    if s["rank_finetune_epochs"] is None:  # the config's own (paper) schedule
        return {}
    return {"train": {"epochs": s["rank_finetune_epochs"]}, "optim": {"lr": 0.05},
            "schedule": {"name": "onecycle", "warmup": 0.15}}


def rank_row(rec: dict, method: str, seed: int, spec, layers: list[str]) -> dict:
    """The row of one ranking-comparison run: :func:`compare_row` and the test accuracy after every
    fine-tuning epoch (from its metrics log)."""
    row = compare_row(rec, method, seed, spec, layers)
    row["finetune_curve"] = [m["test_acc"] for m in rec.get("metrics", [])
                             if m.get("stage") == "finetune" and m.get("test_acc") is not None]
    return row


def _layers(scale: str):
    """``(spec, layers)``: the study model's description and the names of its prunable mid tensors."""
    spec = models.describe(models.create(SCALES[scale]["model"]))
    return spec, [t.name for t in spec.select("mid")]


# ---------------------------------------------------------------------------------------------------
# records (what is kept of a finished sub-run) and the rows made from them


def search_record(run: Path) -> dict:
    """The record of one finished DDNP run directory: :func:`~.runner.default_record` (``result.json``,
    metrics, widths) with the stages it finished (``pipeline.json``) and the method's per-epoch search
    log (R, k, abar, widths, accuracies: its state in ``learn.pt``)."""
    import torch

    from ..utils import read_json

    state = torch.load(run / "learn.pt", map_location="cpu", weights_only=True).get("method_state", {})
    return {**default_record(run), "stages_done": list(read_json(run / "pipeline.json").get("done", [])),
            "search_log": list(state.get("log", []))}


def _epochs(rec: dict) -> list[dict]:
    """The search log of one run, epoch by epoch: the trainer's loss terms and accuracies merged with
    the method's R, k, abar and widths."""
    metrics = {m["epoch"]: m for m in rec["metrics"] if m.get("stage") == "learn"}
    rows = []
    for r in rec["search_log"]:
        m = metrics.get(r["epoch"], {})
        rows.append({"epoch": r["epoch"], "ce": m.get("ce"), "resource": m.get("resource"),
                     "alignment": m.get("alignment"), "loss": m.get("train_loss"), "R_soft": r.get("R_soft"),
                     "R_hard": r["R_hard"], "k": [round(v, 5) for v in r["k"]],
                     "abar": [round(v, 5) for v in r.get("abar", [])], "widths": r["widths"],
                     "test_acc": r.get("test_acc"), "val_acc": r.get("val_acc")})
    return rows


def search_row(rec: dict, spec, layers: list[str]) -> dict:
    """The row of one DDNP run (from its :func:`search_record`): accuracies at every stage boundary, the
    extracted widths, their costs (counted again from the widths), and the per-epoch search log."""
    res = rec["result"]
    widths = {n: rec["widths"][n] for n in layers}
    rep = res["budget_report"]
    return {"dense_test_acc": res["dense_test_acc"], "masked_test_acc": res["pruned_test_acc_before_finetune"],
            "extracted_test_acc": res.get("extracted_test_acc"),
            "finetuned_test_acc": res["final_test_acc"] if "finetune" in rec["stages_done"] else None,
            "widths": [widths[n] for n in layers], "macs": float(count(spec, widths=widths).macs),
            "R_hard": block_ops_ratio(spec, widths), "R_soft_last": rep.get("R_soft_last_epoch"), "p": rep["p"],
            "selection": rep.get("selection"), "epochs": _epochs(rec), "wall_time_s": res.get("wall_time_s")}


def summarize_run(run: Path, spec, layers: list[str]) -> dict:
    """The row of one finished DDNP run directory (:func:`search_row` of its :func:`search_record`)."""
    return search_row(search_record(Path(run)), spec, layers)


def compare_row(rec: dict, method: str, seed: int, spec, layers: list[str]) -> dict:
    """The row of one comparison run (``l1`` or PFS at 50 % MACs) from its record."""
    res = rec["result"]
    widths = {n: rec["widths"][n] for n in layers}
    return {"method": method, "seed": seed, "dense_test_acc": res["dense_test_acc"],
            "pruned_test_acc": res["pruned_test_acc_before_finetune"], "finetuned_test_acc": res["final_test_acc"],
            "widths": [widths[n] for n in layers], "macs": float(count(spec, widths=widths).macs),
            "R_hard": block_ops_ratio(spec, widths), "rule": res["budget_report"].get("rule"),
            # the weights it started from (None: a run from before this was recorded)
            "init_weights_sha256": res.get("init_weights_sha256")}


def dense_record(run_dir: Path) -> dict:
    """:func:`~.runner.default_record` of the dense checkpoint with its weights fingerprint
    (``weights_sha256``): every run that starts from it records the same fingerprint, so a comparison
    across sessions (where the checkpoint was trained again) can be checked to share the very weights."""
    from ..train.trainer import weights_fingerprint

    return {**default_record(run_dir), "weights_sha256": weights_fingerprint(Path(run_dir) / "model.pt")}


# ---------------------------------------------------------------------------------------------------
# the study


@register_study("ddnp")
class DDNPStudy(Study):
    """The DDNP study as a plan: the dense checkpoint, the searches of every setting and seed, and the
    equal-budget comparison with ``l1`` and PFS; all start from the dense checkpoint."""

    parts = PARTS

    def subruns(self, scale: str, parts: tuple) -> list[SubRun]:
        s = SCALES[scale]
        prog = {"train": {"progress": False}}
        dense_over = {"model": {"name": s["model"]}}
        if s["dense_epochs"]:
            dense_over["train"] = {"epochs": s["dense_epochs"]}
        subs = [SubRun("dense", "train", lambda deps: load_config(s["model"], scale, overrides=deep_merge(prog, dense_over)),
                       part="dense", label="dense checkpoint", summarize=dense_record)]

        def init(deps) -> dict:
            return {"stages": {"pretrain": {"init_from": str(deps.dir("dense") / "model.pt")}}}

        for name, seed, st in _search_runs(scale, parts):
            subs.append(SubRun(
                f"{name}-s{seed}", "pipeline",
                lambda deps, seed=seed, st=st: load_config("resnet20_ddnp", scale, overrides=deep_merge(
                    deep_merge(prog, s["search"]), deep_merge(init(deps), {
                        "model": {"name": s["model"]}, "method": st["method"], "train": {"seed": seed},
                        "stages": {"finetune": _finetune(s, st["finetune"])}}))),
                needs=("dense",), part=st["part"][0] if len(st["part"]) == 1 else ",".join(st["part"]),
                label=f"DDNP {name} seed {seed}", summarize=search_record))
        def at_half_macs(part, method, config, extra, seed, finetune, label):
            """A method at 50 % MACs from the dense checkpoint with the given fine-tuning schedule."""
            return SubRun(
                f"{part}-{method}-s{seed}", "pipeline",
                lambda deps: load_config(config, scale, overrides=deep_merge(
                    prog, deep_merge(deep_merge(init(deps), extra), {
                        "model": {"name": s["model"]}, "train": {"seed": seed},
                        "budget": {"metric": "macs", "keep": 0.5, "reduction": None},
                        "stages": {"finetune": finetune}}))),
                needs=("dense",), part=part, label=label)

        for method, config, extra, seed in _compare_runs(scale, parts):
            subs.append(at_half_macs("compare", method, config, extra, seed, _finetune(s, True), f"{method} seed {seed}"))
        for method, config, extra, seed in _rank_runs(scale, parts):
            subs.append(at_half_macs("rank", method, config, extra, seed, _rank_finetune(s),
                                     f"rank: {method} seed {seed}"))
        return subs

    def aggregate(self, scale: str, parts: tuple, records: dict, out: Path) -> dict:
        s = SCALES[scale]
        spec, layers = _layers(scale)
        table = settings(scale)
        study = {"study": "ddnp", "scale": scale, "model": s["model"], "layers": layers,
                 "channels": [spec.tensor(n).channels for n in layers], "dense_macs": float(count(spec).macs),
                 "command": f"prunelab experiment ddnp --scale {scale} --out {out}", "parts": list(parts),
                 "settings": {k: {**v, "part": list(v["part"]), "seeds": list(v["seeds"])} for k, v in table.items()},
                 "scale_settings": {k: v for k, v in s.items() if k != "search"}, "search_overrides": s["search"],
                 "runs": {}, "compare": {}, "rank": {}}
        dense = records.get("dense")
        if dense is not None:
            study["dense"] = {"test_acc": dense["result"]["final"]["test_acc"], "epochs": dense["result"]["epochs"],
                              "checkpoint": str(Path(out) / "dense" / "model.pt"),
                              "weights_sha256": dense.get("weights_sha256")}
        # finished searches and comparisons are aggregated even when the dense record is damaged or gone
        # (they finished from its checkpoint earlier): one bad sub-run never hides the others
        for name, seed, st in _search_runs(scale, parts):
            rec = records.get(f"{name}-s{seed}")
            if rec is None:
                continue
            row = search_row(rec, spec, layers)
            study["p"] = row["p"]
            study["runs"][f"{name}/s{seed}"] = {"setting": name, "seed": seed, "options": st["method"], **row}
        for method, _, _, seed in _compare_runs(scale, parts):
            rec = records.get(f"compare-{method}-s{seed}")
            if rec is not None:
                study["compare"][f"{method}/s{seed}"] = compare_row(rec, method, seed, spec, layers)
        for method, _, _, seed in _rank_runs(scale, parts):
            rec = records.get(f"rank-{method}-s{seed}")
            if rec is not None:
                study["rank"][f"{method}/s{seed}"] = rank_row(rec, method, seed, spec, layers)
        # filled in by the runner (listed here to keep the results file's key order)
        study.update({"missing": [], "busy": [], "complete": False, "wall_time_s": None, "created": None})
        return study


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False,
        executor=None, shard=None) -> dict:
    """Run (or continue) the DDNP study at ``scale`` on the study runner (:mod:`.runner`); writes
    ``results/ddnp_<scale>.json``. ``collect``: train nothing, aggregate the finished sub-runs and list
    the missing ones."""
    return Runner("ddnp", scale, out, parts=parts, results=results, collect=collect, quiet=quiet, executor=executor,
                  shard=shard).run()


def finetune_schedule(scale: str) -> dict:
    """The fine-tuning overrides every fine-tuned run of the study shares (DDNP, l1 and PFS alike)."""
    return _finetune(SCALES[scale], True)


__all__ = ["run", "settings", "summarize_run", "search_record", "search_row", "compare_row", "finetune_schedule",
           "DDNPStudy", "PARTS", "SCALES"]
