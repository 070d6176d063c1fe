"""Latency budgets on this device: do they deliver the speed-up they promise? One run, CPU inference.

For ResNet-20 and ResNet-56 (shortcut A, block middles pruned by ``l1`` scores) at batch 1 and 128:

(a) a latency-budgeted structure (``Budget("latency", 0.5)``, the table of ``prunelab latency-table``):
    its measured latency against the dense network's, next to the target (target: within 5 %);
    the same with ``round_to: auto`` (the table picks the width multiple); each case says whether the
    target was reachable at all: a target below the floor the pruned slots reach (every block middle at
    one channel) is reported as unreachable with that floor, and counted apart from the misses;
(b) a MACs-budgeted structure at 50 % MACs: its measured latency ratio next to its MACs ratio;
(c) the compacted network against a hand-written plain ResNet of exactly the same widths
    (``bench/plain_resnet.py``): the compaction engine's overhead (target <= 3 %).

Timings interleave the networks compared (dense, pruned, plain) and keep the minimum over rounds.
ResNet-20 uses the 30-epoch checkpoint's weights when ``runs/resnet20-30ep/model.pt`` exists (the l1
ranking then is the real one), else the random initialisation; ResNet-56 its random initialisation.

    python bench/latency_budget.py [--models resnet20,resnet56] [--batches 1,128] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from plain_resnet import PlainResNet
from prunelab import methods, models
from prunelab.counting import count
from prunelab.pruning.budget import Budget
from prunelab.pruning.compact import compact
from prunelab.pruning.latency import latency_table, measure_latency
from prunelab.train.trainer import load_weights

CHECKPOINT = Path("runs/resnet20-30ep/model.pt")


def network(name: str):
    torch.manual_seed(0)
    net = models.create(name).eval()
    if name == "resnet20" and CHECKPOINT.exists():
        load_weights(net, CHECKPOINT)
        return net, "30-epoch checkpoint"
    return net, "random initialisation"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved timing rounds (minimum kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads; l1 scores on the block middles; latency = "
          f"minimum over {args.repeats} interleaved rounds; keep = pruned latency / dense latency")
    summary = []
    for name in args.models.split(","):
        net, weights = network(name)
        spec = models.describe(net)
        blocks = len(spec.select("mid")) // 3
        l1 = methods.create("l1")
        for batch in map(int, args.batches.split(",")):
            t0 = time.time()
            table = latency_table(name, {}, batch=batch, threads=args.threads, say=print)
            took = table.meta.get("seconds_to_measure")
            print(f"\n{name} ({weights}), batch {batch}: table "
                  + (f"measured in {took:.0f} s" if took and time.time() - t0 > 1 else "from the cache")
                  + f"; dense predicted {1e3 * table.full_seconds:.3f} ms")
            rows = {}
            for label, budget in (("latency 0.5", Budget("latency", args.keep, batch=batch, threads=args.threads)),
                                  ("latency 0.5, round_to auto", Budget("latency", args.keep, batch=batch,
                                                                        threads=args.threads, round_to="auto")),
                                  ("MACs 0.5", Budget("macs", args.keep))):
                structure, rep = l1.select(net, spec, budget)
                small = compact(net, structure)
                mids = [structure.counts()[t.name] for t in spec.select("mid")]
                plain = PlainResNet(mids, blocks)
                t_dense, t_small, t_plain = measure_latency(net, spec.input_size, batch=batch, repeats=args.repeats,
                                                            others=(small, plain))
                macs_keep = count(spec, structure).macs / count(spec).macs
                rows[label] = (t_dense, t_small, t_plain, macs_keep, rep.extra if hasattr(rep, "extra") else {})
                keep = t_small / t_dense
                line = (f"  {label:<27} MACs {100 * macs_keep:5.1f}%  latency {1e3 * t_small:8.3f} ms vs dense "
                        f"{1e3 * t_dense:8.3f} ms: keep {100 * keep:5.1f}% (speed-up {t_dense / t_small:4.2f}x)")
                if budget.metric == "latency":
                    predicted = rep.extra.get("achieved_keep")
                    reachable = rep.extra.get("reachable", True)
                    ok = abs(keep / args.keep - 1) <= 0.05
                    line += (f"; predicted {100 * predicted:5.1f}%, target {100 * args.keep:.0f}% "
                             f"({'met' if ok else 'NOT met'}: within 5 %)")
                    line += ("; target reachable" if reachable else
                             f"; target NOT reachable: the pruned slots stop at a floor of "
                             f"{100 * rep.extra['floor_keep']:.1f}% (predicted)")
                    if budget.round_to == "auto":
                        line += f"; round_to chose {rep.extra.get('round_to')}"
                    summary.append((name, batch, label, keep, ok, reachable))
                else:
                    line += f"; MACs ratio {macs_keep:.3f} vs latency ratio {keep:.3f}"
                over = t_small / t_plain - 1
                line += f"\n  {'':<27} engine overhead vs the plain same-width ResNet: {100 * over:+5.1f}% " \
                        f"({'met' if over <= 0.03 else 'NOT met'}: <= 3 %)"
                print(line, flush=True)
    met = sum(ok for *_, ok, _ in summary)
    reachable = [ok for *_, ok, r in summary if r]
    print(f"\nlatency budgets within 5 % of the target: {met} of {len(summary)}; reachable: {len(reachable)} of "
          f"{len(summary)}, met among the reachable: {sum(reachable)} of {len(reachable)}")
    for name, batch, label, keep, ok, r in summary:
        print(f"  {name} batch {batch} {label}: {'reachable' if r else 'NOT reachable'}, "
              f"{'met' if ok else 'NOT met'} (measured keep {100 * keep:.1f}%)")


if __name__ == "__main__":
    main()
