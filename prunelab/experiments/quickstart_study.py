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

from ..config import load_config
from ..pruning.pipeline import run_pipeline
from ..pruning.structure import Structure
from ..train.rundir import read_metrics
from ..train.run import train
from ..utils import read_json, to_jsonable, write_json
from . import results_path


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None) -> dict:
    out = Path(out or f"runs/quickstart-{scale}")
    results_file = Path(results) if results else results_path("quickstart", scale)
    prog = "train.progress=false" if quiet else "train.progress=true"
    dense_dir, l1_dir = out / "dense", out / "l1"
    if not (dense_dir / "result.json").exists():
        sets = [prog] + (["train.epochs=30"] if scale == "cpu" else [])
        train(load_config("resnet20", scale, sets), dense_dir, resume=True, quiet=quiet)
    if not (l1_dir / "result.json").exists():
        cfg = load_config("resnet20_l1", scale, [prog, f"stages.pretrain.init_from={dense_dir / 'model.pt'}"])
        run_pipeline(cfg, l1_dir, resume=True, quiet=quiet)
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
    write_json(results_file, to_jsonable(res))
    if not quiet:
        print(f"results written to {results_file}")
    return res
