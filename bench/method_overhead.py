"""Seconds per training step of a method's gated network vs the same network dense, in one run.

* BAR: Hard Concrete gates on all 28 conv outputs of the WRN (cpu-scale k = 1), the sparsity loss
  with the budget barrier and the per-step volume; vs dense training of the same WRN (target
  ratio <= 1.15). Distillation adds a teacher forward pass; it is timed separately, for information.
* PFS: gate learning on frozen weights (ResNet-20, gates on the block middles) vs dense training.
* ManiDP: ResNet-20 with saliency predictors on both convs of every block, the sparsity and the
  similarity losses, vs dense training (target ratio <= 1.15 at batch 128).
* DDNP: a search step (frozen ResNet-20, BN in eval mode, masks on the block middles, the resource
  and alignment losses) with the generator networks g_s and g_k vs the Channel-wise-ks scalar
  parameterisation, same model and batch (the supplement: 0.136 -> 0.143 s/iteration on a GPU, 1.05x;
  target ratio <= 1.10). Dense training is listed for information.

Same batch, data and device for every variant; the ratio is what matters, not the absolute time.

    python bench/method_overhead.py [--steps 30] [--batch 128] [--rounds 2] [--only ddnp]
"""

from __future__ import annotations

import argparse
import time

import torch

from prunelab import methods, models
from prunelab.config import OptimConfig, ScheduleConfig, TrainConfig
from prunelab.data.cifar import load_cifar10
from prunelab.data.loader import CifarLoader
from prunelab.pruning.budget import Budget
from prunelab.train.distill import Distillation
from prunelab.train.trainer import Trainer, resolve_device


def seconds_per_step(model, loader, hooks, steps, device, optim="sgd") -> float:
    cfg = TrainConfig(epochs=1000, progress=False, max_steps=3, label_smoothing=0.0, grad_clip=5.0)
    tr = Trainer(model, loader, {}, train_cfg=cfg, optim_cfg=OptimConfig(name=optim, lr=1e-3),
                 schedule_cfg=ScheduleConfig(name="constant", warmup=0), hooks=hooks, device=device)
    tr.fit()  # warm-up
    tr.cfg.max_steps = 3 + steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    tr.fit()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def bar_variants(kw):
    def dense():
        return models.create("bar_wrn", **kw), []

    def gated(kd=False):
        def make():
            net = models.create("bar_wrn", **kw)
            m = methods.create("bar", **{"lambda": 1e-3})
            g = m.attach(net)
            m.prepare(models.describe(net), Budget("volume", 0.25))
            hooks = [m]
            if kd:
                hooks.append(Distillation(models.create("bar_wrn", **kw)))
            return g, hooks
        return make

    return {"dense": dense, "BAR gated": gated(False), "BAR gated + distillation": gated(True)}


def pfs_variants():
    def dense():
        return models.create("resnet20"), []

    def gates():
        net = models.create("resnet20")
        m = methods.create("pfs")
        g = m.attach(net)
        m.prepare(models.describe(net), Budget("macs", 0.5))
        return g, [m]

    return {"dense": dense, "PFS gate learning": gates}


def manidp_variants():
    def dense():
        return models.create("resnet20"), []

    def dynamic(sim=True):
        def make():
            net = models.create("resnet20")
            m = methods.create("manidp", lambda_sim=1.0 if sim else 0.0)
            g = m.attach(net)
            m.prepare(models.describe(net), None)
            m.c = 1.0  # skip the initial pass over the training set (not part of a step)
            return g, [m]
        return make

    return {"dense": dense, "ManiDP": dynamic(True), "ManiDP without L_sim": dynamic(False)}


def ddnp_variants():
    def dense():
        return models.create("resnet20"), []

    def search(variant):
        def make():
            net = models.create("resnet20")
            m = methods.create("ddnp", variant=variant, p=0.5)
            g = m.attach(net)
            m.prepare(models.describe(net), None)
            return g, [m]
        return make

    return {"dense": dense, "DDNP Channel-wise-ks": search("channelwise"), "DDNP generators": search("full")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="alternate measurements; the best of each is kept")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", default="", help="comma-separated subset of bar,pfs,manidp,ddnp (default: all)")
    args = ap.parse_args()
    only = {w.strip().lower() for w in args.only.split(",") if w.strip()}
    device = resolve_device(args.device)
    ds = load_cifar10()
    loader = CifarLoader(ds.train_images, ds.train_labels, batch_size=args.batch, device=device)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} steps x {args.rounds} rounds")
    for title, variants, optim, target, timed in (
            ("BAR (bar_wrn k=1, Adam)", bar_variants({"k": 1}), "adam", 1.15, "BAR gated"),
            ("PFS (resnet20)", pfs_variants(), "sgd", None, None),
            ("ManiDP (resnet20, SGD)", manidp_variants(), "sgd", 1.15, "ManiDP"),
            ("DDNP search (resnet20; ratios against Channel-wise-ks)", ddnp_variants(), "sgd", 1.10, "DDNP generators")):
        if only and title.split()[0].lower() not in only:
            continue
        best = {}
        for _ in range(args.rounds):
            for name, make in variants.items():
                torch.manual_seed(0)
                model, hooks = make()
                s = seconds_per_step(model, loader, hooks, args.steps, device, optim)
                best[name] = min(best.get(name, float("inf")), s)
        print(f"\n{title}")
        base = best["DDNP Channel-wise-ks"] if "DDNP Channel-wise-ks" in best else best["dense"]
        for name, s in best.items():
            line = f"  {name:<28} {1e3 * s:8.1f} ms/step   ratio {s / base:5.3f}"
            if target and name == timed:
                line += f"   (target <= {target}: {'met' if s / base <= target else 'NOT met'})"
            print(line)


if __name__ == "__main__":
    main()
