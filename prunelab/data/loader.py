"""Batches from a whole split held as one uint8 tensor on the training device.

Following airbench's loader: the split is copied to the device once; each batch is gathered by index,
augmented (pad-4 random crop, horizontal flip) and normalised there, as whole-batch tensor operations.
No worker processes, no per-sample Python. Every batch carries the dataset indices of its samples,
which per-instance analyses (ManiDP's λ(x_i), per-image costs) need.

Randomness is a pure function of ``(seed, epoch, step)``: a resumed run, or a run on another number
of processes, sees the same batches without any loader state in the checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..utils import derive_seed
from .cifar import MEAN, STD


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad-``pad`` random crop and horizontal flip of a uint8 batch ``(B, C, H, W)``, on its device.

    Padding is with zeros (black pixels), as torchvision's ``RandomCrop(32, padding=4)``.
    """
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    rows = dy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=dev)  # (B, W)
    # a flipped crop reads its columns right to left: fold the flip into the gather
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class CifarLoader:
    """Iterates ``(images, labels, indices)`` batches of one split.

    Args:
        images: uint8 array or tensor ``(N, 3, H, W)``.
        labels: int array ``(N,)``.
        indices: dataset indices of the rows (default ``arange(N)``); returned with each batch.
        batch_size: samples per batch *per process*.
        train: shuffle and augment (otherwise fixed order, no augmentation, no dropped batch).
        device: where the split lives and batches are made.
        seed: base seed of the shuffling/augmentation stream.
        channels_last: return batches in channels-last memory format.
        rank, world_size: shard each global batch across processes (DDP).
        drop_last: drop the last incomplete batch when training (default True).
    """

    def __init__(self, images, labels, indices=None, *, batch_size: int = 128, train: bool = True,
                 augment: bool | None = None, device="cpu", seed: int = 0, channels_last: bool = True,
                 mean=MEAN, std=STD, pad: int = 4, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, dtype=torch.float32):
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        x = torch.from_numpy(np.array(images, copy=True))  # private copy: the cache is a read-only memory map
        y = torch.tensor(np.asarray(labels), dtype=torch.long)
        idx = torch.arange(len(y)) if indices is None else torch.tensor(np.asarray(indices), dtype=torch.long)
        if not (len(x) == len(y) == len(idx)):
            raise ValueError("images, labels and indices must have the same length")
        if pin:
            x, y, idx = x.pin_memory(), y.pin_memory(), idx.pin_memory()
        self.images = x.to(self.device, non_blocking=True)
        self.labels = y.to(self.device, non_blocking=True)
        self.indices = idx.to(self.device, non_blocking=True)
        self.batch_size = int(batch_size)
        self.train = train
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.pad = pad
        self.rank, self.world_size = rank, world_size
        self.dtype = dtype
        scale = 255.0
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * scale
        self.inv_std = 1.0 / (torch.tensor(std, device=self.device).view(1, -1, 1, 1) * scale)
        self.epoch = 0

    def __len__(self) -> int:
        n, g = len(self.labels), self.batch_size * self.world_size
        return n // g if self.drop_last else math.ceil(n / g)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, *parts) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(derive_seed(self.seed, *parts))
        return g

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """Row order of an epoch (a seeded permutation when training)."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(n, device=self.device)
        e = self.epoch if epoch is None else epoch
        return torch.randperm(n, generator=self._generator(1, e), device=self.device)

    def normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = (x_u8.to(self.dtype) - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batches(self, start_step: int = 0):
        """Yield ``(x, y, idx)`` from step ``start_step`` of the current epoch (for exact resume)."""
        order = self.order()
        global_bs = self.batch_size * self.world_size
        for step in range(start_step, len(self)):
            rows = order[step * global_bs:(step + 1) * global_bs]
            rows = rows[self.rank::self.world_size] if self.world_size > 1 else rows
            x = self.images[rows]
            if self.augment:
                x = random_crop_flip(x, self.pad, self._generator(2, self.epoch, step, self.rank))
            yield self.normalize(x), self.labels[rows], self.indices[rows]

    def __iter__(self):
        return self.batches(0)
