"""Run under torchrun: a few DDP steps with prunelab's Trainer, then each rank saves its weights.

``ddp_worker.py OUT controller`` trains a gated network whose gates a controller network writes (the
test-only generated method of test_result_kinds.py): the controller must be synchronised like the
weights, because the trainer wraps it in DDP with the network.
"""

import sys

import torch

from prunelab import models
from prunelab.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from prunelab.train.distributed import init_from_env, shutdown
from prunelab.train.run import build_loaders
from prunelab.train.trainer import Trainer


def main(out, variant=""):
    info = init_from_env()
    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = models.create("resnet20")
    hooks = []
    if variant == "controller":
        from test_result_kinds import ToyGenerated

        method = ToyGenerated()
        model = method.attach(model)
        hooks = [method]
    init = {k: v.clone() for k, v in model.state_dict().items()}
    data = DataConfig(train_per_class=8, test_per_class=2, batch_size=16)
    tl, ev = build_loaders(data, "cpu", seed=0, dist_info=info)
    tr = Trainer(model, tl, ev, train_cfg=TrainConfig(epochs=1, max_steps=4, progress=False),
                 optim_cfg=OptimConfig(lr=0.05), schedule_cfg=ScheduleConfig(name="constant", warmup=0),
                 device="cpu", rank=info.rank, world_size=info.world_size, hooks=hooks)
    tr.fit()
    changed = any(not torch.equal(init[k], v) for k, v in model.state_dict().items())
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    # BN running statistics are per-rank until DDP broadcasts rank 0's buffers at the next forward
    torch.save({"params": params, "changed": changed, "world": info.world_size,
                "batch_per_rank": tl.batch_size}, f"{out}/rank{info.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
