"""prunelab's trainer vs a minimal raw PyTorch loop: same model, batch size and device, one run.

Prints images/s of both, their ratio (target >= 0.95), and the data pipeline's time per epoch
(gather + pad-4 crop + flip + normalise on the training device) as a share of the step time
(target <= 5%). Not a test: timings depend on the machine; the ratio is what matters.

    python bench/train_throughput.py [--model resnet20] [--steps 40] [--batch 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from prunelab import models
from prunelab.config import OptimConfig, ScheduleConfig, TrainConfig
from prunelab.data.cifar import load_cifar10
from prunelab.data.loader import CifarLoader
from prunelab.train.trainer import Trainer, resolve_device


def raw_loop(model, x, y, steps: int, device) -> float:
    """The minimal loop: fixed pre-made batches, SGD-Nesterov, CE with label smoothing."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()

    def step():
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(y) / (time.perf_counter() - t)


def trainer_loop(model, loader, steps: int, device) -> float:
    cfg = TrainConfig(epochs=100, progress=False, label_smoothing=0.1, max_steps=3)
    tr = Trainer(model, loader, {}, train_cfg=cfg, optim_cfg=OptimConfig(lr=0.05),
                 schedule_cfg=ScheduleConfig(name="constant", warmup=0), device=device)
    tr.fit()  # warm-up steps
    tr.cfg.max_steps = 3 + steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    tr.fit()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * loader.batch_size / (time.perf_counter() - t)


def data_time_per_batch(loader, batches: int, device) -> float:
    it = loader.batches(0)
    next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _, (x, y, i) in zip(range(batches), it):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / batches


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="alternate measurements; best of each is kept")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    ds = load_cifar10()
    loader = CifarLoader(ds.train_images, ds.train_labels, batch_size=args.batch, train=True, device=device)
    xb, yb, _ = next(iter(loader))
    raw, ours = [], []
    for _ in range(args.rounds):
        m = models.create(args.model).to(device, memory_format=torch.channels_last)
        raw.append(raw_loop(m, xb, yb, args.steps, device))
        m = models.create(args.model)
        ours.append(trainer_loop(m, loader, args.steps, device))
    data_s = data_time_per_batch(loader, 50, device)
    step_s = args.batch / max(ours)
    print(f"device {device}, {torch.get_num_threads()} threads, {args.model}, batch {args.batch}, "
          f"{args.steps} steps x {args.rounds} rounds")
    print(f"raw PyTorch loop    {max(raw):8.1f} images/s")
    print(f"prunelab Trainer    {max(ours):8.1f} images/s")
    print(f"ratio               {max(ours) / max(raw):8.3f}   (target >= 0.95)")
    print(f"data pipeline       {1e3 * data_s:8.2f} ms/batch = {100 * data_s / step_s:.1f}% of a training step "
          f"({data_s * len(loader):.1f} s per epoch; target <= 5%)")
    print(f"predicted epoch     {len(loader) * step_s:8.1f} s ({len(loader)} steps)")


if __name__ == "__main__":
    main()
