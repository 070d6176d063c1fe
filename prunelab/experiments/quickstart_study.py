"""Quickstart study: a dense ResNet-20, then ``l1`` pruning of it to 50 % MACs and a short fine-tune,
and the same pruning budgeted in measured latency.

* ``cpu``: 30 epochs of one-cycle SGD on full CIFAR-10 (the checkpoint every cpu pruning run starts
  from: ``prunelab train resnet20 --set train.epochs=30 --out runs/resnet20-30ep``), then the
  ``resnet20_l1`` cpu run: l1 to 50 % MACs and 8 fine-tuning epochs. ``--out`` folders whose ``dense``
  and ``l1`` entries link to those two runs reuse them.
* ``latency`` (part): ``l1`` with a latency budget (keep 0.7 of the dense network's measured inference
  time at batch 128 on this machine's CPU, predicted from the latency table) against ``l1`` with a
  MACs budget tuned (by bisection on measured latency) to the same measured latency; both fine-tuned
  with the same 8 epochs; their compact networks timed side by side at the end.
* ``ci``: 250 images, 2 + 1 epochs, latency at batch 2 from a coarse quick table (mechanics only).
"""

from __future__ import annotations

from pathlib import Path

from ..config import deep_merge, load_config
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from .runner import Runner, Study, SubRun, register_study

QUIET = {"train": {"progress": False}}

PARTS = ("dense", "l1", "latency")
# 0.7, not 0.5: only the block middles are prunable and the rest of ResNet-20 costs about 40 % of its CPU
# time at batch 128, so keep 0.5 of the latency leaves under 5 % of the MACs (measured here: 1.94 M MACs
# for 44.6 % of the dense latency, an untrainable network); l1 at 50 % MACs measures about 70 %.
LATENCY_KEEP = 0.7
LATENCY = {"ci": {"batch": 2, "repeats": 1, "block_ms": 2.0}, "cpu": {"batch": 128, "repeats": 5, "block_ms": 20.0},
           "paper": {"batch": 128, "repeats": 5, "block_ms": 20.0}}


def _macs_keep_for_latency(net, spec, target_keep: float, batch: int, say) -> dict:
    """The MACs keep ratio whose l1 structure, compacted, measures at ``batch`` the latency ratio (to the
    dense network, timed alongside) closest to ``target_keep``: bisection on the MACs keep ratio."""
    from .. import methods
    from ..pruning.budget import Budget
    from ..pruning.compact import compact
    from ..pruning.latency import measure_latency

    l1 = methods.create("l1")
    lo, hi, best = 0.05, 1.0, None
    for _ in range(8):
        keep = (lo + hi) / 2
        structure, _ = l1.select(net, spec, Budget("macs", keep))
        dense_s, small_s = measure_latency(net, spec.input_size, batch=batch, repeats=3, block_ms=20,
                                           others=(compact(net, structure),))
        ratio = small_s / dense_s
        if best is None or abs(ratio - target_keep) < abs(best["measured_keep"] - target_keep):
            best = {"keep": keep, "measured_s": small_s, "dense_measured_s": dense_s, "measured_keep": ratio,
                    "target_keep": target_keep}
        if ratio > target_keep:
            hi = keep
        else:
            lo = keep
    say(f"MACs keep {best['keep']:.4f} measures {100 * best['measured_keep']:.1f}% of the dense latency "
        f"(target {100 * target_keep:.1f}%)")
    return best


def _dense_config(scale: str):
    return load_config("resnet20", scale, overrides=deep_merge(QUIET, {"train": {"epochs": 30}} if scale == "cpu" else {}))


def _l1_config(scale: str, deps, budget: dict | None = None):
    over = {"stages": {"pretrain": {"init_from": str(deps.dir("dense") / "model.pt")}}}
    if budget is not None:
        over["budget"] = budget
    return load_config("resnet20_l1", scale, overrides=deep_merge(QUIET, over))


def _latency_budget(scale: str) -> dict:
    import torch

    lat = LATENCY[scale]
    return {"metric": "latency", "keep": LATENCY_KEEP, "batch": lat["batch"], "threads": torch.get_num_threads()}


def _dense_net(out: Path):
    from .. import models
    from ..train.trainer import load_weights

    net = models.create("resnet20")
    load_weights(net, out / "dense" / "model.pt")
    return net, models.describe(net)


def _l1_record(run_dir: Path) -> dict:
    """The l1 run's record: its result, metrics and structure, and the dense network's l1 scores (the
    notebook's budget widget re-selects from them)."""
    from .. import methods

    net, spec = _dense_net(run_dir.parent)
    return {"result": read_json(run_dir / "result.json"), "metrics": read_metrics(run_dir),
            "structure": Structure.load(run_dir / "structure.json").to_dict(),
            "scores": methods.create("l1").scores(net, spec)}


def _latency_record(run_dir: Path) -> dict:
    """The latency-budget run's record, with the MACs keep ratio measured to give the same latency (found
    once by bisection and kept in the study folder: the next sub-run's config is built from it)."""
    from ..utils import write_json

    res = read_json(run_dir / "result.json")
    tuned_file = run_dir.parent / "macs-keep-for-equal-latency.json"
    if tuned_file.exists():
        tuned = read_json(tuned_file)
    else:
        net, spec = _dense_net(run_dir.parent)
        tuned = _macs_keep_for_latency(net, spec, res["latency"]["measured_keep"], res["budget"]["batch"], print)
        write_json(tuned_file, tuned)
    return {"result": res, "widths": Structure.load(run_dir / "structure.json").counts(), "tuned_macs_keep": tuned}


def _equal_latency_record(run_dir: Path) -> dict:
    """The MACs-budget run at equal latency; its record also holds the side-by-side timing of the dense
    network and both fine-tuned compact networks (measured here, when the pair is complete)."""
    import torch

    from ..pruning.compact import load_compact
    from ..pruning.latency import latency_table, measure_latency

    out = run_dir.parent
    res = read_json(run_dir / "result.json")
    lat_res = read_json(out / "l1-latency" / "result.json")
    scale = res.get("scale", "cpu")
    lat = LATENCY.get(scale, LATENCY["cpu"])
    net, spec = _dense_net(out)
    threads = torch.get_num_threads()
    table = latency_table("resnet20", {}, batch=lat["batch"], threads=threads, repeats=lat["repeats"],
                          block_ms=lat["block_ms"], say=print, progress=False)
    a, b = load_compact(out / "l1-latency" / "compact"), load_compact(run_dir / "compact")
    dense_s, a_s, b_s = measure_latency(net, spec.input_size, batch=lat["batch"], repeats=lat["repeats"] + 2,
                                        others=(a, b))
    return {"result": res, "widths": Structure.load(run_dir / "structure.json").counts(),
            "timing": {"batch": lat["batch"], "threads": threads, "device": table.key["device"],
                       "torch": table.key["torch"], "table_seconds_to_measure": table.meta.get("seconds_to_measure"),
                       "dense_measured_s": dense_s, "dense_predicted_s": table.full_seconds,
                       "latency_budget_s": a_s, "macs_budget_s": b_s}}


@register_study("quickstart")
class QuickstartStudy(Study):
    """The quickstart notebook's runs: dense, l1 at 50 % MACs, and (part ``latency``) l1 budgeted in
    measured latency against l1 budgeted in MACs at the same measured latency."""

    parts = PARTS

    def subruns(self, scale: str, parts: tuple) -> list[SubRun]:
        subs = [SubRun("dense", "train", lambda deps: _dense_config(scale), part="dense", label="dense resnet20")]
        if True:  # the l1 run is the quickstart's point: every part set has it (as before the runner)
            subs.append(SubRun("l1", "pipeline", lambda deps: _l1_config(scale, deps), needs=("dense",), part="l1",
                               label="l1 at 50% MACs", summarize=_l1_record))
        if "latency" in parts:
            subs.append(SubRun("l1-latency", "pipeline", lambda deps: _l1_config(scale, deps, _latency_budget(scale)),
                               needs=("dense",), part="latency", label="l1 with a latency budget",
                               summarize=_latency_record))
            subs.append(SubRun("l1-macs-equal-latency", "pipeline", lambda deps: _l1_config(scale, deps, {
                "metric": "macs", "keep": deps.record("l1-latency")["tuned_macs_keep"]["keep"]}),
                needs=("dense", "l1-latency"), part="latency", label="l1 with a MACs budget at equal latency",
                summarize=_equal_latency_record))
        return subs

    def aggregate(self, scale: str, parts: tuple, records: dict, out: Path) -> dict:
        res = {"study": "quickstart", "scale": scale}
        if "dense" in records:
            res["dense"] = {**records["dense"]["result"], "metrics": records["dense"]["metrics"]}
        if "l1" in records:
            r = records["l1"]
            res["l1"] = {**r["result"], "metrics": r["metrics"], "structure": r["structure"], "scores": r["scores"]}
        if "latency" in parts and "l1-latency" in records and "l1-macs-equal-latency" in records:
            lat, mac = records["l1-latency"], records["l1-macs-equal-latency"]
            t = mac["timing"]

            def row(r, measured, label):
                rr = r["result"]
                return {"label": label, "budget": rr["budget"], "macs": rr["final_cost"]["mixed"]["macs"],
                        "macs_keep": rr["final_cost"]["mixed"]["macs"] / rr["dense_cost"]["mixed"]["macs"],
                        "measured_s": measured, "measured_keep": measured / t["dense_measured_s"],
                        "pruned_test_acc": rr["pruned_test_acc_before_finetune"], "final_test_acc": rr["final_test_acc"],
                        "widths": r["widths"]}

            res["latency"] = {k: t[k] for k in ("batch", "threads", "device", "torch", "table_seconds_to_measure",
                                                "dense_measured_s", "dense_predicted_s")}
            res["latency"].update({"tuned_macs_keep": lat["tuned_macs_keep"],
                                   "prune_stage_latency": lat["result"].get("latency"),
                                   "rows": [row(lat, t["latency_budget_s"], "latency budget"),
                                            row(mac, t["macs_budget_s"], "MACs budget at equal latency")]})
        return res


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False,
        executor=None, shard=None) -> dict:
    """Run (or continue) the quickstart study on the study runner (:mod:`.runner`)."""
    return Runner("quickstart", scale, out, parts=parts, results=results, collect=collect, quiet=quiet,
                  executor=executor, shard=shard).run()
