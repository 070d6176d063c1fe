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

import time
from pathlib import Path

from ..config import deep_merge, load_config
from ..pruning.structure import Structure
from ..runfiles import read_metrics
from ..utils import read_json
from ..workflows import SubRuns, run_pipeline, train
from . import check_parts, results_path, write_results

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


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None) -> dict:
    out = Path(out or f"runs/quickstart-{scale}")
    results_file = Path(results) if results else results_path("quickstart", scale)
    parts = check_parts("quickstart", parts, PARTS)
    runs = SubRuns(out, quiet=quiet)
    prog = runs.progress_override
    dcfg = load_config("resnet20", scale, overrides=deep_merge(prog, {"train": {"epochs": 30}} if scale == "cpu" else {}))
    dense_dir = runs.get("dense", lambda d: train(dcfg, d, resume=True, quiet=quiet))
    init = {"stages": {"pretrain": {"init_from": str(dense_dir / "model.pt")}}}
    lcfg = load_config("resnet20_l1", scale, overrides=deep_merge(prog, init))
    l1_dir = runs.get("l1", lambda d: run_pipeline(lcfg, d, resume=True, quiet=quiet))
    dense, l1 = read_json(dense_dir / "result.json"), read_json(l1_dir / "result.json")
    from .. import methods, models
    from ..train.trainer import load_weights

    net = models.create("resnet20")
    load_weights(net, dense_dir / "model.pt")
    spec = models.describe(net)
    scores = methods.create("l1").scores(net, spec)  # for the notebook's budget widget
    res = {"study": "quickstart", "scale": scale, "created": time.strftime("%Y-%m-%d %H:%M"),
           "command": f"prunelab experiment quickstart --scale {scale} --out {out}", "parts": list(parts),
           "dense": {**dense, "metrics": read_metrics(dense_dir)},
           "l1": {**l1, "metrics": read_metrics(l1_dir), "structure": Structure.load(l1_dir / "structure.json").to_dict(),
                  "scores": scores}}
    if "latency" in parts:
        res["latency"] = _latency(scale, runs, net, spec, init, prog, quiet)
    res["complete"] = set(parts) == set(PARTS)  # every sub-run is finished by here
    written = write_results(results_file, res, print if not quiet else (lambda *a: None))
    if not quiet:
        print(f"results written to {written}")
    return res


def _latency(scale, runs: SubRuns, net, spec, init, prog, quiet) -> dict:
    """Accuracy at equal measured latency: l1 budgeted in latency against l1 budgeted in MACs."""
    import torch

    from ..pruning.compact import load_compact
    from ..pruning.latency import latency_table, measure_latency

    lat = LATENCY[scale]
    threads = torch.get_num_threads()
    table = latency_table("resnet20", {}, batch=lat["batch"], threads=threads, repeats=lat["repeats"],
                          block_ms=lat["block_ms"], say=runs.say, progress=not quiet)
    budget = {"metric": "latency", "keep": LATENCY_KEEP, "batch": lat["batch"], "threads": threads}
    lcfg = load_config("resnet20_l1", scale, overrides=deep_merge(prog, {**init, "budget": budget}))
    lat_dir = runs.get("l1-latency", lambda d: run_pipeline(lcfg, d, resume=True, quiet=quiet))
    lat_res = read_json(lat_dir / "result.json")
    tuned_file = runs.path("macs-keep-for-equal-latency.json")
    if tuned_file.exists():
        tuned = read_json(tuned_file)
    else:
        tuned = _macs_keep_for_latency(net, spec, lat_res["latency"]["measured_keep"], lat["batch"], runs.say)
        from ..utils import write_json

        tuned_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(tuned_file, tuned)
    mcfg = load_config("resnet20_l1", scale, overrides=deep_merge(prog, {**init, "budget": {"metric": "macs",
                                                                                            "keep": tuned["keep"]}}))
    macs_dir = runs.get("l1-macs-equal-latency", lambda d: run_pipeline(mcfg, d, resume=True, quiet=quiet))
    macs_res = read_json(macs_dir / "result.json")
    # the two fine-tuned compact networks and the dense one, timed side by side
    a, b = load_compact(lat_dir / "compact"), load_compact(macs_dir / "compact")
    dense_s, a_s, b_s = measure_latency(net, spec.input_size, batch=lat["batch"], repeats=lat["repeats"] + 2,
                                        others=(a, b))

    def row(res_, measured, label):
        return {"label": label, "budget": res_["budget"], "macs": res_["final_cost"]["mixed"]["macs"],
                "macs_keep": res_["final_cost"]["mixed"]["macs"] / res_["dense_cost"]["mixed"]["macs"],
                "measured_s": measured, "measured_keep": measured / dense_s,
                "pruned_test_acc": res_["pruned_test_acc_before_finetune"], "final_test_acc": res_["final_test_acc"],
                "widths": Structure.load(Path(res_dir[label]) / "structure.json").counts()}

    res_dir = {"latency budget": lat_dir, "MACs budget at equal latency": macs_dir}
    return {"batch": lat["batch"], "threads": threads, "device": table.key["device"], "torch": table.key["torch"],
            "table_seconds_to_measure": table.meta.get("seconds_to_measure"), "dense_measured_s": dense_s,
            "dense_predicted_s": table.full_seconds, "tuned_macs_keep": tuned,
            "prune_stage_latency": lat_res.get("latency"),
            "rows": [row(lat_res, a_s, "latency budget"), row(macs_res, b_s, "MACs budget at equal latency")]}
