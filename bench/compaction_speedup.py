"""Does a compacted network run as much faster as it has fewer MACs? CPU inference latency.

For ResNet-20 and ResNet-56 (shortcut A), prune the block middles with prunelab's ``l1`` scores to
2x and 4x fewer MACs, compact, optionally fold BatchNorm into the convs, and time dense vs compact
at batch 1 and 128, in one run. Prints the MACs ratio, the measured latency ratio and their quotient
(latency ratio / MACs ratio), for information: fewer MACs are not proportionally less time, and which
channels are removed decides how much (``bench/latency_budget.py`` budgets measured latency instead).
The dense baseline gets the same treatment (folded or not, same execution mode) as the compact model.

The target is the compaction engine's own cost: the compact network against a hand-written plain
ResNet of exactly the same widths (``bench/plain_resnet.py``; eager, BN kept), at most 3 % slower.

Execution modes: ``eager`` (PyTorch modules as they are) and ``script`` (TorchScript, frozen and
optimised for inference, which fuses conv + bias + ReLU and removes most per-op Python overhead).

    python bench/compaction_speedup.py [--models resnet20,resnet56] [--modes eager,script] [--threads 2]
"""

from __future__ import annotations

import argparse
import warnings
import copy
import statistics
import time

import torch

from plain_resnet import PlainResNet
from prunelab import methods, models
from prunelab.counting import count
from prunelab.pruning.budget import Budget
from prunelab.pruning.compact import compact, fold_batchnorm


def prepare(model, mode: str, batch: int, memory_format):
    model = copy.deepcopy(model).eval().to(memory_format=memory_format)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
    if mode == "script":
        with torch.inference_mode():
            model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x, check_trace=False)))
    return model, x


def latencies(models_, x, min_time: float = 1.0, rounds: int = 8) -> list[float]:
    """Seconds per forward pass of each model: blocks of calls alternate between the models
    (ABAB...) and the minimum per-call time over ``rounds`` blocks is kept, which is robust to
    interference from other processes on a shared machine."""
    with torch.inference_mode():
        counts = []
        for m in models_:
            for _ in range(3):
                m(x)
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < 0.1:
                m(x)
                n += 1
            counts.append(max(1, int(n * min_time / rounds / len(models_) / 0.1)))
        best = [float("inf")] * len(models_)
        for _ in range(rounds):
            for i, m in enumerate(models_):
                t = time.perf_counter()
                for _ in range(counts[i]):
                    m(x)
                best[i] = min(best[i], (time.perf_counter() - t) / counts[i])
    return best


def pruned(name: str, factor: float, seed: int = 0, slots: str = "mid", mode: str = "global", groups: str = "none"):
    torch.manual_seed(seed)
    net = models.create(name).eval()
    with torch.no_grad():  # trained-looking BN statistics, so folding is exercised for real
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
    spec = models.describe(net)
    method = methods.create("l1", slots=slots.split(","), mode=mode, groups=groups)
    structure, _ = method.select(net, spec, Budget("macs", 1 / factor))
    return net, compact(net, structure), count(spec).macs / count(spec, structure).macs, structure


def main():
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--factors", default="2,4")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--modes", default="eager,script")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--slots", default="mid", help="gated tensors pruned: mid (block middles) or mid,delta (also "
                    "each block's output, BAR's mixed blocks: the trunk keeps its width, deltas are scattered in)")
    ap.add_argument("--mode", default="global", choices=("global", "uniform"), help="budget ranking")
    ap.add_argument("--time", type=float, default=1.0, help="seconds of timing per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"pruned tensors: {args.slots}, {args.mode} ranking by l1 scores")
    print(f"torch {torch.__version__}, {args.threads} CPU threads; latency = min over 8 alternating blocks; "
          f"quotient = (dense latency / compact latency) / (dense MACs / compact MACs)")
    print(f"{'model':<9} {'MACs÷':>6} {'batch':>5} {'mode':<7} {'BN':<7} {'dense ms':>9} {'compact ms':>10} "
          f"{'speed-up':>8} {'quotient':>8}")
    rows, overheads = [], []
    for name in args.models.split(","):
        for factor in map(float, args.factors.split(",")):
            dense, small, macs_ratio, structure = pruned(name, factor, slots=args.slots, mode=args.mode)
            spec = models.describe(dense)
            plain = None
            if args.slots == "mid":
                plain = PlainResNet([structure.counts()[t.name] for t in spec.select("mid")], len(spec.select("mid")) // 3)
            for batch in map(int, args.batches.split(",")):
                for mode in args.modes.split(","):
                    for folded in (False, True):
                        d = fold_batchnorm(dense) if folded else dense
                        c = fold_batchnorm(small) if folded else small
                        mf = torch.channels_last if batch > 1 else torch.contiguous_format
                        dm, x = prepare(d, mode, batch, mf)
                        cm, _ = prepare(c, mode, batch, mf)
                        td, tc = latencies([dm, cm], x, args.time)
                        speed = td / tc
                        q = speed / macs_ratio
                        rows.append((name, macs_ratio, batch, mode, folded, td, tc, speed, q))
                        print(f"{name:<9} {macs_ratio:6.2f} {batch:5d} {mode:<7} {'folded' if folded else 'kept':<7} "
                              f"{1e3 * td:9.3f} {1e3 * tc:10.3f} {speed:7.2f}x {q:8.2f}", flush=True)
                        if plain is not None and mode == "eager" and not folded:
                            pm, _ = prepare(plain, mode, batch, mf)
                            tc2, tp = latencies([cm, pm], x, args.time)
                            overheads.append((name, macs_ratio, batch, tc2 / tp - 1))
    for batch in (128, 1):
        best = {}
        for r in rows:
            if r[2] == batch:
                key = (r[0], round(r[1], 1))
                best[key] = max(best.get(key, 0), r[8])
        if best:
            print(f"batch {batch}: best quotient per (model, MACs ratio) = "
                  f"{', '.join(f'{k[0]} {k[1]}x: {v:.2f}' for k, v in best.items())} (information, no target)")
    if overheads:
        print("\nengine overhead: compact network vs a hand-written plain ResNet of the same widths (eager, BN kept)")
        for name, macs_ratio, batch, over in overheads:
            print(f"  {name:<9} MACs÷{macs_ratio:4.2f} batch {batch:>3}: {100 * over:+5.1f}% "
                  f"({'met' if over <= 0.03 else 'NOT met'}: target <= 3 %)")


if __name__ == "__main__":
    main()
