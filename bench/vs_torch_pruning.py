"""prunelab ``l1`` vs Torch-Pruning's global L1 (group magnitude) and BN-scale pruners on the same
trained ResNet-20.

Both prune the block-middle channels (conv1 outputs of every basic block; the option-A residual
trunk is left alone by both) of the same checkpoint to 50 % MACs, then fine-tune with the same short
schedule on the same data. Printed for both: MACs and params counted by one neutral counter
(hooks on the modules a forward pass runs), test accuracy before and after fine-tuning, and the
pruning wall time (Torch-Pruning has no MAC target, so its global pruning ratio is bisected until
the MACs fit; the time of that search is reported too). torch-pruning is a bench-only dependency
(``pip install torch-pruning``).

The BN-scale pruner ranks channels by |gamma| of the BatchNorm after each pruned conv (network slimming's
criterion, here without its sparsity training). The rows are written to
``results/bench_vs_torch_pruning.json`` (with the command and commit; ``06_compare_methods.ipynb``
shows them as external rows).

    python bench/vs_torch_pruning.py [--checkpoint runs/resnet20-30ep/model.pt] [--epochs 3] [--scale cpu]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from prunelab import methods, models
from prunelab.config import load_config
from prunelab.counting import measure_macs
from prunelab.pruning.budget import Budget
from prunelab.pruning.compact import compact
from prunelab.train.run import build_loaders
from prunelab.train.trainer import Trainer, evaluate, load_weights


def prune_prunelab(net, keep):
    t = time.perf_counter()
    spec = models.describe(net)
    structure, _ = methods.create("l1").select(net, spec, Budget("macs", keep))
    small = compact(net, structure)
    return small, time.perf_counter() - t, time.perf_counter() - t


def prune_torch_pruning(net, keep, importance="l1"):
    import torch_pruning as tp

    x = torch.randn(1, 3, 32, 32)
    target = keep * measure_macs(net)["macs"]
    mids = {blk.conv1 for layer in net.stages for blk in layer}
    ignored = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m not in mids]

    def run(ratio):
        m = copy.deepcopy(net)
        ign = [dict(m.named_modules())[n] for n, mod in net.named_modules() if mod in ignored]
        imp = tp.importance.GroupMagnitudeImportance(p=1) if importance == "l1" else tp.importance.BNScaleImportance()
        pruner = tp.pruner.MetaPruner(m, x, importance=imp, global_pruning=True, pruning_ratio=ratio,
                                      ignored_layers=ign)
        t = time.perf_counter()
        pruner.step()
        return m, time.perf_counter() - t

    t0 = time.perf_counter()
    lo, hi, best = 0.0, 1.0, None
    for _ in range(14):  # bisect the global channel ratio until MACs <= target, as close as possible
        mid = (lo + hi) / 2
        m, step_time = run(mid)
        if measure_macs(m)["macs"] <= target:
            hi, best = mid, (m, step_time)
        else:
            lo = mid
    return best[0], best[1], time.perf_counter() - t0


def finetune(model, cfg, tl, ev, device):
    Trainer(model, tl, ev, train_cfg=cfg.train, optim_cfg=cfg.optim, schedule_cfg=cfg.schedule, device=device,
            stage="finetune").fit()
    return evaluate(model, ev["test"])["acc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/resnet20-30ep/model.pt")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--keep", type=float, default=0.5, help="remaining fraction of MACs")
    ap.add_argument("--scale", default="cpu", choices=("ci", "cpu"), help="ci: a small data subset (smoke test)")
    args = ap.parse_args()
    cfg = load_config("resnet20", args.scale, [f"train.epochs={args.epochs}", f"optim.lr={args.lr}"])
    device = torch.device("cpu")
    base = models.create("resnet20")
    load_weights(base, args.checkpoint)
    base.eval()
    tl, ev = build_loaders(cfg.data, device, seed=0)
    dense_acc = evaluate(base.to(memory_format=torch.channels_last), ev["test"])["acc"]
    dense = measure_macs(base)
    print(f"dense ResNet-20 ({args.checkpoint}): {dense['macs'] / 1e6:.2f} M MACs, {dense['params'] / 1e6:.4f} M params, "
          f"test accuracy {100 * dense_acc:.2f}%  [{args.scale} scale, fine-tune {args.epochs} epochs, lr {args.lr}]")
    rows = []
    methods_ = (("prunelab l1", prune_prunelab), ("Torch-Pruning L1", prune_torch_pruning),
                ("Torch-Pruning BN-scale", lambda n, k: prune_torch_pruning(n, k, "bn_scale")))
    for name, fn in methods_:
        torch.manual_seed(0)
        small, step_s, total_s = fn(copy.deepcopy(base), args.keep)
        small = small.to(memory_format=torch.channels_last)
        cost = measure_macs(small)
        before = evaluate(small, ev["test"])["acc"]
        after = finetune(small, cfg, tl, ev, device)
        rows.append((name, cost["macs"], cost["params"], before, after, step_s, total_s))
    print(f"{'':<14} {'MACs (M)':>9} {'MACs %':>7} {'params (M)':>10} {'acc before':>10} {'acc after':>9} "
          f"{'prune s':>8} {'incl. search s':>14}")
    for name, macs, params, before, after, step_s, total_s in rows:
        print(f"{name:<22} {macs / 1e6:9.2f} {100 * macs / dense['macs']:6.1f}% {params / 1e6:10.4f} "
              f"{100 * before:9.2f}% {100 * after:8.2f}% {step_s:8.3f} {total_s:14.3f}")
    if args.scale == "cpu":
        from pathlib import Path

        from prunelab import __version__
        from prunelab.utils import git_commit, write_json

        root = Path(__file__).resolve().parents[1]
        out = root / "results" / "bench_vs_torch_pruning.json"
        write_json(out, {"bench": "vs_torch_pruning", "scale": args.scale, "command": "python " + " ".join(sys.argv),
                         "commit": git_commit(root), "package_version": __version__, "checkpoint": args.checkpoint,
                         "epochs": args.epochs, "lr": args.lr, "keep": args.keep, "dense_test_acc": dense_acc,
                         "dense_macs": dense["macs"], "created": time.strftime("%Y-%m-%d %H:%M"),
                         "rows": [{"method": n, "macs": m, "macs_keep": m / dense["macs"], "params": p,
                                   "pruned_test_acc": b, "finetuned_test_acc": a, "prune_s": st, "search_s": ts}
                                  for n, m, p, b, a, st, ts in rows]})
        print(f"rows written to {out}")


if __name__ == "__main__":
    main()
