"""Any map-style dataset (or a DataLoader over one) as the package's loader protocol.

The trainer and the methods read batches as ``(images, labels, indices)`` from an object with
``batches(start_step)``, ``set_epoch``, ``__len__`` and ``__iter__`` (see
:class:`~prunelab.data.loader.CifarLoader`). :func:`as_loader` gives a ``torch.utils.data.Dataset``
(``dataset[i] -> (x, y)``) or a ``DataLoader`` that interface:

* the indices: each batch carries the dataset indices of its samples, which per-instance methods
  need (ManiDP's lambda(x_i), per-image costs);
* exact resume: the order of an epoch is a pure function of ``(seed, epoch)``, and each sample is
  read with the random number generators (torch, ``random``, numpy) seeded from
  ``(seed, epoch, index)``, so random transforms draw the same crops on a resumed run, with any
  number of workers: no loader state goes into checkpoints;
* DDP: each global batch is split across ranks as CifarLoader splits it;
* evaluation: fixed order, no dropped batch.

Batches are read by a torch DataLoader (``num_workers`` worker processes) over a batch sampler this
module controls. Augmentation and normalisation are the datasets' own transforms.

:func:`loaders_from_datasets` builds the train and eval loaders of a run from a ``data`` config, and
:func:`call_builder` runs ``data.builder`` ("module.path:function").
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, default_convert

from ..errors import ConfigError
from ..utils import derive_seed
from .cifar import holdout_split

FIX_SAMPLE = "make __getitem__ return (image, label) with a float tensor image and an int class label"


# ---------------------------------------------------------------------------------------------------
# checks: one line naming the problem and the fix


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value[:4])})"
    return f"a {type(value).__module__}.{type(value).__name__}".replace("builtins.", "")


def _is_int_label(y) -> bool:
    if isinstance(y, bool):
        return False
    if isinstance(y, numbers.Integral):  # int, numpy integers
        return True
    return torch.is_tensor(y) and y.ndim == 0 and not y.is_floating_point() and not y.is_complex()


def check_sample(sample, where: str) -> None:
    """Refuse a sample that is not ``(image, label)`` with an array image and an int label."""
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise ConfigError(f"{where} returned {_describe(sample)}, not an (image, label) pair; {FIX_SAMPLE} "
                          f"(wrap the dataset if it returns more)")
    x, y = sample
    if not (torch.is_tensor(x) or isinstance(x, np.ndarray)):
        hint = " (give it a transform such as torchvision.transforms.ToTensor())" if "PIL" in type(x).__module__ else ""
        raise ConfigError(f"{where} returned an image that is {_describe(x)}, not a tensor{hint}; {FIX_SAMPLE}")
    if not _is_int_label(y):
        raise ConfigError(f"{where} returned a label that is {_describe(y)} ({y!r:.40}), not an int class index; "
                          f"{FIX_SAMPLE} (for regression or multi-label targets this trainer does not fit)")


def check_batch(batch, where: str):
    """``(x, y)`` of a collated batch, refused with one line unless x is a float tensor and y int class indices."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(f"{where} made a batch that is {_describe(batch)}, not (images, labels); make collate_fn "
                          f"return (images, labels)")
    x, y = batch
    if not torch.is_tensor(x) or not x.is_floating_point():
        what = f"a {x.dtype} tensor" if torch.is_tensor(x) else _describe(x)
        raise ConfigError(f"{where} made images that are {what}, not float; convert and normalise them in the "
                          f"dataset's transform (e.g. torchvision.transforms.ToTensor() and Normalize)")
    if not torch.is_tensor(y) or y.is_floating_point() or y.is_complex() or y.ndim != 1 or len(y) != len(x):
        what = f"a {y.dtype} tensor of shape {tuple(y.shape)}" if torch.is_tensor(y) else _describe(y)
        raise ConfigError(f"{where} made labels that are {what}, not one int class index per image; {FIX_SAMPLE}")
    return x, y


def _check_map_style(dataset, where: str) -> None:
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ConfigError(f"{where} is {_describe(dataset)}, not a map-style dataset (with __len__ and "
                          f"__getitem__); an iterable dataset cannot be shuffled by index: give a map-style one")
    if len(dataset) == 0:
        raise ConfigError(f"{where} is empty; check the builder's paths and arguments")


# ---------------------------------------------------------------------------------------------------
# reading samples with seeded random number generators


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Seed torch's, Python's and numpy's global generators for the block, then restore them, so a random
    transform draws from ``seed`` and the caller's streams (dropout, the trainer's) are left untouched."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _SeededSamples(Dataset):
    """``dataset[index]`` read under generators seeded from ``(seed, epoch, index)``; keys are
    ``(index, seed, epoch)`` triples (made by :class:`DatasetLoader`), items ``(index, sample)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed, epoch = key
        with seeded_rngs(derive_seed(seed, 2, epoch, index)):
            return index, self.dataset[index]


class _WithIndices:
    """Collate ``(index, sample)`` items: the user's (or torch's default) collate on the samples, plus
    the indices as a tensor. A class, not a closure, so worker processes can receive it."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, items):
        return self.collate_fn([s for _, s in items]), torch.tensor([i for i, _ in items], dtype=torch.long)


class _Plan:
    """The batch sampler: the batches of one pass, fixed before the pass starts (a DataLoader with
    workers draws indices ahead, so they must not depend on state that changes during the pass)."""

    def __init__(self):
        self.batches: list[list[tuple[int, int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


# ---------------------------------------------------------------------------------------------------
# the loader


class DatasetLoader:
    """Iterates ``(images, labels, indices)`` batches of a map-style dataset (see the module docstring).

    Args:
        dataset: ``dataset[i] -> (x, y)``: a float tensor image (after the dataset's transforms) and an
            int class label.
        batch_size: samples per batch *per process*.
        train: shuffle (seeded by ``(seed, epoch)``) and drop the last incomplete batch; otherwise fixed
            order and every sample.
        seed: base seed of the order and of the per-sample generators.
        device: where batches are moved.
        indices: the dataset indices to iterate (a holdout split), default all; batches carry them.
        channels_last: return 4-d batches in channels-last memory format.
        rank, world_size: shard each global batch across processes (DDP).
        drop_last: override the default (``train``).
        num_workers, pin_memory, collate_fn, worker_init_fn, persistent_workers: passed to the internal
            ``torch.utils.data.DataLoader`` (``pin_memory`` defaults to "the device is CUDA").
    """

    def __init__(self, dataset, *, batch_size: int, train: bool, seed: int = 0, device="cpu", indices=None,
                 channels_last: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool | None = None,
                 num_workers: int = 0, pin_memory: bool | None = None, collate_fn=None, worker_init_fn=None,
                 persistent_workers: bool = False, name: str = "the dataset"):
        _check_map_style(dataset, name)
        self.dataset, self.name = dataset, name
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(np.asarray(indices),
                                                                                          dtype=torch.long)
        if not len(self.indices):
            raise ConfigError(f"{name} has no samples to iterate (an empty index split); check data.holdout")
        self.batch_size, self.train, self.seed = int(batch_size), train, seed
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        if collate_fn is None:  # torch's collate: the samples themselves must be (x, y); a custom one may differ
            check_sample(dataset[int(self.indices[0])], f"{name}[{int(self.indices[0])}]")
        self.pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._plan = _Plan()
        self._loader = DataLoader(_SeededSamples(dataset), batch_sampler=self._plan, num_workers=num_workers,
                                  collate_fn=_WithIndices(collate_fn or default_collate), pin_memory=self.pin,
                                  worker_init_fn=worker_init_fn,
                                  persistent_workers=persistent_workers and num_workers > 0,
                                  # each pass draws the workers' base seed: from a private generator, not
                                  # from the global one the trainer's own randomness (dropout...) uses
                                  generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        n, g = len(self.indices), self.batch_size * self.world_size
        return n // g if self.drop_last else math.ceil(n / g)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """Positions into :attr:`indices` in the order of an epoch (a seeded permutation when training)."""
        n = len(self.indices)
        if not self.train:
            return torch.arange(n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, 1, self.epoch if epoch is None else epoch))
        return torch.randperm(n, generator=g)

    def step_indices(self, step: int, order: torch.Tensor | None = None) -> torch.Tensor:
        """Dataset indices of this rank's share of global batch ``step`` of the current epoch."""
        order = self.order() if order is None else order
        g = self.batch_size * self.world_size
        rows = order[step * g:(step + 1) * g][self.rank::self.world_size]
        return self.indices[rows]

    def batches(self, start_step: int = 0):
        """Yield ``(x, y, idx)`` from step ``start_step`` of the current epoch (for exact resume).

        An empty share (the last eval batch smaller than the number of processes) is skipped: evaluation
        sums over batches, so a rank with nothing to add needs no batch."""
        order = self.order()
        steps = [self.step_indices(s, order).tolist() for s in range(start_step, len(self))]
        self._plan.batches = [[(i, self.seed, self.epoch) for i in rows] for rows in steps if rows]
        for batch, idx in self._loader:
            x, y = check_batch(batch, f"{self.name} (through its collate_fn)")
            yield self._to_device(x, y, idx)

    def _to_device(self, x, y, idx):
        x = x.to(self.device, non_blocking=self.pin)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=self.pin), idx.to(self.device, non_blocking=self.pin)

    def __iter__(self):
        return self.batches(0)


def as_loader(data, *, batch_size: int, train: bool, seed: int = 0, device="cpu", indices=None,
              channels_last: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool | None = None,
              num_workers: int | None = None, name: str = "the dataset") -> DatasetLoader:
    """A :class:`DatasetLoader` over ``data``: a map-style ``Dataset`` or a ``DataLoader``.

    A DataLoader gives its dataset, ``collate_fn``, ``num_workers``, ``pin_memory``, ``worker_init_fn``
    and ``persistent_workers``; its sampler, shuffling, batch size and ``drop_last`` are *replaced* by
    this loader's (order seeded by ``(seed, epoch)``, ``batch_size``, DDP shards), since a sampler of
    its own could not be resumed mid-epoch. ``num_workers`` overrides the DataLoader's when given.
    """
    if isinstance(data, DataLoader):
        # torch's own collate (default_convert when its batching is off) is replaced by the default here
        collate = None if data.collate_fn in (default_collate, default_convert) else data.collate_fn
        return DatasetLoader(data.dataset, batch_size=batch_size, train=train, seed=seed, device=device,
                             indices=indices, channels_last=channels_last, rank=rank, world_size=world_size,
                             drop_last=drop_last, num_workers=data.num_workers if num_workers is None else num_workers,
                             pin_memory=data.pin_memory, collate_fn=collate, worker_init_fn=data.worker_init_fn,
                             persistent_workers=data.persistent_workers, name=name)
    return DatasetLoader(data, batch_size=batch_size, train=train, seed=seed, device=device, indices=indices,
                         channels_last=channels_last, rank=rank, world_size=world_size, drop_last=drop_last,
                         num_workers=num_workers or 0, name=name)


# ---------------------------------------------------------------------------------------------------
# data.builder and the loaders of a run


def resolve_builder(spec: str):
    """The function named by ``data.builder`` ("module.path:function"); one line naming it when it cannot be
    had (the models' builders are resolved the same way: :func:`prunelab.plugins.resolve_function`)."""
    from ..plugins import resolve_function

    return resolve_function(spec, "data.builder")


def call_builder(spec: str, kwargs: dict | None = None) -> dict:
    """Run ``data.builder`` with ``data.kwargs``; returns ``{"train", "test"[, "val"]}``.

    The builder returns ``(train, test)``, ``(train, test, val)`` or a mapping with those keys; each a
    map-style Dataset or a DataLoader."""
    fn = resolve_builder(spec)
    kwargs = dict(kwargs or {})
    try:
        inspect.signature(fn).bind(**kwargs)  # bad data.kwargs: one line, not a TypeError from inside
    except TypeError as e:
        raise ConfigError(f"data.kwargs {kwargs} do not fit data.builder {spec!r} ({e}); fix data.kwargs") from None
    except ValueError:  # no signature to check (a builtin): let the call say
        pass
    out = fn(**kwargs)
    if isinstance(out, (tuple, list)) and len(out) in (2, 3):
        out = dict(zip(("train", "test", "val"), out))
    if not isinstance(out, dict) or not {"train", "test"} <= set(out) or set(out) - {"train", "test", "val"}:
        raise ConfigError(f"data.builder {spec!r} returned {_describe(out)}; it must return (train, test) datasets "
                          f"or a mapping with keys train, test and optionally val")
    return {k: v for k, v in out.items() if v is not None}


def split_train(n: int, data, labels=None):
    """(train, val) index arrays of a training set of ``n`` samples under ``data.holdout`` (val None
    without a holdout); ``labels`` (a dataset's ``targets``, when it has them) keep a last-samples
    split class-balanced on class-sorted data."""
    train_idx, val_idx = np.arange(n), None
    if data.holdout:
        keep, held = holdout_split(n, data.holdout, seed=data.holdout_seed, labels=labels)
        train_idx, val_idx = (held, keep) if data.train_on_holdout else (keep, held)
    return train_idx, val_idx


def _dataset_of(data):
    return data.dataset if isinstance(data, DataLoader) else data


def loaders_from_datasets(train_data, test_data, data, device, *, val_data=None, seed: int = 0,
                          channels_last: bool = True, rank: int = 0, world_size: int = 1):
    """Train loader and ``{"test": ..., ["val": ...]}`` eval loaders from datasets (or DataLoaders) and a
    ``data`` config section, as :func:`~prunelab.train.run.build_loaders` makes them for CIFAR-10.

    ``data.holdout`` splits the training set by index; the held-out part is read through the training
    dataset, so with its transforms (augmentation included): for a clean validation split, return a
    ``val`` dataset from the builder instead.
    """
    if data.batch_size % world_size:
        raise ConfigError(f"data.batch_size ({data.batch_size}) must be divisible by the number of processes "
                          f"({world_size})")
    if val_data is not None and data.holdout:
        raise ConfigError("data.holdout splits the training set, but the builder also returned a val dataset; "
                          "drop one of them")
    train_ds = _dataset_of(train_data)
    _check_map_style(train_ds, "the train dataset")
    train_idx, val_idx = split_train(len(train_ds), data, labels=getattr(train_ds, "targets", None))
    if len(train_idx) < data.batch_size:
        raise ConfigError(f"data.batch_size ({data.batch_size}) exceeds the {len(train_idx)} training images; "
                          f"lower it or use more data")
    common = dict(device=device, channels_last=channels_last, rank=rank, world_size=world_size, seed=seed)
    train = as_loader(train_data, batch_size=data.batch_size // world_size, train=True, indices=train_idx,
                      name="the train dataset", **common)
    evals = {"test": as_loader(test_data, batch_size=data.eval_batch_size, train=False, name="the test dataset",
                               **common)}
    if val_idx is not None:
        evals["val"] = as_loader(train_data, batch_size=data.eval_batch_size, train=False, indices=val_idx,
                                 name="the train dataset (held-out part)", **common)
    elif val_data is not None:
        evals["val"] = as_loader(val_data, batch_size=data.eval_batch_size, train=False, name="the val dataset",
                                 **common)
    return train, evals
