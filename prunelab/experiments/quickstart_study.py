"""Quickstart study: a dense ResNet-20, then ``l1`` pruning of it to 50 % MACs and a short fine-tune.

* ``cpu``: 30 epochs of one-cycle SGD on full CIFAR-10 (the checkpoint every cpu pruning run starts
  from: ``prunelab train resnet20 --set train.epochs=30 --out runs/resnet20-30ep``), then the
  ``resnet20_l1`` cpu run: l1 to 50 % MACs and 8 fine-tuning epochs. ``--out`` folders whose ``dense``
  and ``l1`` entries link to those two runs reuse them.
* ``ci``: 250 images, 2 + 1 epochs (mechanics only).
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

PARTS = ("dense", "l1")


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None) -> dict:
    out = Path(out or f"runs/quickstart-{scale}")
    results_file = Path(results) if results else results_path("quickstart", scale)
    check_parts("quickstart", parts, PARTS)
    runs = SubRuns(out, quiet=quiet)
    prog = runs.progress_override
    dcfg = load_config("resnet20", scale, overrides=deep_merge(prog, {"train": {"epochs": 30}} if scale == "cpu" else {}))
    dense_dir = runs.get("dense", lambda d: train(dcfg, d, resume=True, quiet=quiet))
    lcfg = load_config("resnet20_l1", scale, overrides=deep_merge(prog, {
        "stages": {"pretrain": {"init_from": str(dense_dir / "model.pt")}}}))
    l1_dir = runs.get("l1", lambda d: run_pipeline(lcfg, d, resume=True, quiet=quiet))
    dense, l1 = read_json(dense_dir / "result.json"), read_json(l1_dir / "result.json")
    from .. import methods, models
    from ..train.trainer import load_weights

    net = models.create("resnet20")
    load_weights(net, dense_dir / "model.pt")
    scores = methods.create("l1").scores(net, models.describe(net))  # for the notebook's budget widget
    res = {"study": "quickstart", "scale": scale, "created": time.strftime("%Y-%m-%d %H:%M"),
           "command": f"prunelab experiment quickstart --scale {scale} --out {out}",
           "dense": {**dense, "metrics": read_metrics(dense_dir)},
           "l1": {**l1, "metrics": read_metrics(l1_dir), "structure": Structure.load(l1_dir / "structure.json").to_dict(),
                  "scores": scores}}
    res["complete"] = True  # both sub-runs are finished by here
    written = write_results(results_file, res, print if not quiet else (lambda *a: None))
    if not quiet:
        print(f"results written to {written}")
    return res
