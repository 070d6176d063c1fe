"""Where a ManiDP training step spends its time beyond a dense step (issue 31, item 6), in one run.

Two views of the same ResNet-20 step (batch 128, SGD, channels-last, ``--threads`` CPU threads):

1. **Ablation ladder.** The step time of dense training, then of the gated network with one part of
   ManiDP added at a time, each row a ratio against dense:

   * ``predictors, no mask``: the 18 saliency predictors run (pre-hook on each conv, GAP of its input,
     two small FCs, the threshold) and the descriptor pooling, but the mask is not applied (the gate
     passes ``f(x)`` on; nothing reaches the predictors' gradients);
   * ``+ mask``: the fused mask-and-pool node (:class:`prunelab.methods.manidp.MaskAndPool`) applies the
     mask, and the task loss now trains the predictors through ``dL/dm = sum_hw dL/dz * f(x)``;
   * ``+ sparsity``: lambda' sum_l mean_i w_i mean_c pi;
   * ``+ L_sim``: the similarity loss (full ManiDP, what ``bench/method_overhead.py`` times).

2. **Operator difference.** ``torch.profiler`` self time per operator per step, ManiDP minus dense,
   largest first: which kernels the extra time is spent in.

The bench changes nothing in the method: the ``no mask`` row swaps ``MaskAndPool.apply`` for the length of
that measurement only.

    python bench/manidp_step_profile.py [--steps 30] [--rounds 3] [--threads 1] [--top 20]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from prunelab import methods, models
from prunelab.methods import manidp as manidp_module
from prunelab.methods.manidp import MaskAndPool, _pool_hw, summed_similarity_loss

BATCH = 128


def _no_mask(x, m, relu, pool):
    a = F.relu(x) if relu else x
    return a, (_pool_hw(a) if pool else a.new_zeros(()))


def build(variant: str):
    """(model, gates-or-None, lambda', lambda_sim) for one rung of the ladder."""
    net = models.create("resnet20")
    if variant == "dense":
        return net.to(memory_format=torch.channels_last), None, 0.0, 0.0
    lam = 0.0 if variant in ("predictors, no mask", "+ mask") else 5e-3
    sim = 1.0 if variant == "+ L_sim (ManiDP)" else 0.0
    m = methods.create("manidp", **{"lambda": lam, "lambda_sim": sim})
    gated = m.attach(net)
    m.prepare(models.describe(net), None)
    m._keep_descriptors(gated, sim > 0 or variant == "predictors, no mask")
    return gated.to(memory_format=torch.channels_last), [g for _, g in gated.items()], lam, sim


def make_step(model, gates, lam, sim, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        out = model(x)
        ce = F.cross_entropy(out, y, reduction="none")
        loss = ce.mean()
        if gates is not None and lam > 0:
            w = manidp_module.complexity_weight(ce.detach(), 1.0)
            loss = loss + lam * sum((w * g.last_saliency.mean(1)).mean() for g in gates)
        if gates is not None and sim > 0:
            loss = loss + sim * summed_similarity_loss([g.last_descriptor for g in gates],
                                                       [g.last_saliency for g in gates])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timed(variant, x, y, steps) -> float:
    torch.manual_seed(0)
    model, gates, lam, sim = build(variant)
    model.train()
    step = make_step(model, gates, lam, sim, x, y)
    original = MaskAndPool.apply
    if variant == "predictors, no mask":
        MaskAndPool.apply = _no_mask
    try:
        for _ in range(3):
            step()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t) / steps
    finally:
        MaskAndPool.apply = original


def op_times(variant, x, y, steps) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model, gates, lam, sim = build(variant)
    model.train()
    step = make_step(model, gates, lam, sim, x, y)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out = defaultdict(float)
    for e in prof.key_averages():
        out[e.key] += e.self_cpu_time_total / steps / 1e3  # ms per step
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="alternate measurements; the best of each is kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=20, help="operators listed in the difference table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    ladder = ["dense", "predictors, no mask", "+ mask", "+ sparsity", "+ L_sim (ManiDP)"]
    best: dict = {}
    for _ in range(args.rounds):
        for v in ladder:
            best[v] = min(best.get(v, float("inf")), timed(v, x, y, args.steps))
    print(f"cpu, {args.threads} thread(s), batch {BATCH}, {args.steps} steps x {args.rounds} rounds (best kept)\n")
    print("ablation ladder                ms/step   vs dense   added by this rung")
    prev = None
    for v in ladder:
        s = best[v]
        added = "" if prev is None else f"{1e3 * (s - prev):+7.1f} ms ({(s - prev) / best['dense']:+.3f})"
        print(f"  {v:<26} {1e3 * s:8.1f}   {s / best['dense']:7.3f}   {added}")
        prev = s
    dense, full = defaultdict(float), defaultdict(float)
    for _ in range(2):  # the smaller of two profiles per operator: less noise from the other one's cache state
        for target, v in ((dense, "dense"), (full, "+ L_sim (ManiDP)")):
            t = op_times(v, x, y, max(1, args.steps // 2))
            for k, ms in t.items():
                target[k] = min(target[k], ms) if k in target else ms
    tot_d, tot_f = sum(dense.values()), sum(full.values())
    print(f"\nprofiled self time per step: dense {tot_d:.1f} ms, ManiDP {tot_f:.1f} ms ({tot_f / tot_d:.3f}x)")
    print("operator                                   dense ms   ManiDP ms    extra")
    keys = sorted(set(dense) | set(full), key=lambda k: -(full.get(k, 0.0) - dense.get(k, 0.0)))
    for k in keys[:args.top]:
        print(f"  {k[:40]:<40} {dense.get(k, 0.0):8.2f}   {full.get(k, 0.0):8.2f}   {full.get(k, 0.0) - dense.get(k, 0.0):+7.2f}")


if __name__ == "__main__":
    main()
