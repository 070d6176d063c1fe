"""Measured CPU speed of ManiDP's real dynamic inference against the dense network and a static network of
the same MACs, at batch 1 (latency per image) and batch 128 (throughput), in one run.

Three networks, all eval mode with BatchNorm folded into the convs:

* dense: the ManiDP network without its gates;
* dynamic: :class:`prunelab.pruning.dynamic_inference.DynamicInference` (each input's kept channels only);
* static: the dense network compacted to the dynamic network's mean kept count per layer (rounded, at
  least 1) over the measured images, keeping the channels kept most often (ties: higher mean saliency);
* for reference, dense and static traced with TorchScript (``torch.jit.trace``, not frozen): the dynamic
  path runs as a TorchScript function, which saves the per-module Python work that the eager baselines
  pay; these rows show how much of its lead over dense that is.

Timing: the networks alternate within each round (batch 1: every measured image through each network in
turn), the best of ``--rounds`` is kept, ``--threads`` CPU threads (default 1); ``--clock cpu`` times the
thread's CPU time instead of wall time (steadier on a machine that other jobs share). Printed per batch
size: time per image, speed-up vs dense, the quotient dynamic speed-up / static speed-up (target >= 0.7)
and whether the dynamic network beats dense (issue 31, item 5).

    python bench/dynamic_inference.py [RUN] [--random-init] [--images 200] [--batch 128] [--rounds 5]
                                      [--clock wall|cpu]

RUN is a finished ManiDP run directory (default runs/manidp-cpu/manidp-with_sim). ``--random-init``
needs no run: ResNet-20 with ManiDP gates (``predictor_init="small"``) and BN statistics left at their
initial values, each gate's threshold set, gate by gate along the network, at the 40th percentile of its
saliencies on 500 other test images (so that about 60 % of the channels are kept, differently per input).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import numpy as np
import torch

from prunelab import methods, models
from prunelab.counting import count
from prunelab.data.cifar import load_cifar10
from prunelab.data.loader import CifarLoader
from prunelab.pruning.compact import compact, fold_batchnorm
from prunelab.pruning.dynamic_inference import DynamicInference
from prunelab.pruning.gates import strip_gates
from prunelab.pruning.structure import Structure

CALIBRATION = slice(5000, 5500)  # test images that set the random-init thresholds (not measured)


def images(ds, rows) -> torch.Tensor:
    x, y = ds.test_images[rows], ds.test_labels[rows]
    return next(iter(CifarLoader(x, y, batch_size=len(y), train=False, channels_last=False)))[0]


def random_init_gated(ds, keep: float = 0.6, seed: int = 0):
    """ResNet-20 with ManiDP gates whose thresholds keep about ``keep`` of each layer's channels."""
    torch.manual_seed(seed)
    gated = methods.create("manidp", predictor_init="small").attach(models.create("resnet20")).eval()
    x = images(ds, CALIBRATION)
    with torch.no_grad():
        for _, g in gated.items():  # in network order: each threshold sees its upstream layers pruned
            gated(x)
            v = torch.sort(g.last_saliency.flatten()).values
            k = int((1 - keep) * (len(v) - 1))
            g.threshold.fill_(float((v[k] + v[k + 1]) / 2))  # between two values: no ties at the threshold
    return gated


def static_structure(gated, x) -> Structure:
    """Mean kept count per layer (rounded, at least 1) over ``x``, the most often kept channels."""
    with torch.no_grad():
        gated(x)
    alive = {}
    for name, g in gated.items():
        kept = g.alive_per_instance().double()
        k = max(1, int(round(float(kept.sum(1).mean()))))
        freq, sal = kept.mean(0).numpy(), g.last_saliency.double().mean(0).numpy()
        alive[name] = np.sort(np.lexsort((-sal, -freq))[:k])  # primary key last: frequency, then saliency
    return Structure._make(gated.spec, alive, meta={"rule": "mean kept counts of the dynamic network, most kept"})


def best_per_image(nets: dict, batches: list, rounds: int, clock=time.perf_counter) -> dict:
    """Seconds per image of each network: per round, all batches through each network in turn."""
    best = dict.fromkeys(nets, float("inf"))
    n = sum(len(b) for b in batches)
    with torch.inference_mode():
        for net in nets.values():  # warm-up
            for b in batches[:2]:
                net(b)
        for _ in range(rounds):
            for name, net in nets.items():
                t = clock()
                for b in batches:
                    net(b)
                best[name] = min(best[name], (clock() - t) / n)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/manidp-cpu/manidp-with_sim")
    ap.add_argument("--random-init", action="store_true", help="no run: random ManiDP gates keeping about 60 %%")
    ap.add_argument("--images", type=int, default=200, help="test images timed at batch 1")
    ap.add_argument("--batch", type=int, default=128, help="the large batch (test images)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: the thread's CPU time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_cifar10()
    if args.random_init:
        gated, source = random_init_gated(ds), "random-init ResNet-20 + ManiDP gates (about 60 % kept)"
    else:
        from prunelab.pruning.result import load_result
        from prunelab.workflows.runs import final_result_dir

        folder = final_result_dir(args.run)
        if folder is None:
            raise SystemExit(f"{args.run}: no finished ManiDP result (or pass --random-init)")
        gated, source = load_result(folder).module.cpu().eval(), str(folder)
    x = images(ds, slice(0, max(args.images, args.batch)))
    x1, xb = x[:args.images], x[:args.batch]

    dense = strip_gates(copy.deepcopy(gated.net)).eval()
    structure = static_structure(gated, x)
    nets = {"dense": fold_batchnorm(dense), "dynamic": DynamicInference(gated)}
    nets["static"] = fold_batchnorm(compact(dense, structure))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice; the compact blocks' branches are fixed by design
        for k in ("dense", "static"):
            nets[k + " traced"] = torch.jit.trace(nets[k], x1[:1], check_trace=False)

    with torch.no_grad():
        ref = gated(x)
        err = {k: float((nets[k](x) - ref).abs().max()) for k in nets if "dynamic" in k}
        widths = {n: g.alive_per_instance().sum(1).numpy() for n, g in gated.items()}
    spec = gated.spec
    macs = {"dense": count(spec).macs, "dynamic": float(np.mean(count(spec, widths=widths).macs)),
            "static": count(spec, structure).macs}
    macs.update({"old dynamic": macs["dynamic"], "dense traced": macs["dense"], "static traced": macs["static"]})
    pred = sum(g.predictor.fc1.weight.numel() + g.predictor.fc2.weight.numel() for _, g in gated.items())

    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    t1 = best_per_image(nets, [x1[i:i + 1] for i in range(len(x1))], args.rounds, clock)
    tb = best_per_image(nets, [xb], args.rounds, clock)

    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{source}; torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, load average {load}")
    print(f"BN folded everywhere; best of {args.rounds} interleaved rounds; max |dynamic - masked| = "
          + ", ".join(f"{v:.1e} ({k})" for k, v in err.items()))
    print(f"{'':13} {'M MACs':>7} {'MACs÷':>6} | {'batch 1 ms/img':>14} {'speed-up':>8} | "
          f"{'batch ' + str(args.batch) + ' img/s':>15} {'speed-up':>8}")
    for k in nets:
        print(f"{k:13} {macs[k] / 1e6:7.2f} {macs['dense'] / macs[k]:6.2f} | {1e3 * t1[k]:14.3f} "
              f"{t1['dense'] / t1[k]:8.2f} | {1 / tb[k]:15.0f} {tb['dense'] / tb[k]:8.2f}")
    print(f"(dynamic MACs: mean over the {len(x)} images, predictors excluded: +{pred / 1e6:.3f} M)")
    for batch, t in ((1, t1), (args.batch, tb)):
        dyn, st = t["dense"] / t["dynamic"], t["dense"] / t["static"]
        q = dyn / st
        print(f"batch {batch}: dynamic / static speed-up = {dyn:.2f} / {st:.2f} = {q:.2f} "
              f"(target >= 0.7: {'met' if q >= 0.7 else 'NOT met'}); dynamic "
              f"{'beats' if dyn > 1 else 'does NOT beat'} dense ({dyn:.3f}x)")
        dyn, st = t["dense traced"] / t["dynamic"], t["dense traced"] / t["static traced"]
        print(f"         against the traced baselines: {dyn:.2f} / {st:.2f} = {dyn / st:.2f}; dynamic "
              f"{'beats' if dyn > 1 else 'does NOT beat'} traced dense ({dyn:.3f}x)")


if __name__ == "__main__":
    main()
