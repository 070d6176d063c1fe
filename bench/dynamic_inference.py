"""Measured CPU latency of ManiDP's real dynamic inference against the dense network, per test image.

Batch 1, the same test images for both, interleaved repeats (the best of ``--rounds`` kept). Printed:
the latency speed-up (dense / dynamic), the MACs speed-up (dense MACs / mean per-instance MACs of the
same images, predictors excluded and included), and their quotient, the share of the MACs speed-up the
implementation turns into time (target >= 0.7).

    python bench/dynamic_inference.py [RUN] [--images 200] [--rounds 3] [--threads 1]

RUN is a finished ManiDP run directory (default runs/manidp-cpu/manidp-with_sim).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from prunelab import methods  # noqa: F401  (registers the builder of dynamic results)
from prunelab.counting import count
from prunelab.data.cifar import load_cifar10
from prunelab.data.loader import CifarLoader
from prunelab.methods.manidp import DynamicInference
from prunelab.pruning.gates import strip_gates
from prunelab.pruning.result import load_result
from prunelab.workflows.runs import final_result_dir


def best_seconds(fn, xs, rounds):
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for x in xs:
            fn(x)
        best = min(best, (time.perf_counter() - t) / len(xs))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/manidp-cpu/manidp-with_sim")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = load_result(final_result_dir(args.run))
    gated = result.module.cpu().eval()
    import copy

    dense = strip_gates(copy.deepcopy(gated.net)).eval()
    dyn = DynamicInference(gated)
    ds = load_cifar10()
    loader = CifarLoader(ds.test_images[: args.images], ds.test_labels[: args.images], batch_size=1, train=False,
                         channels_last=False)
    xs = [x for x, _, _ in loader]
    with torch.no_grad():
        worst = max(float((dyn(x) - gated(x)).abs().max()) for x in xs[:20])
        widths = result.per_instance_widths([(torch.cat(xs), None)])
        macs = np.asarray(count(gated.spec, widths=widths).macs, dtype=np.float64)
        dense_macs = count(gated.spec).macs
        pred = result.report.extra.get("predictor_macs", 0)
        for _ in range(2):  # warm-up
            dense(xs[0]), dyn(xs[0])
        t_dense = t_dyn = float("inf")
        for _ in range(args.rounds):  # interleaved
            t_dense = min(t_dense, best_seconds(dense, xs, 1))
            t_dyn = min(t_dyn, best_seconds(dyn, xs, 1))
    lat = t_dense / t_dyn
    mac = dense_macs / macs.mean()
    mac_pred = dense_macs / (macs.mean() + pred)
    print(f"{args.images} test images, batch 1, {args.threads} thread(s); max |dynamic - masked| = {worst:.2e}")
    print(f"  dense   {1e3 * t_dense:7.3f} ms/image   {dense_macs / 1e6:7.2f} M MACs")
    print(f"  dynamic {1e3 * t_dyn:7.3f} ms/image   {macs.mean() / 1e6:7.2f} M MACs mean "
          f"(+{pred / 1e6:.3f} M in the predictors)")
    print(f"  latency speed-up {lat:.3f}x, MACs speed-up {mac:.3f}x ({mac_pred:.3f}x with the predictors)")
    print(f"  quotient latency / MACs speed-up = {lat / mac:.3f} (target >= 0.7: {'met' if lat / mac >= 0.7 else 'NOT met'})")


if __name__ == "__main__":
    main()
