"""ManiDP supplement study: one dynamic-pruning run with the similarity loss and one without, from the
same pretrained checkpoint; aggregated into ``results/manidp_<scale>.json`` (scalars, per-epoch logs)
and ``results/manidp_<scale>.npz`` (the per-instance arrays the figures and claims read).

Scales:

* ``paper``: ResNet-56 from a pretrained checkpoint, 400 epochs, lambda' = 5e-3, lambda_sim = 1, r* = 0.6
  (the official README). Needs a GPU.
* ``cpu``: ResNet-20 from the 30-epoch checkpoint of the quickstart (87 % test accuracy; the
  ``dense`` sub-run, or a link to ``runs/resnet20-30ep``), 6 epochs of the ManiDP schedule at lr 0.02
  (thresholds are set after epochs 1 to 4, so epochs 2 to 5 prune), with and without L_sim (lambda_sim = 1 / 0),
  full CIFAR-10, batch 128. The two runs side by side on one thread each took about 25 minutes.
* ``ci``: a few hundred images, one epoch of pre-training, four of ManiDP: mechanics only.

What is kept (per run): the per-epoch log (C, remain rate, thresholds, mean kept ratio, test accuracy
and mean test MACs); the pretrained network's CE of every training image; each training image's
complexity weight w_i = lambda(x_i)/lambda' averaged over the epochs, and its full trajectory for a
seeded sample of 512 images; R^l and T^l of every layer on a fixed seeded batch of 128 test images
(class-sorted) at the end, and their per-layer agreement at the start, middle and end; for every test
image and layer its kept-channel count with its CE, correctness and label.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import models
from ..analysis.manidp import agreement
from ..config import deep_merge, load_config
from ..counting import count
from ..runfiles import read_metrics
from ..utils import read_json
from ..workflows import run_pipeline, train
from . import open_study, write_results

VARIANTS = {"with_sim": {"lambda_sim": 1.0}, "without_sim": {"lambda_sim": 0.0}}
PARTS = ("dense", "manidp")
TRAJECTORIES = 512


def _arr(run: Path, name: str):
    p = run / "arrays" / f"manidp_{name}.npy"
    return np.load(p) if p.exists() else None


def dense_test_ce(dense_dir: Path, cfg) -> np.ndarray:
    """The pretrained network's CE on every test image (by test-set index): the complexity of an image
    for a network that was never pruned."""
    import torch

    from ..train.run import build_loaders
    from ..train.trainer import evaluate, load_weights

    net = models.create(cfg.model.name, **cfg.model.kwargs)
    load_weights(net, dense_dir / "model.pt")
    _, ev = build_loaders(cfg.data, torch.device("cpu"), seed=cfg.train.seed, channels_last=cfg.train.channels_last)
    out = np.full(10000, np.nan, dtype=np.float32)

    def keep(b):
        out[b.idx.cpu().numpy()] = b.ce_per_sample.cpu().numpy()

    evaluate(net.to(memory_format=torch.channels_last) if cfg.train.channels_last else net, ev["test"], collect=keep)
    return out


def _nanmean0(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where a column has no value (images outside a ci subset)."""
    n = (~np.isnan(a)).sum(0)
    return np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), np.nan).astype(np.float32)


def summarize_run(run: Path, layers: list[str]) -> tuple[dict, dict]:
    """(JSON record, arrays) of one finished ManiDP run directory."""
    res = read_json(run / "result.json")
    learn = [m for m in read_metrics(run) if m.get("stage") == "learn"]
    weights = _arr(run, "weights").astype(np.float32)  # (epochs, N)
    ref = _arr(run, "reference_ce")
    valid = ~np.isnan(ref)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(np.flatnonzero(valid), size=min(TRAJECTORIES, int(valid.sum())), replace=False))
    agree = {}
    for when in ("start", "middle", "end"):
        sim = _arr(run, f"similarity_{when}")
        if sim is not None:
            agree[when] = {n: agreement(sim[j, 0], sim[j, 1]) for j, n in enumerate(layers)}
    end = _arr(run, "similarity_end")
    import torch

    # the per-epoch thresholds of every layer, from the method's state saved with the learned weights
    state = torch.load(run / "learn.pt", map_location="cpu", weights_only=True).get("method_state", {})
    thresholds = [r.get("thresholds") for r in state.get("log", [])]
    record = {
        "dense_test_acc": res["dense_test_acc"], "final_test_acc": res["final_test_acc"],
        "pruned_cost": res["pruned_cost"], "dense_cost": res["dense_cost"], "budget_report": res["budget_report"],
        "metrics": learn, "agreement": agree, "wall_time_s": res.get("wall_time_s"),
        "thresholds": thresholds,  # epochs x layers (-1e4: unpruned)
    }
    arrays = {
        "reference_ce": ref.astype(np.float32), "weights_mean": _nanmean0(weights),
        "trajectory_index": sample, "trajectories": weights[:, sample].astype(np.float16),
        "similarity_end": end.astype(np.float16) if end is not None else np.zeros(0, np.float16),
        "similarity_labels": _arr(run, "similarity_labels"), "similarity_index": _arr(run, "similarity_indices"),
        "test_kept": _arr(run, "test_kept").astype(np.int16), "test_ce": _arr(run, "test_ce").astype(np.float32),
        "test_correct": _arr(run, "test_correct").astype(bool), "test_label": _arr(run, "test_label").astype(np.int8),
        "test_index": _arr(run, "test_index").astype(np.int32),
    }
    return record, arrays


def run(scale: str = "cpu", out=None, *, parts=None, quiet: bool = False, results=None, collect=False) -> dict:
    """Run (or continue) the ManiDP study at ``scale``; writes the results JSON and its arrays (NPZ)."""
    out, results_file, parts, runs = open_study("manidp", scale, out, results, parts, PARTS, collect=collect,
                                                quiet=quiet)
    prog = runs.progress_override
    t0 = time.time()
    dense_over = {"train": {"epochs": 30}} if scale == "cpu" else {}
    dcfg = load_config("resnet20" if scale != "paper" else "resnet56", scale, overrides=deep_merge(prog, dense_over))
    dense_dir = runs.get("dense", lambda d: train(dcfg, d, resume=True, quiet=quiet), "dense checkpoint")
    study = {"study": "manidp", "scale": scale, "command": f"prunelab experiment manidp --scale {scale} --out {out}",
             "variants": {}, "parts": list(parts)}
    arrays = {}
    if dense_dir is not None and "manidp" in parts:
        dense = read_json(dense_dir / "result.json")
        study["dense"] = {"test_acc": dense["final"]["test_acc"], "epochs": dense["epochs"]}
        arrays["dense_test_ce"] = dense_test_ce(dense_dir, dcfg)
        for name, method in VARIANTS.items():
            cfg = load_config("resnet20_manidp", scale, overrides=deep_merge(prog, {
                "method": method, "stages": {"pretrain": {"init_from": str(dense_dir / "model.pt")}}}))
            d = runs.get(f"manidp-{name}", lambda d, cfg=cfg: run_pipeline(cfg, d, resume=True, quiet=quiet),
                         f"ManiDP {name}")
            if d is None:
                continue
            spec = models.describe(models.create(cfg.model.name, **cfg.model.kwargs))
            layers = [t.name for t in spec.select(("mid", "delta"))]
            record, arr = summarize_run(d, layers)
            study["model"], study["layers"] = cfg.model.name, layers
            study["channels"] = [spec.tensor(n).channels for n in layers]
            study["dense_macs"] = count(spec).macs
            study["hyperparameters"] = cfg.method
            study["variants"][name] = {**record, "lambda_sim": method["lambda_sim"]}
            arrays.update({f"{name}/{k}": v for k, v in arr.items()})
            runs.say(f"ManiDP {name}: {100 * record['final_test_acc']:.2f}% test accuracy, mean test MACs "
                     f"{record['pruned_cost']['mixed']['macs'] / 1e6:.2f} M")
    study["missing"] = runs.missing
    study["complete"] = not runs.missing and set(parts) == set(PARTS) and len(study["variants"]) == len(VARIANTS)
    study["wall_time_s"] = time.time() - t0
    study["created"] = time.strftime("%Y-%m-%d %H:%M")
    written = write_results(results_file, study, runs.say)
    if arrays:  # beside the JSON it belongs to (a partial study's arrays beside the partial file)
        np.savez_compressed(written.with_suffix(".npz"), **arrays)
    study["arrays_file"] = str(written.with_suffix(".npz"))
    runs.say(f"results written to {written}")
    return study
